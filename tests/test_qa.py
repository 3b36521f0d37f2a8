"""Extractive QA: the SQuAD reader, the official metric, windows, cross-tokenizer KD mapping, prediction."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from speedy.data.squad import read_squad, split_by_article
from speedy.distill.cache import TeacherCache
from speedy.errors import SpeedyError
from speedy.tasks import QATask
from speedy.tasks.base import PAD_LOGIT
from speedy.tasks.qa import context_units, window_units
from speedy.tasks.squad_metric import normalize_answer, squad_scores

CONTEXT = ("El Real Madrid ganó la final en Lisboa en 2014. El entrenador, Carlo Ancelotti, celebró con el "
           "equipo; la ciudad de Madrid festejó toda la noche.")


def squad_file(path, qas, context=CONTEXT, title="Fútbol"):
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": title, "paragraphs": [
        {"context": context, "qas": qas}]}]}, ensure_ascii=False), "utf-8")
    return path


def qa(qid, question, *answers):
    return {"id": qid, "question": question,
            "answers": [{"text": text, "answer_start": start} for text, start in answers]}


# ----------------------------------------------------------------------------------------------- reader


def test_reader_reads_squad_and_fixes_or_drops_misplaced_answers(tmp_path):
    start = CONTEXT.index("Lisboa")
    path = squad_file(tmp_path / "x.json", [qa("q1", "¿Dónde?", ("Lisboa", start)),
                                            qa("q2", "¿Quién?", ("Carlo Ancelotti", 3)),  # misplaced, occurs once
                                            qa("q3", "¿Qué?", ("Madrid", 0))])  # misplaced, occurs twice
    messages = []
    fixed = read_squad(path, bad_answers="fix", report=messages.append)
    assert fixed["id"] == ["q1", "q2"]
    assert fixed["answers"][1]["answer_start"] == [CONTEXT.index("Carlo Ancelotti")]
    assert "2 answers whose answer_start" in messages[0] and "q2" in messages[0]
    assert read_squad(path, bad_answers="drop", report=messages.append)["id"] == ["q1"]
    assert read_squad(path, bad_answers="keep", report=messages.append)["id"] == ["q1", "q2", "q3"]


def test_reader_drops_empty_answers_and_reports_them(tmp_path):
    start = CONTEXT.index("Lisboa")
    path = squad_file(tmp_path / "x.json", [qa("q1", "¿Dónde?", ("", -1), ("Lisboa", start)),
                                            qa("q2", "¿Quién?", ("", -1))])
    messages = []
    data = read_squad(path, report=messages.append)
    assert data["id"] == ["q1"] and data["answers"][0]["text"] == ["Lisboa"]
    assert "2 empty answers" in messages[0] and "q1" in messages[0]


@pytest.mark.parametrize("qas, context, fragment", [
    ([qa("q7", "¿Quién?", ("x", 0))], "", "question id q7: the question has no context"),
    ([{"id": "q8", "question": "¿Qué?", "answers": []}], CONTEXT, "question id q8: empty answer list"),
    ([qa("q9", "¿Qué?", ("x", 5000))], CONTEXT, "question id q9: answer_start 5000 is past the end"),
])
def test_reader_errors_name_file_and_question(tmp_path, qas, context, fragment):
    path = squad_file(tmp_path / "bad.json", qas, context=context)
    with pytest.raises(SpeedyError, match=fragment) as error:
        read_squad(path)
    assert "bad.json" in str(error.value)


def test_reader_rejects_json_that_is_not_squad(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"rows": []}', "utf-8")
    with pytest.raises(SpeedyError, match="other.json: not SQuAD-shaped"):
        read_squad(path)


def test_split_by_article_never_shares_an_article(tmp_path):
    rows = {"id": [str(i) for i in range(20)], "title": [f"t{i % 5}" for i in range(20)],
            "context": ["c"] * 20, "question": ["q"] * 20, "answers": [{"text": ["c"], "answer_start": [0]}] * 20}
    train, validation = split_by_article(Dataset.from_dict(rows), 0.2, seed=0)
    assert set(train["title"]).isdisjoint(validation["title"]) and len(train) + len(validation) == 20


# ----------------------------------------------------------------------------------------------- metric


def test_metric_matches_the_official_definition_on_hand_made_cases():
    assert normalize_answer("The  Real Madrid!") == "real madrid"
    golds = {"a": ["Denver Broncos", "the Denver Broncos", "Broncos"], "b": ["24-10"], "c": ["el Real Madrid"]}
    predictions = {"a": "Broncos.", "b": "24 - 10", "c": "Real Madrid"}
    scores = squad_scores(predictions, golds)  # official: English articles, ASCII punctuation
    # a: exact against "Broncos" after punctuation removal; b: "2410" vs "24 10": 0; c: "el real madrid" vs
    # "real madrid": F1 = 2 * (2/2 * 2/3) / (2/2 + 2/3) = 0.8, not exact.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0 + 0.8) / 3)
    spanish = squad_scores(predictions, golds, articles="es")  # "el" is an article now
    assert spanish["exact_match"] == pytest.approx(200 / 3)
    assert squad_scores({"x": "¿Madrid?"}, {"x": ["Madrid"]}, "es")["exact_match"] == 100.0
    assert squad_scores({}, {"x": ["Madrid"]})["f1"] == 0.0


# ------------------------------------------------------------------------------------------ alignment


@pytest.fixture
def tokenizers(wordpiece_dir, unigram_dir):
    return AutoTokenizer.from_pretrained(wordpiece_dir), AutoTokenizer.from_pretrained(unigram_dir)


def test_window_units_map_back_to_the_units_characters(tokenizers):
    units = context_units(CONTEXT)
    for tokenizer in tokenizers:
        encoded = tokenizer("¿Quién?", CONTEXT, return_offsets_mapping=True)
        covered, first, last = window_units(CONTEXT, units, encoded["offset_mapping"], encoded.sequence_ids())
        assert covered, "a whole context fits in one window"
        for u, f, l in zip(covered, first, last):
            piece_start = encoded["offset_mapping"][f][0]
            assert CONTEXT[piece_start:units[u][1]].strip().startswith(CONTEXT[units[u][0]:units[u][1]][:1])
            assert encoded["offset_mapping"][l][1] >= units[u][1] - 0 or l == f
            assert encoded.sequence_ids()[f] == 1 and encoded.sequence_ids()[l] == 1  # never question tokens


def test_encoding_windows_and_answer_positions(tokenizers):
    task = QATask(stride=4)
    answer = "el equipo"  # words both tiny vocabularies know, so decoding shows them
    data = Dataset.from_dict({"id": ["q"], "question": ["¿Quién entrenaba?"], "context": [CONTEXT],
                              "answers": [{"text": [answer], "answer_start": [CONTEXT.index(answer)]}]})
    for tokenizer in tokenizers:
        encoded = task.encode(data, tokenizer, max_length=24, with_index=True)
        assert len(encoded) > 1  # a long context: several windows
        found = []
        for row in range(len(encoded)):
            s, e = encoded[row]["start_positions"], encoded[row]["end_positions"]
            if s:
                found.append(tokenizer.decode(encoded[row]["input_ids"][s : e + 1]).replace(" ", ""))
        assert found and all(text == answer.replace(" ", "") for text in found)
        # Each unit is owned by exactly one window.
        owned = [u for row in range(len(encoded))
                 for u, o in zip(encoded[row]["unit_index"], encoded[row]["unit_owned"]) if o]
        assert len(owned) == len(set(owned))


def test_kd_rows_match_windows_by_the_units_they_cover_not_by_order(tokenizers, tmp_path, bert_unigram_dir):
    wordpiece, unigram = tokenizers
    task = QATask(stride=4)
    data = Dataset.from_dict({"id": ["q"], "question": ["¿Quién?"], "context": [CONTEXT],
                              "answers": [{"text": ["Lisboa"], "answer_start": [CONTEXT.index("Lisboa")]}]})
    n_units = len(context_units(CONTEXT))
    # A fake teacher cache: unit u has start logit u and end logit -u; unit 3 was never seen by the teacher.
    rows = np.stack([np.arange(n_units, dtype=np.float32), -np.arange(n_units, dtype=np.float32)], axis=1)
    rows[3] = np.nan
    cache = TeacherCache.load_or_build(tmp_path, "fake", lambda: iter([rows]))
    encoded = task.encode(data, unigram, max_length=24, with_index=True)
    features = [encoded[i] for i in reversed(range(len(encoded)))]  # windows in another order than the teacher's
    batch = task.collator(unigram)(features)
    extras = {k: batch.pop(k) for k in ("example_index", "unit_index", "unit_first", "unit_last", "unit_owned")}
    student = AutoModelForQuestionAnswering.from_pretrained(bert_unigram_dir)
    outputs = student(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
    s_rows, t_rows, labels = task.kd_rows(outputs, batch, extras, cache)
    windows = len(features)
    assert s_rows.shape == t_rows.shape and s_rows.shape[0] == 2 * windows
    for w, feature in enumerate(features):
        expected = [u for u in feature["unit_index"] if u != 3]
        starts = t_rows[w][t_rows[w] > PAD_LOGIT / 2].tolist()
        ends = t_rows[windows + w][t_rows[windows + w] > PAD_LOGIT / 2].tolist()
        assert starts == [float(u) for u in expected] and ends == [-float(u) for u in expected]
        assert (s_rows[w] > PAD_LOGIT / 2).sum() == len(expected)  # the student is masked at the same places
    # The gold answer ("Lisboa") is a start label in every window that contains it, and only there.
    lisboa = next(i for i, (s, e) in enumerate(context_units(CONTEXT)) if CONTEXT[s:e] == "Lisboa")
    for w, feature in enumerate(features):
        kept = [u for u in feature["unit_index"] if u != 3]
        if feature["start_positions"]:
            assert labels[w] == kept.index(lisboa)
        else:
            assert labels[w] == -100


def test_predict_answers_gives_a_span_of_the_context(bert_unigram_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_unigram_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(bert_unigram_dir)
    task = QATask(stride=4)
    data = Dataset.from_dict({"question": ["¿Dónde?", "¿Quién?"], "context": [CONTEXT, "Juan habló ayer."]})
    answers = task.predict_answers(model, tokenizer, data, max_length=24)
    for i, context in enumerate(data["context"]):
        answer = answers[i]
        assert context[answer["start"] : answer["end"]] == answer["text"] and answer["text"].strip()
        assert len(tokenizer(answer["text"], add_special_tokens=False)["input_ids"]) <= task.max_answer_length + 2


# ----------------------------------------------------------------------------------------------- selection

SECOND = "Ayer llovió en Sevilla. Hoy hace sol."
# Questions over contexts of different lengths (so their windows differ in length, and a validation that grouped
# them by length would hand their logits back out of order), answers spread over each context.
VALIDATION = [(CONTEXT, "¿Quién ganó?", "El Real Madrid"), (SECOND, "¿Dónde llovió?", "Sevilla"),
              (CONTEXT, "¿Dónde fue la final?", "Lisboa"), (SECOND, "¿Cuándo hace sol?", "Hoy"),
              (CONTEXT, "¿Quién era el entrenador?", "Carlo Ancelotti"), (SECOND, "¿Qué pasó ayer?", "llovió"),
              (CONTEXT, "¿Qué ciudad festejó?", "la ciudad de Madrid"), (CONTEXT, "¿En qué año?", "2014")]


def validation_split():
    return Dataset.from_list([{"id": f"q{i}", "title": "t", "context": context, "question": question,
                               "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
                              for i, (context, question, answer) in enumerate(VALIDATION)])


def gold_logits(encoded, width):
    """Window logits that point at each window's gold span (the first token where a window holds no answer)."""
    start, end = np.full((len(encoded), width), -5.0), np.full((len(encoded), width), -5.0)
    for row, (s, e) in enumerate(zip(encoded["start_positions"], encoded["end_positions"])):
        start[row, s], end[row, e] = 5.0, 5.0
    return start, end


def test_qa_validation_scores_the_decoded_spans_with_squad_f1(bert_dir):
    """Each epoch's metrics decode the best span of every question from its windows, in the windows' order: logits
    at the gold spans score F1 1; the same logits handed to other windows do not."""
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    task, split = QATask(stride=8), validation_split()
    encoded = task.encode(split, tokenizer, max_length=32)
    assert len(encoded) > len(split)  # the long context takes several windows
    metrics = task.validation_metrics(split, tokenizer, max_length=32, source="val.json")
    start, end = gold_logits(encoded, 40)  # wider than any window: the Trainer pads across batches
    labels = (np.array(encoded["start_positions"]), np.array(encoded["end_positions"]))
    scores = metrics((start, end), labels)
    assert scores["f1"] == pytest.approx(1.0) and scores["exact_match"] == pytest.approx(1.0)
    assert scores["window_span_accuracy"] == pytest.approx(1.0)
    shifted = metrics((np.roll(start, 1, axis=0), np.roll(end, 1, axis=0)), labels)
    assert shifted["f1"] < 0.5
    with pytest.raises(SpeedyError, match=r"val\.json: validation gave 3 windows' logits for"):
        metrics((start[:3], end[:3]), labels)


def test_qa_training_selects_by_the_f1_of_the_saved_model(tmp_path, bert_dir):
    """QA students select by SQuAD F1, decoded at every epoch in the windows' order: the kept model's validation
    F1 is what ``evaluate`` gives it on the same split (a validation that shuffled windows would differ)."""
    from types import SimpleNamespace

    from speedy.training import fit

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(bert_dir)
    task, split = QATask(stride=8), validation_split()
    assert task.selection_metric == "f1"
    data = SimpleNamespace(splits={"train": split, "validation": split},
                           sources={"train": "train.json", "validation": "val.json"})
    result = fit(model, tokenizer, task, data, tmp_path, epochs=6, batch_size=4, learning_rate=3e-3, seed=1,
                 max_length=32, metric=task.selection_metric)
    saved = AutoModelForQuestionAnswering.from_pretrained(result["checkpoint"])
    evaluated = task.evaluate(saved, tokenizer, split, max_length=32)
    assert result["val_metrics"]["f1"] > 0.2  # it learnt spans: a wrong order could not give the same score
    assert result["val_metrics"]["f1"] == pytest.approx(evaluated["f1"])
    assert result["val_metrics"]["exact_match"] == pytest.approx(evaluated["exact_match"])
    assert result["best_epoch"] == max(result["history"], key=lambda row: row["f1"])["epoch"]


def test_a_qa_study_keeps_and_reports_the_student_with_the_lowest_validation_loss(tmp_path):
    """With ``distill.metric: loss``, QA selects on validation loss, which must be minimised: with losses 1.0 and
    3.0 the 1.0 trial is kept."""
    import yaml

    from speedy.configfile import load_config
    from speedy.pipeline import Study
    from speedy.tasks.base import selection_score

    files = {split: str(squad_file(tmp_path / f"{split}.json", [qa(f"{split}1", "¿Quién ganó?",
                                                                    ("El Real Madrid", 0))]))
             for split in ("train", "validation", "test")}
    config = {"name": "qa", "output_dir": str(tmp_path / "out"),
              "tasks": [{"name": "qa", "type": "qa", "max_length": 64, "data": files}],
              "teachers": [{"name": "t", "base": "all-MiniLM-L6-v2"}],
              "students": [{"name": "s", "base": "all-MiniLM-L6-v2", "kind": "truncate", "layers": 2}]}
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(config), "utf-8")
    study = Study(load_config(tmp_path / "qa.yaml"))
    for i, loss in enumerate((3.0, 1.0, 2.0)):
        params = {"stage": "distill", "mode": "kd", "model": {"name": "s"}, "settings": {"metric": "loss"}, "i": i}
        key = f"trial{i}"
        assert study.store.claim(key, "distill", "qa", f"s lr={i}", params, "w")
        study.store.finish(key, "w", status="done", val_loss=loss, val_metrics={"loss": loss}, checkpoint=None,
                           info={}, seconds=1.0)
    kept = [t for t in study.models_to_report(study.config.tasks[0]) if t.stage == "distill"]
    assert [t.val_loss for t in kept] == [1.0]
    assert selection_score({"loss": 1.0}, 1.0, "loss") > selection_score({"loss": 3.0}, 3.0, "loss")
    assert selection_score({"f1": 0.9}, 1.0, "f1") > selection_score({"f1": 0.5}, 0.1, "f1")


def test_qa_transfer_pairs_are_labelled_by_the_teacher_and_distilled(tmp_path, bert_dir):
    """Unlabelled (question, context) pairs, one JSON object a line, join the KD students' training set."""
    import yaml

    from speedy.configfile import load_config
    from speedy.pipeline import Study

    questions = [qa(f"q{i}", question, (answer, CONTEXT.index(answer))) for i, (question, answer) in enumerate(
        [("¿Quién ganó?", "El Real Madrid"), ("¿Dónde fue la final?", "Lisboa"),
         ("¿Quién era el entrenador?", "Carlo Ancelotti"), ("¿Qué ciudad festejó?", "la ciudad de Madrid")])]
    files = {split: str(squad_file(tmp_path / f"{split}.json", questions[:n])) for split, n in
             (("train", 4), ("validation", 2), ("test", 2))}
    transfer = tmp_path / "pairs.jsonl"
    transfer.write_text("".join(json.dumps({"question": q, "context": CONTEXT}, ensure_ascii=False) + "\n" for q in
                                ("¿En qué año?", "¿Quién celebró?", "¿Qué festejó la ciudad?")), "utf-8")
    config = {"name": "qa-transfer", "output_dir": str(tmp_path / "out"), "seed": 1,
              "tasks": [{"name": "qa", "type": "qa", "max_length": 64, "data": files,
                         "transfer_files": [str(transfer)]}],
              "teachers": [{"name": "t", "base": str(bert_dir)}],
              "students": [{"name": "s", "base": str(bert_dir), "kind": "truncate", "layers": 2}],
              "grid": {"batch_size": [4], "epochs": [1], "learning_rate": [1e-3]},
              "distill": {"epochs": 1, "patience": 1, "batch_size": 4, "learning_rate": 1e-3}}
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(config), "utf-8")
    study = Study(load_config(tmp_path / "qa.yaml"))
    study.run(["finetune", "select", "distill"])
    kd = next(t for t in study.store.trials("distill", "qa") if t.params["mode"] == "kd")
    gold = len(study.data(study.config.tasks[0]).splits["train"])
    assert kd.status == "done" and kd.info["train_examples"] == gold + 3  # gold, then the transfer pairs

    task = QATask()
    with pytest.raises(SpeedyError, match=r"pairs\.jsonl:2: QA transfer text is one JSON object a line"):
        task.unlabelled_rows([("pairs.jsonl", 1, '{"question": "a", "context": "b"}'), ("pairs.jsonl", 2, "a b")],
                             ["id", "title", "context", "question", "answers"])
    with pytest.raises(SpeedyError, match=r"x\.jsonl:5: .* non-empty \"question\""):
        task.unlabelled_rows([("x.jsonl", 5, '{"question": " ", "context": "b"}')], [])


def test_a_qa_student_selected_by_f1_is_a_new_trial_and_an_explicit_metric_keeps_its_key():
    """Stores made while QA selected by loss hold students whose kept epoch another rule chose: with the default
    metric a QA student's key now names F1, so they are trained again; a tagging student's key is unchanged, and so
    is a student whose ``distill.metric`` is set (it never followed the default)."""
    import dataclasses

    from speedy.config import DistillSettings, ModelSpec, TaskSpec
    from speedy.trials import DISTILL, KD, TrialSpec

    def params(task_type, metric=None):
        settings = dataclasses.replace(DistillSettings(), metric=metric)
        spec = TrialSpec(DISTILL, TaskSpec(name="t", type=task_type), ModelSpec(name="s"), 16, 10, 2e-4, 1,
                         mode=KD, settings=settings)
        return spec.params("data", "teacher")

    assert params("qa")["selection_metric"] == "f1"
    assert "selection_metric" not in params("qa", metric="loss")
    assert "selection_metric" not in params("tagging")


def test_a_store_from_before_qa_selected_by_f1_still_reports_and_selects(tmp_path):
    """QA trials recorded when QA validated by loss alone have no F1: the report compares them by the loss they
    followed and puts a student kept by today's rule (F1) first; selection by F1 ranks such teachers last."""
    from types import SimpleNamespace

    from speedy.config import ModelSpec, StudyConfig, TaskSpec
    from speedy.selection import models_to_report, ranked_teachers
    from speedy.store import Store

    store = Store(tmp_path / "store.sqlite")
    old = {"stage": "distill", "mode": "kd", "model": {"name": "s"}, "settings": {"metric": None}}
    rows = [("old-a", old, 2.0, {"loss": 2.0}), ("old-b", old, 1.5, {"loss": 1.5}),
            ("new", {**old, "selection_metric": "f1"}, 2.5, {"loss": 2.5, "f1": 0.4})]
    for key, params, loss, metrics in rows:
        assert store.claim(key, "distill", "qa", key, params, "w")
        store.finish(key, "w", status="done", val_loss=loss, val_metrics=metrics, checkpoint=None, info={})
    config = StudyConfig(name="s", output_dir=str(tmp_path), tasks=[TaskSpec(name="qa", type="qa")],
                         teachers=[ModelSpec(name="t")])
    assert [t.key for t in models_to_report(store, config, config.tasks[0])] == ["new"]
    # the old trials alone: the one with the lower loss is kept
    only_old = Store(tmp_path / "old.sqlite")
    for key, params, loss, metrics in rows[:2]:
        assert only_old.claim(key, "distill", "qa", key, params, "w")
        only_old.finish(key, "w", status="done", val_loss=loss, val_metrics=metrics, checkpoint=None, info={})
    assert [t.key for t in models_to_report(only_old, config, config.tasks[0])] == ["old-b"]

    teachers = [SimpleNamespace(key=k, val_loss=l, val_metrics=m) for k, l, m in
                (("old", 1.0, {"loss": 1.0}), ("weak", 2.0, {"f1": 0.3}), ("strong", 3.0, {"f1": 0.5}))]
    assert [t.key for t in ranked_teachers(teachers[1:], "metric", "f1")] == ["strong", "weak"]
    # one candidate without F1: all by loss, whatever the time each was trained
    assert [t.key for t in ranked_teachers(teachers, "metric", "f1")] == ["old", "weak", "strong"]

    from speedy.stages.distill import teacher_scores

    study = SimpleNamespace(task=lambda spec: QATask())
    assert teacher_scores(study, None, teachers[1:]) == [0.3, 0.5]
    assert teacher_scores(study, None, teachers) == [1.0, 0.5, 1 / 3]
