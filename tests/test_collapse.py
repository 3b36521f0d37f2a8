"""A collapsed run (one class predicted on every validation example) is seen, stopped early when a restart will
follow, and a student trained again from a new seed (``distill.restarts``); the setting never changes a key."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rich.console import Console
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from speedy.config import DataSpec, DistillSettings, TaskSpec
from speedy.tasks import ClassificationTask, load_task_data
from speedy.stages import distill as distill_stage
from speedy.store import Store
from speedy.training import CollapseGuard, fit, one_class_everywhere
from speedy.trials import without_new_defaults


def test_one_class_everywhere_looks_only_where_labels_are_scored():
    logits = np.array([[2.0, 0.0, 1.0], [3.0, 1.0, 0.0], [0.5, 0.1, 0.2]])
    assert one_class_everywhere(logits, np.array([0, 1, 2]))
    logits[2] = [0.0, 0.0, 1.0]
    assert not one_class_everywhere(logits, np.array([0, 1, 2]))
    # tagging: one sentence, three positions; the one labelled -100 (a later sub-token) is not scored
    tags = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    assert one_class_everywhere(tags, np.array([[0, -100, 1]]))
    assert not one_class_everywhere(tags, np.array([[0, 1, 1]]))
    assert not one_class_everywhere((logits, logits), None)  # QA: start and end logits, spans not classes


def _one_class_model(bert_dir, labels):
    """A tiny classifier whose output bias is so large that it predicts class 0 whatever it reads."""
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(labels))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([1e4] + [-1e4] * (len(labels) - 1)))
    return model


def test_fit_stops_a_collapsed_run_only_when_a_restart_will_follow(tiny_files, bert_dir, tmp_path):
    data = load_task_data(TaskSpec(name="tiny", data=DataSpec(**tiny_files), max_length=32), tmp_path / "cache",
                          tmp_path / "data")
    task = ClassificationTask(data.labels)
    runs = {}
    for stop in (True, False):
        runs[stop] = fit(_one_class_model(bert_dir, task.labels), AutoTokenizer.from_pretrained(bert_dir), task,
                         data, tmp_path / f"run-{stop}", epochs=4, batch_size=16, learning_rate=1e-3, seed=0,
                         max_length=32, stop_collapsed=stop)
    assert runs[True]["collapsed"] and runs[True]["epochs_run"] == 2.0  # stopped after two one-class evaluations
    assert runs[False]["collapsed"] and runs[False]["epochs_run"] == 4.0  # only reported
    assert "one_class" not in runs[True]["val_metrics"]  # the verdict is the guard's, not a validation metric


def test_the_guard_reads_its_verdicts_from_the_trainers_log_so_a_resumed_run_keeps_them():
    """A run killed after its first epoch resumes with the log of that epoch (trainer_state.json): the guard
    counts it, and stops at the second evaluation as an uninterrupted run would."""
    state = SimpleNamespace(log_history=[{"loss": 1.4}, {"eval_one_class": 1.0, "epoch": 1.0}])
    control = SimpleNamespace(should_training_stop=False)
    CollapseGuard(stop=True).on_evaluate(None, state, control)
    assert not control.should_training_stop  # one verdict so far
    state.log_history.append({"eval_one_class": 1.0, "epoch": 2.0})
    CollapseGuard(stop=True).on_evaluate(None, state, control)  # a new guard, as in a resumed process
    assert control.should_training_stop
    control.should_training_stop = False
    CollapseGuard(stop=False).on_evaluate(None, state, control)
    assert not control.should_training_stop  # without a restart to follow, a run is only reported
    state.log_history[1]["eval_one_class"] = 0.0
    CollapseGuard(stop=True).on_evaluate(None, state, control)
    assert not control.should_training_stop  # two classes at the first evaluation: not collapsed


def _student_spec(restarts: int):
    return SimpleNamespace(name="e5-4L (KD)", seed=2, settings=dataclasses.replace(DistillSettings(),
                                                                                    restarts=restarts))


def _fake_training(calls, collapsed_below=1000):
    """Stands in for one training run: seeds below ``collapsed_below`` collapse."""
    def train_once(study, spec, caches, folder, seed, stop_collapsed=False):
        calls.append((seed, stop_collapsed, Path(folder).name))
        model = Path(folder) / "model"
        model.mkdir(parents=True)
        return {"collapsed": seed < collapsed_below, "val_metrics": {"accuracy": 0.2}, "val_loss": 1.8,
                "checkpoint": str(model), "info": {}}
    return train_once


def test_a_collapsed_student_is_trained_again_from_a_new_seed_and_a_killed_run_resumes_the_restart(
        monkeypatch, tmp_path):
    calls, console = [], Console(record=True, width=300)
    study = SimpleNamespace(console=console)
    monkeypatch.setattr(distill_stage, "_train_once", _fake_training(calls))
    result = distill_stage.train_student(study, _student_spec(restarts=1), [], tmp_path / "trial")
    assert calls == [(2, True, "trial"), (1002, False, "restart-1")]
    assert result["info"] == {"seed": 1002, "restarts": 1, "collapsed": False}
    assert result["checkpoint"] == str(tmp_path / "trial" / "restart-1" / "model")
    assert (tmp_path / "trial" / "collapsed-0.json").is_file()
    assert not (tmp_path / "trial" / "model").exists()  # the one-class model is deleted
    assert "training again from seed 1002" in console.export_text()

    calls.clear()  # the same trial again, as after a kill during the restart: the collapsed attempt is not redone
    (tmp_path / "trial" / "restart-1" / "model").rmdir()
    distill_stage.train_student(study, _student_spec(restarts=1), [], tmp_path / "trial")
    assert calls == [(1002, False, "restart-1")]


def test_without_restarts_a_collapsed_student_is_reported_loudly_and_kept(monkeypatch, tmp_path):
    calls, console = [], Console(record=True, width=300)
    monkeypatch.setattr(distill_stage, "_train_once", _fake_training(calls, collapsed_below=10**6))
    result = distill_stage.train_student(SimpleNamespace(console=console), _student_spec(restarts=0), [],
                                         tmp_path / "trial")
    assert calls == [(2, False, "trial")]
    assert result["info"]["collapsed"] and Path(result["checkpoint"]).is_dir()
    text = console.export_text()
    assert "WARNING" in text and "one class" in text and "distill.restarts: 1" in text

    assert (tmp_path / "trial" / "collapsed-0.json").is_file()  # so that more restarts later skip this attempt

    calls.clear()  # restarts used up: the last attempt is kept, with the warning
    result = distill_stage.train_student(SimpleNamespace(console=console), _student_spec(restarts=1), [],
                                         tmp_path / "other")
    assert [seed for seed, _, _ in calls] == [2, 1002] and result["info"]["restarts"] == 1
    assert "after 1 restart)" in console.export_text()


def test_restarts_are_never_part_of_a_trial_key():
    assert without_new_defaults(DistillSettings()) == without_new_defaults(
        dataclasses.replace(DistillSettings(), restarts=2))


def test_a_trial_that_ended_collapsed_is_opened_again_when_more_restarts_are_allowed(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    for key, info in (("collapsed", {"collapsed": True, "restarts": 0}), ("rescued", {"collapsed": False, "restarts": 1}),
                      ("old", {"epochs_run": 8.0})):
        assert store.claim(key, "distill", "t", key, {}, "w")
        store.finish(key, "w", status="done", val_loss=1.0, val_metrics={}, checkpoint=None, info=info)
    assert not distill_stage.rescue_collapsed(store, "collapsed", 0)  # the same setting: kept as it is
    assert distill_stage.rescue_collapsed(store, "collapsed", 1) and store.get("collapsed").status == "failed"
    assert not distill_stage.rescue_collapsed(store, "rescued", 2)  # healthy: never trained again
    assert not distill_stage.rescue_collapsed(store, "old", 1)  # recorded before the guard: no verdict to act on
    assert not distill_stage.rescue_collapsed(store, "missing", 1)
