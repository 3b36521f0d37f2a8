"""Issue 14's KD levers: hidden-state and relation terms (word-level across tokenizers, with projections that are
never exported), unlabelled transfer text, several teachers, students initialised from the teacher, teacher
selection by metric with several seeds, and the weak-teacher warning. Golden values were computed by hand with
numpy (independently of the torch code) when the losses were written."""

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoModelForTokenClassification, AutoTokenizer

from conftest import tiny_bert
from speedy.config import DistillSettings
from speedy.configfile import load_config
from speedy.data.transfer import read_transfer_lines, with_transfer
from speedy.distill.cache import TeacherCache
from speedy.distill.losses import DistillationObjective, KDTerm, hidden_cosine, similarity_relation
from speedy.distill.recipe import layer_map, objective_for
from speedy.distill.teacher import teacher_cache_for
from speedy.errors import SpeedyError
from speedy.pipeline import Study
from speedy.tasks import ClassificationTask, TaggingTask
from test_pipeline import _conll, tagged_sentences

S = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
S2 = torch.tensor([[1.0, 1.0, 2.0], [0.0, -1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
T4 = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.5, 1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, 0.0, 1.0, 1.0]])


# ------------------------------------------------------------------ losses and the recipe
def test_hidden_losses_match_golden_values():
    assert hidden_cosine(S[:3], S2[:3]).item() == pytest.approx(0.3182245129303491, rel=1e-6)
    assert similarity_relation(S, T4).item() == pytest.approx(3.4018949803353067, rel=1e-6)
    assert similarity_relation(S, T4, temperature=4.0).item() == pytest.approx(0.6618476685795638, rel=1e-6)


def test_relation_ignores_scale_and_width_and_is_zero_for_the_same_geometry():
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    same = torch.cat([S @ rotation * 7.0, torch.zeros(4, 5)], dim=1)  # rotated, scaled, wider: same relations
    assert similarity_relation(S, same).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_relation(S[:1], T4[:1]).item() == 0.0  # one row relates to nothing


def test_layer_maps():
    assert layer_map("uniform", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert layer_map("uniform", 3, 12) == [(1, 4), (2, 8), (3, 12)]
    assert layer_map("last", 2, 12) == [(2, 12)]
    assert layer_map([[0, 0], [2, 7]], 2, 12) == [(0, 0), (2, 7)]
    with pytest.raises(SpeedyError, match=r"hidden_layers: pair \[3, 7\]"):
        layer_map([[3, 7]], 2, 12)


def test_the_default_recipe_is_the_papers_single_logit_term():
    paper = DistillationObjective.single("kl", 0.0, 1.0)
    assert objective_for(DistillSettings(), 4, 12).terms == paper.terms
    levers = objective_for(DistillSettings(hidden_weight=2.0, relation_weight=0.5, hidden_loss="cosine"), 2, 12)
    assert [(t.student_signal, t.signal, t.kind, t.weight) for t in levers.terms[1:]] == [
        ("hidden.1", "hidden.6", "cosine", 1.0), ("hidden.2", "hidden.12", "cosine", 1.0),
        ("hidden.2", "hidden.12", "relation", 0.5)]
    assert levers.signals == ("logits", "hidden.6", "hidden.12") and levers.student_needs_hidden_states
    with pytest.raises(SpeedyError, match="unknown KD loss 'relation' on 'logits'"):
        KDTerm("logits", "relation")


def test_projections_exist_only_where_widths_differ_and_learn():
    objective = DistillationObjective([KDTerm("logits"), KDTerm("hidden.2", "mse", student_signal="hidden.1"),
                                       KDTerm("hidden.4", "relation", student_signal="hidden.2")])
    objective.project(16, {"logits": 3, "hidden.2": 32, "hidden.4": 32})
    assert list(objective.projections) == ["1"] and objective.projections["1"].weight.shape == (32, 16)
    assert len(DistillationObjective([KDTerm("hidden.2", "mse")]).project(32, {"hidden.2": 32}).projections) == 0


# ------------------------------------------------------------------ hidden states at the word level
@pytest.fixture(scope="module")
def words():
    sentences = [["Juan", "entrenó", "con", "el", "balón", "ayer", "."], ["La", "ministra", "votó"]]
    return Dataset.from_dict({"tokens": sentences, "tags": [["O"] * len(s) for s in sentences],
                              "lines": [[1] * len(s) for s in sentences], "line": [1, 9]})


def test_tagging_hidden_rows_are_each_words_first_subtoken_state_in_float16(words, bert_dir, tmp_path):
    task, tokenizer = TaggingTask(["O", "B-PER"]), AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)
    teacher = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=2).eval()
    cache = teacher_cache_for(teacher, tokenizer, task, words, 32, tmp_path, signals=("logits", "hidden.2"))
    assert cache.signals == ("logits", "hidden.2") and cache.dim("hidden.2") == 32
    assert cache._values["hidden.2"].dtype == np.float16  # half the disk of float32
    encoded = tokenizer(words[0]["tokens"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        states = teacher(**encoded, output_hidden_states=True).hidden_states[2][0]
    firsts = [encoded.word_ids().index(w) for w in range(len(words[0]["tokens"]))]
    assert np.allclose(cache.example(0, "hidden.2"), states[firsts].numpy(), atol=2e-3)


def test_hidden_kd_pairs_words_across_tokenizers_through_a_projection(words, bert_dir, unigram_dir, tmp_path):
    task = TaggingTask(["O", "B-PER"])
    torch.manual_seed(0)
    teacher = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=2).eval()
    cache = teacher_cache_for(teacher, AutoTokenizer.from_pretrained(bert_dir), task, words, 32, tmp_path,
                              signals=("logits", "hidden.4"))
    student_tokenizer = AutoTokenizer.from_pretrained(unigram_dir)
    tiny_bert(tmp_path / "wide", student_tokenizer, layers=2, hidden=48)
    student = AutoModelForTokenClassification.from_pretrained(tmp_path / "wide", num_labels=2)
    batch = task.collator(student_tokenizer)(list(task.encode(words, student_tokenizer, 32, with_index=True)))
    extras = {name: batch.pop(name) for name in ("example_index", "word_index")}
    outputs = student(**batch, output_hidden_states=True)
    s_rows, t_rows, _ = task.kd_rows(outputs, batch, extras, cache, "hidden.4", "hidden.2")
    assert s_rows.shape == (10, 48) and t_rows.shape == (10, 32)  # one row per word of both sentences
    objective = objective_for(DistillSettings(hidden_weight=1.0, hidden_layers=[[2, 4]]), 2, 4)
    objective.project(48, {"logits": 2, "hidden.4": 32})
    loss = objective(task, outputs, batch, extras, [cache])
    loss.backward()
    assert objective.projections["1"].weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_classification_hidden_rows_are_the_mean_over_real_tokens(bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    task, tokenizer = ClassificationTask(["a", "b"]), AutoTokenizer.from_pretrained(bert_dir)
    data = Dataset.from_dict({"text": ["el equipo ganó", "la ministra votó la ley ayer"], "label": ["a", "b"],
                              "line": [1, 2]})
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2).eval()
    cache = teacher_cache_for(model, tokenizer, task, data, 32, tmp_path, signals=("hidden.1",))
    encoded = tokenizer(data[0]["text"], return_tensors="pt")
    with torch.no_grad():
        mean = model(**encoded, output_hidden_states=True).hidden_states[1][0].mean(0)
    assert np.allclose(cache.example(0, "hidden.1")[0], mean.numpy(), atol=2e-3)  # padding left out


# ------------------------------------------------------------------ transfer text
def test_transfer_text_becomes_unlabelled_examples_of_the_tasks_columns(words, tmp_path):
    path = tmp_path / "more.txt"
    path.write_text("El equipo ganó .\n\n  La ministra votó hoy  \n", "utf-8")
    lines = read_transfer_lines([str(path)])
    assert [(n, text) for _, n, text in lines] == [(1, "El equipo ganó ."), (3, "La ministra votó hoy")]
    task = TaggingTask(["O", "B-PER"])
    combined = with_transfer(words, task.unlabelled_rows(lines, words.column_names))
    assert len(combined) == 4 and combined[2]["tokens"] == ["El", "equipo", "ganó", "."] and combined[2]["tags"] is None
    assert task.tag_ids(combined)[2] == [-100] * 4 and task.tag_ids(combined)[0] == [0] * 7
    rows = ClassificationTask(["a"]).unlabelled_rows(lines, ["text", "label", "line"])
    assert rows[1] == {"text": "La ministra votó hoy", "label": None, "line": 3}
    with pytest.raises(SpeedyError, match="pairs"):
        ClassificationTask(["a"]).unlabelled_rows(lines, ["text", "text_pair", "label", "line"])


@pytest.mark.parametrize("content, message", [(None, "transfer file not found"), ("\n \n", "transfer file has no text"),
                                              (b"\xff\xfe", "not UTF-8")])
def test_bad_transfer_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SpeedyError, match=f"{path}: {message}"):
        read_transfer_lines([str(path)])


# ------------------------------------------------------------------ a whole study with every lever
def lever_study(tmp_path, bert_dir, student_dir, **distill):
    files = {"train": _conll(tmp_path / "train.conll", tagged_sentences(24, 1)),
             "validation": _conll(tmp_path / "dev.conll", tagged_sentences(8, 2)),
             "test": _conll(tmp_path / "test.conll", tagged_sentences(8, 3))}
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("\n".join(" ".join(w for w, _ in s) for s in tagged_sentences(16, 5)) + "\n", "utf-8")
    config = {
        "name": "levers", "output_dir": str(tmp_path / "out"), "seed": 1,
        "tasks": [{"name": "ner", "type": "tagging", "max_length": 16, "data": files,
                   "transfer_files": [str(transfer)]}],
        "teachers": [{"name": "teacher", "base": str(bert_dir)}],
        "students": [{"name": "wide", "base": str(student_dir), "kind": "truncate", "layers": 2, "finetune": True},
                     {"name": "from-teacher", "init": "teacher", "kind": "truncate", "layers": 2}],
        "grid": {"batch_size": [8], "epochs": [2], "learning_rate": [1e-3], "seeds": [1, 2], "select_by": "metric"},
        "distill": {"epochs": 2, "patience": 2, "batch_size": 8, "learning_rate": 1e-3, **distill},
        "speed": {"batch_size": 1, "length": 16, "warmup": 1, "runs": 3},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_study_with_every_lever(tmp_path, bert_dir, unigram_dir, capsys):
    tiny_bert(tmp_path / "wide-base", AutoTokenizer.from_pretrained(unigram_dir), layers=3, hidden=48)
    path = lever_study(tmp_path, bert_dir, tmp_path / "wide-base", teachers=2, hidden_weight=1.0,
                       relation_weight=0.5, teacher_weighting="score")
    study = Study(load_config(path))
    study.run(["finetune", "select", "distill"])
    teachers = study.store.trials("finetune", "ner")
    assert sorted(t.name for t in teachers) == ["teacher bs=8 ep=2 lr=0.001 seed=1", "teacher bs=8 ep=2 lr=0.001 seed=2"]
    best = max(teachers, key=lambda t: t.val_metrics["f1"])
    assert study.store.selection("ner").key == best.key  # select_by: metric
    students = {t.name: t for t in study.store.trials("distill", "ner")}
    assert sorted(students) == ["from-teacher (KD)", "wide (KD)", "wide (fine-tuned)"]
    kd = students["wide (KD)"]
    assert len(kd.info["teachers"]) == 2 and kd.info["train_examples"] == 24 + 16  # gold, then transfer text
    for trial in [*teachers, kd]:  # each epoch's validation figures are kept with the record, and the epoch kept
        assert [row["epoch"] for row in trial.info["history"]] == [1.0, 2.0] and trial.info["best_epoch"] in (1.0, 2.0)
    assert all("f1" in row for row in kd.info["history"])  # students select by the task's metric
    assert kd.params["teacher"].count("+") == 1  # both teachers' keys
    cache = TeacherCache(tmp_path / "out" / "teacher-cache" / kd.info["teacher_cache"])
    assert {"logits", "hidden.2", "hidden.4"} <= set(cache.signals) and len(cache) == 40
    with safe_open(f"{kd.checkpoint}/model.safetensors", "pt") as saved:  # projections are never exported
        assert not any("projection" in name for name in saved.keys())
        assert saved.get_tensor("bert.embeddings.word_embeddings.weight").shape[1] == 48
    # the student made of the teacher's first two layers started as the teacher did: same vocabulary and width
    student_from_teacher = AutoModelForTokenClassification.from_pretrained(students["from-teacher (KD)"].checkpoint)
    assert student_from_teacher.config.num_hidden_layers == 2
    assert student_from_teacher.config.vocab_size == AutoTokenizer.from_pretrained(bert_dir).vocab_size
    assert students["wide (fine-tuned)"].info.get("teachers") is None  # gold labels only: no transfer, no teacher


def test_a_teacher_below_a_fine_tuned_student_is_reported_loudly():
    from types import SimpleNamespace

    from rich.console import Console

    from speedy.stages.distill import warn_if_teacher_is_weak

    def trial(name, f1, mode=None):
        return SimpleNamespace(name=name, val_metrics={"f1": f1}, params={"mode": mode})

    console = Console(record=True, width=300)
    students = [trial("s (KD)", 0.60, "kd"), trial("s (fine-tuned)", 0.71, "finetune")]
    study = SimpleNamespace(console=console, task=lambda spec: TaggingTask(["O"]),
                            store=SimpleNamespace(trials=lambda stage, task: students))
    warn_if_teacher_is_weak(study, SimpleNamespace(name="ner"), trial("teacher", 0.5185))
    text = console.export_text()
    assert "WARNING" in text and "0.5185" in text and "s (fine-tuned)" in text and "0.7100" in text
    warn_if_teacher_is_weak(study, SimpleNamespace(name="ner"), trial("teacher", 0.7342))
    assert console.export_text() == ""  # a teacher above every fine-tuned student: nothing said


def test_projections_learn_with_the_student_and_survive_a_resume(words, bert_dir, tmp_path):
    from transformers import TrainingArguments

    from speedy.distill.trainer import PROJECTIONS, DistillationTrainer

    task, tokenizer = TaggingTask(["O", "B-PER"]), AutoTokenizer.from_pretrained(bert_dir)
    student = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=2)
    objective = DistillationObjective([KDTerm("logits"), KDTerm("hidden.2", "mse")]).project(32, {"hidden.2": 64})
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=student, args=args, task=task, teacher_caches=[{}], objective=objective)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    optimizer = trainer.optimizer
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in objective.parameters())
    trainer.state.global_step = 3
    trainer._save_checkpoint(student, None)
    folder = tmp_path / "checkpoint-3"
    assert (folder / PROJECTIONS).is_file()
    saved = objective.projections["1"].weight.detach().clone()
    with torch.no_grad():
        objective.projections["1"].weight.zero_()
    trainer._load_from_checkpoint(str(folder))
    assert torch.equal(objective.projections["1"].weight, saved)


def test_transfer_lines_split_on_newlines_only(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('\ufeff{"question": "¿Qué?", "context": "Uno\u2028dos."}\r\n{"question": "b", "context": "c"}\n',
                    "utf-8")
    lines = read_transfer_lines([str(path)])
    assert [n for _, n, _ in lines] == [1, 2] and lines[0][2].startswith('{"question"') and "\u2028" in lines[0][2]
