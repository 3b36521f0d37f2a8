"""The embedding task type: its files, its retrieval metrics and contrastive loss against hand-computed values,
its config rules, and a whole study (teacher used as it is, a KD student, evaluation, report) on tiny models."""

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModel

from conftest import ACTORS, POLITICS, SPORT, SUBJECTS
from speedy.build import build_model
from speedy.cli import _predict
from speedy.configfile import load_config
from speedy.embed.files import embed_files, saved_prefixes
from speedy.errors import SpeedyError
from speedy.models.build import load_tokenizer
from speedy.pipeline import Study
from speedy.publish import export_model
from speedy.predictor import Predictor
from speedy.runtime.predictor import RuntimePredictor
from speedy.tasks import make_task
from speedy.tasks.base import predict
from speedy.tasks.embedding import EmbeddingTask, in_batch_loss, pair_batch_order, pair_label


def pairs(n: int, seed: int) -> list[dict]:
    """A question-like query and the sentence that answers it: they share their subject and verb."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject, verb = (rng.choice(SUBJECTS), rng.choice(SPORT)) if i % 2 else (rng.choice(ACTORS),
                                                                                 rng.choice(POLITICS))
        rows.append({"query": f"¿Quién {verb}?", "passage": f"{subject.capitalize()} {verb} ayer."})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
    return str(path)


@pytest.fixture
def embedding_files(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(row["passage"] + "\n" for row in pairs(96, seed=5)), "utf-8")
    return {"train": str(train), "validation": write_jsonl(tmp_path / "validation.jsonl", pairs(24, seed=6)),
            "test": write_jsonl(tmp_path / "test.jsonl", pairs(24, seed=7))}


def test_retrieval_metrics_against_hand_computed_values():
    task = EmbeddingTask()
    # q0's passage (group 0) comes first; q1's passage (group 2) second, after passage 1.
    vectors = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0.8, 0.6]], dtype=np.float32)
    labels = [pair_label("query", 0), pair_label("passage", 0), pair_label("passage", 1),
              pair_label("query", 2), pair_label("passage", 2)]
    metrics = task.compute_metrics(vectors, np.array(labels))
    assert metrics["mrr@10"] == pytest.approx(0.75)
    assert metrics["recall@1"] == pytest.approx(0.5) and metrics["recall@10"] == pytest.approx(1.0)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    with pytest.raises(SpeedyError, match="no query/passage pairs"):
        task.compute_metrics(vectors[:3], np.array([-100, -100, -100]))


def test_in_batch_loss_is_infonce_over_the_distinct_passages():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.0, 1.0]]), dim=-1)
    # query 0 -> passage 0 (row 1); passage 1 twice (rows 2, 3: one column); a text without pair is ignored
    labels = torch.tensor([pair_label("query", 0), pair_label("passage", 0), pair_label("passage", 1),
                           pair_label("passage", 1)])
    scores = torch.stack([vectors[0] @ vectors[1], vectors[0] @ vectors[2]]) / 0.05
    expected = -torch.log_softmax(scores, 0)[0]
    assert in_batch_loss(vectors, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert in_batch_loss(vectors, torch.tensor([-100, -100, 1, 3])).item() == 0.0  # no query: nothing to score


def test_files_give_prefixed_texts_paired_by_passage(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "¿Quién?", "passage": "Ella."},
                                                   {"query": "¿Cuándo?", "passage": "Ella."}])
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"query": "¿Dónde?"}\n{"passage": "Aquí.", "query": null}\n')
    split = EmbeddingTask.read_file(path, {})
    assert split["text"] == ["query: ¿Quién?", "passage: Ella.", "query: ¿Cuándo?", "query: ¿Dónde?", "passage: Aquí."]
    assert split["group"] == [0, 0, 0, -1, -1] and split["line"] == [1, 1, 2, 3, 4]
    assert split["kind"] == ["query", "passage", "query", "query", "passage"]
    text = tmp_path / "train.txt"
    text.write_text("Uno.\n\nDos.\n", "utf-8")
    split = EmbeddingTask.read_file(text, {"passage_prefix": ""})
    assert split["text"] == ["Uno.", "Dos."] and split["group"] == [-1, -1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "passage": "b"}\n{"text": "a"}\n', "utf-8")
    with pytest.raises(SpeedyError, match=r"bad.jsonl:2: expected"):
        EmbeddingTask.read_file(bad, {})
    with pytest.raises(SpeedyError, match=r"data.tsv: an embedding task reads"):
        EmbeddingTask.read_file(tmp_path / "data.tsv", {})


def test_a_saved_model_keeps_its_prefixes_and_reads_files_with_them(tmp_path):
    task = make_task("embedding", [], {"data": {"query_prefix": "q> ", "passage_prefix": ""}})
    again = make_task("embedding", [], task.describe(64))
    assert again.prefixes == {"query": "q> ", "passage": ""}
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "¿Quién?", "passage": "Ella."}])
    assert again.read_file(path, again.read_options())["text"] == ["q> ¿Quién?", "Ella."]  # speedy evaluate --model


def test_speedy_embed_uses_the_prefixes_a_study_model_saved(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"speedy_task": {"type": "embedding",
                                                                      "prefixes": {"query": "", "passage": "p: "}}}))
    assert saved_prefixes(tmp_path) == {"query": "", "passage": "p: "}
    (tmp_path / "config.json").write_text("{}")
    assert saved_prefixes(tmp_path) is None  # a sentence-transformers folder: e5's


def test_files_without_what_they_must_hold_are_one_line_errors(tmp_path):
    text = tmp_path / "validation.txt"
    text.write_text("Una frase.\n", "utf-8")
    split = EmbeddingTask.read_file(text, {})
    with pytest.raises(SpeedyError, match=r"validation.txt: no query/passage pairs: the validation split"):
        EmbeddingTask.check_split("validation", split, str(text))
    EmbeddingTask.check_split("train", split, str(text))  # training text needs no pairs
    with pytest.raises(SpeedyError, match=r"missing.txt: no such file"):
        EmbeddingTask.read_file(tmp_path / "missing.txt", {})
    (tmp_path / "blank.txt").write_text("\n \n", "utf-8")
    with pytest.raises(SpeedyError, match=r"blank.txt: no text"):
        EmbeddingTask.read_file(tmp_path / "blank.txt", {})


class SignalCache:
    """A teacher cache for each signal: a tensor of one row per example, or a list of each example's rows."""

    def __init__(self, signals: dict):
        self.signals = signals

    def rows(self, indices, signal):
        values = self.signals[signal]
        if isinstance(values, list):
            parts = [values[i] for i in indices]
            return torch.cat(parts), [len(part) for part in parts]
        return values[indices], None


def test_relation_kd_of_an_embedding_student_distils_the_in_batch_similarities_of_its_vectors(bert_dir):
    # distill.relation_weight on the embedding type: the relation term compares the last layers' mean-pooled
    # states, which point where the vectors do, so it teaches how the batch's texts relate to each other in the
    # teacher's vector space (its neighbours, what retrieval ranks), beside the vectors themselves.
    from speedy.config import DistillSettings
    from speedy.distill.losses import logit_mse, similarity_relation
    from speedy.distill.recipe import objective_for
    from speedy.tasks.embedding import MeanPooledEncoder

    student = MeanPooledEncoder(AutoModel.from_pretrained(str(bert_dir))).eval()
    layers = student.config.num_hidden_layers
    tokenizer = load_tokenizer(str(bert_dir))
    texts = [row["passage"] for row in pairs(6, seed=3)] + ["Un gol.", "La ley del congreso fue aprobada ayer."]
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    outputs = student(**inputs, output_hidden_states=True)
    generator = torch.Generator().manual_seed(0)
    teacher_states = torch.randn(len(texts), student.config.hidden_size, generator=generator)
    teacher = SignalCache({"hidden.12": teacher_states,
                           "logits": torch.nn.functional.normalize(teacher_states, dim=-1)})
    objective = objective_for(DistillSettings(loss="mse", relation_weight=0.5), layers, 12)
    assert [(t.signal, t.kind, t.student_signal) for t in objective.terms] == \
        [("logits", "mse", None), ("hidden.12", "relation", f"hidden.{layers}")]
    with torch.no_grad():
        value = objective(EmbeddingTask(), outputs, inputs, {"example_index": torch.arange(len(texts))}, [teacher])
    vectors, teacher_vectors = outputs.logits, teacher.signals["logits"]
    expected = logit_mse(vectors, teacher_vectors) + 0.5 * similarity_relation(vectors, teacher_vectors)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    assert float(similarity_relation(vectors, teacher_vectors)) > 1e-3  # the term is not trivially 0 here


def test_token_level_kd_of_an_embedding_student_compares_every_real_token_with_the_teachers(bert_dir):
    # distill.hidden_units: tokens: each real token's state is a target (what the mean vector is made of), not
    # only the mean; padding is left out, and a student that tokenizes otherwise is refused in one line.
    from speedy.config import DistillSettings
    from speedy.distill.losses import hidden_cosine, logit_mse
    from speedy.distill.recipe import objective_for
    from speedy.tasks.embedding import MeanPooledEncoder

    student = MeanPooledEncoder(AutoModel.from_pretrained(str(bert_dir))).eval()
    layers, width = student.config.num_hidden_layers, student.config.hidden_size
    tokenizer = load_tokenizer(str(bert_dir))
    texts = ["Un gol.", "La ley del congreso fue aprobada ayer por la tarde."]
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert lengths[0] < lengths[1]  # the first text is padded
    outputs = student(**inputs, output_hidden_states=True)
    generator = torch.Generator().manual_seed(0)
    teacher_tokens = [torch.randn(n, width, generator=generator) for n in lengths]
    teacher_vectors = torch.nn.functional.normalize(torch.randn(2, width, generator=generator), dim=-1)
    teacher = SignalCache({"tokens.12": teacher_tokens, "logits": teacher_vectors})
    settings = DistillSettings(loss="mse", hidden_weight=0.5, hidden_loss="cosine", hidden_layers="last",
                               hidden_units="tokens")
    objective = objective_for(settings, layers, 12)
    assert [(t.signal, t.kind, t.student_signal) for t in objective.terms] == \
        [("logits", "mse", None), ("tokens.12", "cosine", f"tokens.{layers}")]
    extras = {"example_index": torch.arange(2)}
    with torch.no_grad():
        value = objective(EmbeddingTask(), outputs, inputs, extras, [teacher])
    states = outputs.hidden_states[layers]
    real = torch.cat([states[0, :lengths[0]], states[1, :lengths[1]]])  # padding left out, in order
    expected = logit_mse(outputs.logits, teacher_vectors) + 0.5 * hidden_cosine(real, torch.cat(teacher_tokens))
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # one more token on the teacher's side: not the same tokenization
    other = SignalCache({"tokens.12": [teacher_tokens[0], torch.randn(lengths[1] + 1, width)],
                         "logits": teacher_vectors})
    with pytest.raises(SpeedyError, match=rf"text 1 is {lengths[1]} tokens for the student and {lengths[1] + 1}"):
        objective(EmbeddingTask(), outputs, inputs, extras, [other])


def test_token_level_kd_refuses_a_student_that_splits_a_text_otherwise_into_as_many_tokens(bert_dir,
                                                                                          bert_unigram_dir):
    # Token KD pairs the i-th token of student and teacher: equal counts are not enough, the pieces must agree.
    # A pruned vocabulary (other ids, the same pieces) passes; another tokenizer is refused even where a text
    # gives as many tokens on both sides ("de": one piece each, 'de' against '▁de').
    from datasets import Dataset

    from speedy.distill.teacher import check_same_tokens
    from speedy.models.students import prune_vocabulary

    task = EmbeddingTask(prefixes={"query": "", "passage": ""})
    texts = ["la ley del congreso", "de", "el partido"]
    dataset = Dataset.from_dict({"text": texts, "kind": ["passage"] * 3, "group": [-1] * 3, "line": [1, 2, 3]})
    teacher = load_tokenizer(str(bert_dir))
    _, pruned = prune_vocabulary(AutoModel.from_pretrained(str(bert_dir)), load_tokenizer(str(bert_dir)), texts)
    assert len(pruned) < len(teacher)  # other ids: the check compares pieces, not ids
    check_same_tokens(task, dataset, pruned, [teacher], 32)
    unigram = load_tokenizer(str(bert_unigram_dir))  # the pieces e5's (XLM-R's) kind of tokenizer keeps
    _, pruned_unigram = prune_vocabulary(AutoModel.from_pretrained(str(bert_unigram_dir)), unigram, texts)
    check_same_tokens(task, dataset, pruned_unigram, [load_tokenizer(str(bert_unigram_dir))], 32)
    # a pruned student meets a word its vocabulary lost: other pieces, and more of them
    with pytest.raises(SpeedyError, match=r"training text 0 \('congreso'\) splits into other tokens"):
        check_same_tokens(task, Dataset.from_dict({"text": ["congreso"], "kind": ["passage"], "group": [-1],
                                                   "line": [1]}),
                          prune_vocabulary(AutoModel.from_pretrained(str(bert_dir)), load_tokenizer(str(bert_dir)),
                                           ["la ley"])[1], [teacher], 32)
    other = load_tokenizer(str(bert_unigram_dir))
    alone = Dataset.from_dict({"text": ["de"], "kind": ["passage"], "group": [-1], "line": [1]})
    assert len(other("de")["input_ids"]) == len(teacher("de")["input_ids"])  # the count check would pass it
    with pytest.raises(SpeedyError, match=r"^distill.hidden_units: tokens: training text 0 \('de'\) splits into "
                                          r"other tokens for the student than for the teacher \(token \d+: "
                                          r"\[.+\] against \[.+\]\): token-level KD"):
        check_same_tokens(task, alone, other, [teacher], 32)
    with pytest.raises(SpeedyError, match=r"training text 0 \('la ley del congreso'\) splits into other tokens"):
        check_same_tokens(task, dataset, other, [teacher], 32)


def test_a_student_narrower_than_its_teacher_is_refused_in_one_line():
    task = EmbeddingTask()
    outputs = type("Out", (), {"logits": torch.zeros(2, 16)})()
    with pytest.raises(SpeedyError, match="the student's vectors have 16 dimensions and the teacher's 32"):
        task.kd_rows(outputs, {"attention_mask": torch.ones(2, 3)}, {"example_index": torch.tensor([0, 1])},
                     SignalCache({"logits": torch.zeros(2, 32)}))


def test_vectors_are_never_called_one_class():
    from transformers import EvalPrediction

    from speedy.training import CollapseGuard

    same_peak = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.7, 0.0, 0.3]])  # every row's largest dimension is 0
    labels = np.array([0, 1, 2])
    for classifies, verdict in ((True, 1.0), (False, 0.0)):
        metrics = CollapseGuard.record(lambda p: {}, classifies)(EvalPrediction(same_peak, labels))
        assert metrics["one_class"] == verdict


def config_file(tmp_path, files, bert_dir, distill=None, students=None) -> str:
    config = {
        "name": "emb", "output_dir": str(tmp_path / "out"), "seed": 1,
        "tasks": [{"name": "search", "type": "embedding", "max_length": 32, "data": files}],
        "teachers": [{"name": "teacher", "base": str(bert_dir)}],
        "students": students if students is not None else
        [{"name": "student", "base": str(bert_dir), "kind": "truncate", "layers": 2}],
        "grid": {"batch_size": [16], "epochs": [2, 3], "learning_rate": [1e-3, 2e-3]},
        "distill": {"epochs": 6, "patience": 6, "batch_size": 16, "learning_rate": 2e-3, "loss": "mse",
                    **(distill or {})},
        "speed": {"batch_size": 1, "length": 16, "warmup": 1, "runs": 3, "engines": ["torch", "onnx"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("distill, students, message", [
    ({"loss": "kl"}, None, r"distill.loss: task 'search' \(embedding\) takes the KD losses mse, cosine, not 'kl'"),
    ({}, [{"name": "s", "kind": "truncate", "layers": 1, "kd": False, "finetune": True}], r"students\[0\].kd: task"),
    ({"hidden_weight": 1.0, "hidden_units": "words"}, None, r"distill.hidden_units: .*'words'"),
])
def test_config_refuses_what_an_embedding_task_cannot_do(tmp_path, embedding_files, bert_dir, distill, students,
                                                         message):
    with pytest.raises(SpeedyError, match=message):
        load_config(config_file(tmp_path, embedding_files, bert_dir, distill, students))


def student_vs_teacher_cosine(study, student_dir, teacher_dir, split) -> float:
    task = study.task(study.config.tasks[0])
    vectors = []
    for folder in (student_dir, teacher_dir):
        model, tokenizer = task.load_model(folder), load_tokenizer(folder)
        vectors.append(predict(model, tokenizer, task, task.encode(split, tokenizer, 32))[0])
    return float((vectors[0] * vectors[1]).sum(1).mean())


def test_a_study_uses_the_teacher_as_it_is_and_distils_its_vectors(tmp_path, embedding_files, bert_dir,
                                                                  bert_unigram_dir):
    # The student is another model with another tokenizer: it learns the teacher's vectors from texts alone.
    # finetune: true is skipped for an embedding task (its students all learn from the teacher), not refused
    students = [{"name": "student", "base": str(bert_unigram_dir), "kind": "truncate", "layers": 2, "finetune": True}]
    study = Study(load_config(config_file(tmp_path, embedding_files, bert_dir, students=students)))
    study.run()  # every stage, the speed measurement and the report included
    teachers = study.store.trials("finetune", "search")
    assert [t.name for t in teachers] == ["teacher (as it is)"]  # one point, not the 2x2 grid: no training
    teacher = study.store.selection("search")
    saved, original = AutoModel.from_pretrained(teacher.checkpoint), AutoModel.from_pretrained(str(bert_dir))
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), original.state_dict().values()))
    assert 0.0 <= teacher.val_metrics["ndcg@10"] <= 1.0 and teacher.val_loss > 0

    (student,) = study.store.trials("distill", "search")
    assert student.name == "student (KD)" and set(student.test_metrics) >= {"ndcg@10", "mrr@10", "recall@1"}
    # KD moved the student's vectors toward the teacher's: closer than the same student before training
    spec = study.config.students[0]
    task = study.task(study.config.tasks[0])
    fresh, tokenizer = build_model(spec, task, study.corpus(study.config.tasks[0]), seed=1)
    fresh_dir = tmp_path / "fresh"
    fresh.save_pretrained(fresh_dir)
    tokenizer.save_pretrained(fresh_dir)
    validation = study.data(study.config.tasks[0]).splits["validation"]
    before = student_vs_teacher_cosine(study, fresh_dir, teacher.checkpoint, validation)
    after = student_vs_teacher_cosine(study, student.checkpoint, teacher.checkpoint, validation)
    print("BEFORE-AFTER", before, after)
    assert after > before + 0.02, (before, after)
    # The student as users run it: PyTorch, and the torch-free runtime on the graph the measure stage exported
    items = [("¿Quién marcó un gol?", "query"), ("El delantero marcó un gol ayer.", "passage"), ("x", "document")]
    full, lean = Predictor(student.checkpoint, "torch").run_each(items), \
        RuntimePredictor(student.checkpoint, "onnx").run_each(items)
    for a, b in zip(full[:2], lean[:2]):
        assert np.asarray(a["embedding"]) == pytest.approx(np.asarray(b["embedding"]), abs=1e-4)
        assert np.linalg.norm(a["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert all(isinstance(r[2], Exception) and "kind: 'document'" in str(r[2]) for r in (full, lean))
    exported = export_model(Path(student.checkpoint), tmp_path / "exported",
                            validation_file=Path(embedding_files["validation"]), speed_runs=2)
    assert exported["checks"]["fp32_max_abs_diff"] < 1e-4 and exported["checks"]["int8"]["agreement"] > 0.5
    assert "Labels:" not in (tmp_path / "exported" / "README.md").read_text()
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(student.checkpoint, device="cpu")  # the library users already have
    vector = loaded.encode([items[0][0]], prompt_name="query")[0]
    assert vector == pytest.approx(np.asarray(full[0]["embedding"]), abs=1e-5)
    query_file = tmp_path / "queries.txt"
    query_file.write_text(items[0][0] + "\n", "utf-8")
    embed_files(Path(student.checkpoint), [query_file], tmp_path / "queries.npy", "query")  # speedy embed
    assert np.load(tmp_path / "queries.npy")[0] == pytest.approx(np.asarray(full[0]["embedding"]), abs=1e-5)
    printed = _predict(Path(student.checkpoint), items[0][0], None, None, None, "onnx", None, "query")  # speedy predict
    assert printed["embedding"] == pytest.approx(lean[0]["embedding"], abs=1e-6)
    report = (study.output_dir / "report" / "report.md").read_text()
    assert "ndcg@10" in report.lower() and "student" in report


def test_a_study_distils_every_token_of_a_student_that_tokenizes_as_its_teacher(tmp_path, embedding_files,
                                                                                 bert_dir):
    # hidden_units: tokens through the stages: the teacher pass caches one row per real token of every training
    # text (tokens.<layer>, beside the vectors), and the truncated student learns them with its vectors.
    from speedy.distill.cache import TeacherCache

    distill = {"hidden_weight": 1.0, "hidden_loss": "cosine", "hidden_layers": "last", "hidden_units": "tokens",
               "epochs": 2, "patience": 2}
    study = Study(load_config(config_file(tmp_path, embedding_files, bert_dir, distill)))
    study.run(["finetune", "select", "distill"])
    (student,) = study.store.trials("distill", "search")
    assert student.status == "done" and "ndcg@10" in student.val_metrics
    (folder,) = [meta.parent for meta in (study.output_dir / "teacher-cache").rglob("meta.json")]
    cache = TeacherCache(folder)
    layers = AutoModel.from_pretrained(str(bert_dir)).config.num_hidden_layers
    assert set(cache.signals) == {"logits", f"tokens.{layers}"}
    task = study.task(study.config.tasks[0])
    train = task.encode(study.data(study.config.tasks[0]).splits["train"], load_tokenizer(str(bert_dir)), 32)
    rows, counts = cache.rows(range(len(train)), f"tokens.{layers}")
    assert counts == [sum(mask) for mask in train["attention_mask"]] and not bool(rows.isnan().any())
    # each cached row is that token's state in the teacher (float16), for a short and a long text
    teacher = AutoModel.from_pretrained(study.store.selection("search").checkpoint).eval()
    lengths = [len(ids) for ids in train["input_ids"]]
    for i in (lengths.index(min(lengths)), lengths.index(max(lengths))):
        with torch.no_grad():
            states = teacher(input_ids=torch.tensor([train["input_ids"][i]]), output_hidden_states=True)
        expected = states.hidden_states[layers][0]
        assert torch.from_numpy(cache.example(i, f"tokens.{layers}")) == pytest.approx(expected, abs=2e-2)


def test_a_study_refuses_token_kd_for_a_student_of_another_tokenizer(tmp_path, embedding_files, bert_dir,
                                                                     bert_unigram_dir):
    # The distill stage checks every training text's pieces before training (not only their counts, per batch).
    distill = {"hidden_weight": 1.0, "hidden_loss": "cosine", "hidden_layers": "last", "hidden_units": "tokens",
               "epochs": 1, "patience": 1}
    students = [{"name": "other", "base": str(bert_unigram_dir), "kind": "truncate", "layers": 2}]
    study = Study(load_config(config_file(tmp_path, embedding_files, bert_dir, distill, students)))
    study.run(["finetune", "select"])
    with pytest.raises(SpeedyError, match=r"^distill.hidden_units: tokens: training text 0 \(.+\) splits into "):
        study.run(["distill"])
    assert not list((study.output_dir / "teacher-cache").rglob("tokens.*"))  # refused before the teacher pass


def test_pair_batch_order_against_a_hand_computed_order():
    # Rows: q g0, p g0, q g0, unpaired, p g1, q g1, unpaired, unpaired; batches of 4, no shuffling. Group 0
    # (passage first: 1, 0, 2) takes a batch, topped up with an unpaired row (the last: 7); group 1 (4, 5) does
    # not fit beside it, so it starts the next batch, topped up with the unpaired rows left (6, then 3).
    labels = [0, 1, 0, -100, 3, 2, -100, -100]
    lengths = [5, 20, 5, 3, 20, 5, 4, 9]
    order = pair_batch_order(labels, lengths, 4, lambda n: list(range(n)))
    assert order == [1, 0, 2, 7, 4, 5, 6, 3]


def test_pair_batch_order_keeps_every_passage_in_the_batch_of_its_queries():
    rng = random.Random(0)
    labels, group = [], 0
    for _ in range(12):  # 12 passages with 1-5 queries each, and 40 unpaired texts
        labels += [pair_label("passage", group)] + [pair_label("query", group)] * rng.randint(1, 5)
        group += 1
    labels += [-100] * 40
    labels += [pair_label("query", 99)]  # a query whose passage is not in the split: unpaired
    rng.shuffle(labels)
    generator = torch.Generator().manual_seed(0)
    order = pair_batch_order(labels, [rng.randint(3, 30) for _ in labels], 8,
                             lambda n: torch.randperm(n, generator=generator).tolist())
    assert sorted(order) == list(range(len(labels)))  # every row once
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    for g in range(12):
        rows = [row for row, label in enumerate(labels) if label >= 0 and label // 2 == g]
        assert sum(any(row in batch for row in rows) for batch in batches) == 1, f"group {g} was split"


def test_with_the_teachers_vectors_no_row_is_lost():
    # A passage with more queries than a batch holds, and passages the teacher cannot tell apart (equal vectors).
    labels = [1] + [0] * 10 + [pair_label(kind, g) for g in range(1, 21) for kind in ("passage", "query", "query")]
    vectors = torch.ones(len(labels), 4)
    for batch_size in (4, 8):
        generator = torch.Generator().manual_seed(batch_size)
        order = pair_batch_order(labels, [5] * len(labels), batch_size,
                                 lambda n: torch.randperm(n, generator=generator).tolist(), vectors)
        assert sorted(order) == list(range(len(labels)))


def test_with_the_teachers_vectors_each_batch_holds_passages_it_finds_alike():
    # Four passages (rows 0, 2, 4, 6), each with one query: 0 and 4 point one way, 2 and 6 another. Batches of
    # 4 rows hold two groups: the alike ones, whatever the random order (hard negatives for each other).
    labels = [1, 0, 3, 2, 5, 4, 7, 6]
    vectors = torch.tensor([[1.0, 0.1], [0, 1], [0.1, 1.0], [1, 0], [1.0, 0.2], [0, 1], [0.2, 1.0], [1, 0]])
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        order = pair_batch_order(labels, [5] * 8, 4, lambda n: torch.randperm(n, generator=generator).tolist(),
                                 vectors)
        assert sorted(order) == list(range(8))
        assert {frozenset(order[:4]), frozenset(order[4:])} == {frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})}
        shuffled = pair_batch_order(labels, [5] * 8, 4, lambda n: torch.randperm(n, generator=generator).tolist())
        assert sorted(shuffled) == list(range(8))


def test_short_and_long_texts_run_apart_and_give_the_vectors_of_the_batch_run_whole(bert_dir):
    # A pair batch mixes a passage with its short queries: run apart, the queries are not padded to its length.
    from speedy.tasks.embedding import MeanPooledEncoder, length_parts

    assert length_parts(torch.tensor([5, 6, 5, 40])) is not None
    assert length_parts(torch.tensor([30, 32, 35, 40])) is None  # little to save: one run
    assert [(rows.tolist(), n) for rows, n in length_parts(torch.tensor([40, 5, 6, 39]))] == [([1, 2], 6),
                                                                                            ([3, 0], 40)]
    model = MeanPooledEncoder(AutoModel.from_pretrained(str(bert_dir))).eval()
    tokenizer = load_tokenizer(str(bert_dir))
    texts = ["¿Quién ganó?", " ".join(row["passage"] for row in pairs(8, seed=1)), "¿Quién votó?", "Un gol."]
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    assert length_parts(inputs["attention_mask"].sum(-1)) is not None
    with torch.no_grad():
        apart = model(**inputs).logits
        whole = model(**inputs, output_hidden_states=True).logits  # hidden states: the batch runs whole
    assert torch.allclose(apart, whole, atol=1e-5)


def test_the_gold_term_of_an_embedding_student_is_the_in_batch_loss_on_its_pairs(bert_dir):
    # distill.alpha > 0: alpha * (each query against the passages of its batch) + (1 - alpha) * KD.
    from speedy.distill.losses import DistillationObjective, KDTerm, logit_mse
    from speedy.tasks.embedding import MeanPooledEncoder

    student = MeanPooledEncoder(AutoModel.from_pretrained(str(bert_dir))).eval()
    tokenizer = load_tokenizer(str(bert_dir))
    rows = pairs(3, seed=3)
    texts = [text for row in rows for text in (row["query"], row["passage"])]
    labels = torch.tensor([pair_label(kind, g) for g in range(3) for kind in ("query", "passage")])
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt")) | {"labels": labels}
    generator = torch.Generator().manual_seed(0)
    teacher_vectors = torch.randn(6, student.config.hidden_size, generator=generator)
    teacher = SignalCache({"logits": torch.nn.functional.normalize(teacher_vectors, dim=-1)})
    objective = DistillationObjective([KDTerm("logits", "mse")], alpha=0.25)
    with torch.no_grad():
        outputs = student(**inputs)
        value = objective(EmbeddingTask(), outputs, inputs, {"example_index": torch.arange(6)}, [teacher])
    gold = in_batch_loss(outputs.logits, labels)
    assert float(gold) > 0.1  # the term is not trivially 0 here
    expected = 0.25 * gold + 0.75 * logit_mse(outputs.logits, teacher.signals["logits"])
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    inputs.pop("labels")
    with pytest.raises(SpeedyError, match="distill.alpha > 0 needs the pair labels"):
        objective(EmbeddingTask(), outputs, inputs, {"example_index": torch.arange(6)}, [teacher])


def training_batches(tmp_path, files, bert_dir, distill, monkeypatch) -> list[list[int]]:
    """The label ids of every training batch of a study's KD student (trained 2 epochs)."""
    from speedy.distill.trainer import DistillationTrainer

    students = [{"name": "s", "base": str(bert_dir), "kind": "truncate", "layers": 2}]
    study = Study(load_config(config_file(tmp_path, files, bert_dir, distill, students)))
    batches = []
    original = DistillationTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append(inputs["labels"].tolist())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", recording)
    study.run(["finetune", "select", "distill"])
    (student,) = study.store.trials("distill", "search")
    assert student.status == "done" and "ndcg@10" in student.val_metrics
    return batches


def paired_in_their_batches(batches) -> bool:
    """Whether each query finds its passage in its batch (groups of up to 16 rows: the batch size)."""
    sizes = Counter(label // 2 for batch in batches[:len(batches) // 2] for label in batch)  # the first epoch's
    queries = [(label // 2, batch) for batch in batches for label in batch
               if label >= 0 and label % 2 == 0 and sizes[label // 2] <= 16]
    assert len(queries) > 40
    return all(group in {other // 2 for other in batch if other % 2 == 1} for group, batch in queries)


@pytest.mark.parametrize("distill", [{"alpha": 0.5}, {"relation_weight": 0.5}])
def test_a_study_whose_loss_compares_a_batchs_texts_batches_each_passage_with_its_queries(tmp_path, embedding_files,
                                                                                       bert_dir, monkeypatch,
                                                                                       distill):
    # With unpaired texts to fill the batches, each query finds its passage in its batch.
    unpaired = [{"passage": row["passage"] + " Y nada más."} for row in pairs(48, seed=8)]
    files = dict(embedding_files, train=write_jsonl(tmp_path / "train.jsonl", pairs(64, seed=5) + unpaired))
    batches = training_batches(tmp_path, files, bert_dir, distill | {"epochs": 2, "patience": 2}, monkeypatch)
    assert paired_in_their_batches(batches)


def test_a_study_with_neither_term_keeps_the_trainers_order(tmp_path, embedding_files, bert_dir, monkeypatch):
    files = dict(embedding_files, train=write_jsonl(tmp_path / "train.jsonl", pairs(64, seed=5)))
    batches = training_batches(tmp_path, files, bert_dir, {"epochs": 2, "patience": 2}, monkeypatch)
    assert not paired_in_their_batches(batches)  # length-grouped: queries apart from their longer passages


@pytest.mark.parametrize("distill, setting", [({"alpha": 0.5}, r"distill.alpha \(0.5\)"),
                                              ({"search_trials": 2, "search_losses": ["mse"]},
                                               r"distill.search_alpha \(0, 1\)")])
def test_a_gold_term_without_training_pairs_is_refused_before_the_teacher_pass(tmp_path, embedding_files, bert_dir,
                                                                             distill, setting):
    students = [{"name": "s", "base": str(bert_dir), "kind": "truncate", "layers": 2}]
    study = Study(load_config(config_file(tmp_path, embedding_files, bert_dir, distill, students)))
    study.run(["finetune", "select"])
    with pytest.raises(SpeedyError, match=rf"^{setting} of task 'search': the training split has no "
                                          r"query/passage pairs"):
        study.run(["distill"])  # train.txt: passages alone
    assert not (study.output_dir / "teacher-cache").exists()  # refused before the teacher pass


def test_built_in_data_is_refused_for_a_type_without_any(tmp_path, bert_dir):
    with pytest.raises(SpeedyError, match=r"tasks\[0\].data.builtin: task type 'embedding' has no built-in dataset"):
        load_config(config_file(tmp_path, {"builtin": "rv1909-genre"}, bert_dir))
