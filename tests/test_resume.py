"""Killed runs resume and killed workers are taken over, whatever the moment of the kill: worker ids of any form,
machines whose clocks disagree or that mount the study folder at different paths, a checkpoint cut short, a
trial Optuna marked RUNNING before its first heartbeat, and the temporary files a kill leaves behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from speedy.search import Search, claimable_now, worker_id
from speedy.store import Store, trials


def _start(script: str, *args, env=None) -> subprocess.Popen:
    """A small Python process that prints one line when it reached the point where the test kills it."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


def _kill_when(process: subprocess.Popen, line: str) -> None:
    """SIGKILL ``process`` once it printed ``line`` (other output, e.g. progress bars, is passed over)."""
    seen = []
    for got in process.stdout:
        if got.strip().endswith(line):  # progress bars end their lines with a carriage return only
            break
        seen.append(got)
    else:
        raise AssertionError(f"it ended before printing {line!r}: {''.join(seen)[-3000:]}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


CLAIM_AND_HOLD = """
    import sys, time
    from speedy.search import worker_id
    from speedy.store import Store
    store = Store(sys.argv[1])
    assert store.claim("k", "finetune", "t", "n", {}, worker_id())
    print("claimed", flush=True)
    while True:  # a live worker: heartbeats while its trial trains
        store.beat("k", worker_id())
        time.sleep(0.2)
"""


# ------------------------------------------------------------------ 1. worker ids of any form
def test_a_labelled_worker_never_takes_over_a_live_workers_trial(tmp_path, monkeypatch):
    """SPEEDY_WORKER_ID=gpu0 on two workers: still two workers; a live one keeps its trial, a dead one's is taken
    at once (same machine, its process gone)."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    monkeypatch.setenv("SPEEDY_WORKER_ID", "gpu0")
    holder = _start(CLAIM_AND_HOLD, url, env={"SPEEDY_WORKER_ID": "gpu0"})
    try:
        assert holder.stdout.readline().strip() == "claimed", holder.stdout.read()
        store, me = Store(url), worker_id()
        trial = store.get("k")
        assert not claimable_now(trial, me)  # alive: its heartbeat decides
        assert not store.claim("k", "finetune", "t", "n", {}, me, lease=20.0)
        assert trial.worker.startswith("gpu0@") and (trial.host, trial.pid) == (socket.gethostname(), holder.pid)
    finally:
        holder.kill()
        holder.wait()
    trial = store.get("k")
    assert claimable_now(trial, me)  # dead, on this machine: no need to wait for its heartbeat to lapse
    assert store.claim("k", "finetune", "t", "n", {}, me, lease=0.0)
    assert store.get("k").worker == me and store.get("k").attempts == 2


def test_a_claim_by_an_older_speedy_is_judged_by_its_worker_id(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    for key, worker in (("old", f"{socket.gethostname()}:{_dead_pid()}"), ("label", "gpu0"), ("none", None)):
        with store.engine.begin() as conn:
            conn.execute(trials.insert().values(key=key, stage="finetune", task="t", name="n", params="{}",
                                                status="running", worker=worker, heartbeat=time.time()))
    assert claimable_now(store.get("old"), worker_id())  # host:pid of a process gone
    assert not claimable_now(store.get("label"), worker_id())  # names no process: wait for its heartbeat
    assert claimable_now(store.get("none"), worker_id())  # written by a speedy without workers


# ------------------------------------------------------------------ 2. one clock: the database's
def check_heartbeats_ignore_the_workers_clocks(url, monkeypatch):
    """A worker whose clock is an hour ahead neither takes over a live trial nor makes its own, once dead, look
    alive. ``url``: a fresh store."""
    real = time.time
    store = Store(url)
    store.claim("live", "finetune", "t", "n", {}, "a@host:1")
    with monkeypatch.context() as ahead:
        ahead.setattr(time, "time", lambda: real() + 3600)
        assert not store.claim("live", "finetune", "t", "n", {}, "b@host:2", lease=20.0)  # not stale by its clock
        store.claim("dead", "finetune", "t", "n", {}, "c@host:3")  # then dies: no more heartbeats
        store.beat("dead", "c@host:3")
    time.sleep(1.2)
    assert store.claim("dead", "finetune", "t", "n", {}, "d@host:4", lease=1.0)  # silent for a second: dead
    assert store.get("live").worker == "a@host:1" and store.get("dead").worker == "d@host:4"


def test_heartbeats_ignore_the_workers_clocks(tmp_path, monkeypatch):
    check_heartbeats_ignore_the_workers_clocks(f"sqlite:///{tmp_path / 'store.sqlite'}", monkeypatch)


# ------------------------------------------------------------------ 3. the study folder mounted elsewhere
def test_checkpoints_are_stored_relative_to_the_study_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'store.sqlite'}"
    (tmp_path / "db").mkdir()
    here, there = tmp_path / "mnt-a" / "study", tmp_path / "mnt-b" / "study"
    store = Store(url, root=here)
    store.claim("k", "finetune", "t", "n", {}, "w")
    store.finish("k", "w", status="done", checkpoint=str(here / "trials" / "k" / "model"))
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(trials.c.checkpoint)).scalar() == "trials/k/model"
    assert Store(url, root=there).get("k").checkpoint == str(there / "trials" / "k" / "model")
    # a checkpoint outside the study folder, or stored absolute by an older speedy, is read as it is
    store.update("k", checkpoint="/elsewhere/model")
    assert Store(url, root=there).trials()[0].checkpoint == "/elsewhere/model"


def test_a_done_trial_is_found_when_the_study_folder_moved(tmp_path):
    """Another machine mounts the shared folder at another path: the trial is done there too, not retrained."""
    from rich.console import Console

    from speedy.config import ModelSpec, StudyConfig, TaskSpec
    from speedy.pipeline import Study
    from speedy.trials import FINETUNE, TrialSpec

    def study(folder):
        made = Study(StudyConfig(name="s", tasks=[], teachers=[], output_dir=str(folder)), Console(quiet=True))
        made.data_fingerprint = lambda task: "data"  # no data to read: the trial's key needs only a fingerprint
        return made

    spec = TrialSpec(FINETUNE, TaskSpec(name="t"), ModelSpec(name="m"), batch_size=8, epochs=1, learning_rate=1e-3,
                     seed=0)
    first = study(tmp_path / "mnt-a" / "study")

    def work(output_dir):
        model = output_dir / "model"
        model.mkdir(parents=True)
        return {"val_loss": 0.5, "val_metrics": {}, "checkpoint": str(model.resolve())}

    key, trial = first.run_trial(spec, work)
    assert trial.status == "done"
    first.store.engine.dispose()
    (tmp_path / "mnt-b").mkdir()
    os.rename(tmp_path / "mnt-a" / "study", tmp_path / "mnt-b" / "study")

    def retrain(output_dir):
        raise AssertionError("the trial is done: its model is in the moved folder")

    second = study(tmp_path / "mnt-b" / "study")
    _, trial = second.run_trial(spec, retrain)
    assert Path(trial.checkpoint).is_dir() and Path(trial.checkpoint) == second.trial_dir(key) / "model"


# ------------------------------------------------------------------ 4. killed while writing a checkpoint
TRAIN = """
    import json, os, sys, time
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer
    from speedy.config import DataSpec, TaskSpec
    from speedy.tasks import load_task_data
    from speedy.tasks import ClassificationTask
    from speedy.training import fit

    bert, files, work, method, hang_at = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    original, calls = getattr(Trainer, method), []

    def hanging(self, output_dir, *args, **kwargs):  # the kill lands in the middle of this checkpoint's write
        calls.append(output_dir)
        if len(calls) == hang_at:
            os.makedirs(output_dir, exist_ok=True)
            print("writing", flush=True)
            time.sleep(600)
        return original(self, output_dir, *args, **kwargs)

    setattr(Trainer, method, hanging)
    data = load_task_data(TaskSpec(name="tiny", data=DataSpec(**files), max_length=32), work + "/cache", work + "/data")
    task = ClassificationTask(data.labels)
    model = AutoModelForSequenceClassification.from_pretrained(bert, num_labels=len(task.labels))
    fit(model, AutoTokenizer.from_pretrained(bert), task, data, work + "/run", epochs=3, batch_size=16,
        learning_rate=1e-3, seed=0, max_length=32)
"""


@pytest.mark.parametrize("method, hang_at, resumed", [
    ("_save", 2, "checkpoint-4"),  # the weights of epoch 2: resume from epoch 1's complete checkpoint
    ("_save_optimizer_and_scheduler", 1, None),  # epoch 1's weights, no optimizer nor state: start over
])
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_a_complete_one(
        method, hang_at, resumed, bert_dir, tiny_files, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer

    from speedy.config import DataSpec, TaskSpec
    from speedy.tasks import load_task_data
    from speedy.tasks import ClassificationTask
    from speedy.training import fit

    _kill_when(_start(TRAIN, bert_dir, json.dumps(tiny_files), tmp_path, method, hang_at), "writing")
    run = tmp_path / "run"
    left = {p.name for p in run.glob("checkpoint-*")}  # the kill left a half-written checkpoint behind
    assert left == ({"checkpoint-4", "checkpoint-8"} if resumed else {"checkpoint-4"})
    if resumed:  # the complete checkpoint was written on a machine that mounts the folder elsewhere
        state_file = run / resumed / "trainer_state.json"
        state = json.loads(state_file.read_text())
        state["best_model_checkpoint"] = f"/mnt/elsewhere/run/{resumed}"
        state_file.write_text(json.dumps(state))

    seen = {}
    original = Trainer.train

    def train(self, resume_from_checkpoint=None, **kwargs):
        seen["resume"] = resume_from_checkpoint
        seen["incomplete"] = sorted(p.name for p in run.glob("checkpoint-*") if str(p) != resume_from_checkpoint)
        if resume_from_checkpoint:
            seen["best"] = json.loads((Path(resume_from_checkpoint) / "trainer_state.json").read_text())[
                "best_model_checkpoint"]
        return original(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(Trainer, "train", train)
    data = load_task_data(TaskSpec(name="tiny", data=DataSpec(**tiny_files), max_length=32), tmp_path / "cache",
                          tmp_path / "data")
    task = ClassificationTask(data.labels)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(task.labels))
    result = fit(model, AutoTokenizer.from_pretrained(bert_dir), task, data, run, epochs=3, batch_size=16,
                 learning_rate=1e-3, seed=0, max_length=32)
    assert (Path(seen["resume"]).name if seen["resume"] else None) == resumed
    assert seen["incomplete"] == []  # the half-written checkpoint was deleted before training
    if resumed:
        assert seen["best"] == str(run / resumed)
    assert result["epochs_run"] == 3.0 and Path(result["checkpoint"]).is_dir()


# ------------------------------------------------------------------ 5. killed before Optuna's first heartbeat
GRID_WORKER = """
    import sys, time
    import optuna.study._optimize
    from speedy.search import Search
    from speedy.store import Store

    store = Store(sys.argv[1])
    search = Search(store, heartbeat=1, grace=2, poll=0.1)
    if sys.argv[2] == "hang":  # killed after Optuna marked the trial RUNNING, before its first heartbeat
        def hang(*args):
            print("asked", flush=True)
            time.sleep(600)
        optuna.study._optimize.get_heartbeat_thread = hang

    def run(point):
        key = f"x{point['x']}"
        trial = store.get(key)
        if trial and trial.status == "done":
            return key, trial.val_loss
        if not store.claim(key, "finetune", "t", key, point, search.worker, lease=2):
            return key, None
        with search.held(key):
            time.sleep(0.3)
        store.finish(key, search.worker, status="done", val_loss=float(point["x"]), checkpoint="/x")
        return key, float(point["x"])

    search.grid("g", {"x": [1, 2, 3]}, run, keys=lambda point: f"x{point['x']}")
    print("finished", flush=True)
"""


def check_a_trial_killed_before_its_first_heartbeat_is_taken_over(url, together: bool) -> None:
    """The first worker dies right after Optuna marks its trial RUNNING; another one (started after it, or
    running beside it) finishes the whole grid instead of waiting forever."""
    first = _start(GRID_WORKER, url, "hang")
    second = _start(GRID_WORKER, url, "normal") if together else None
    try:
        _kill_when(first, "asked")
        second = second or _start(GRID_WORKER, url, "normal")
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 0 and output.strip().endswith("finished"), output[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    done = Store(url).trials(status="done")
    assert sorted(t.key for t in done) == ["x1", "x2", "x3"] and all(t.attempts == 1 for t in done)


def test_a_trial_killed_before_its_first_heartbeat_is_taken_over(tmp_path):
    check_a_trial_killed_before_its_first_heartbeat_is_taken_over(f"sqlite:///{tmp_path / 'store.sqlite'}", False)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_live_trial_without_a_heartbeat_yet_is_left_alone(tmp_path):
    """Only a trial silent for the whole grace period is failed: one just marked RUNNING is not."""
    import optuna

    search = Search(Store(tmp_path / "store.sqlite"), heartbeat=1, grace=60, poll=0.1)
    study = search._study("s", optuna.samplers.RandomSampler())
    trial = study.ask()  # RUNNING, no heartbeat yet
    search._fail_silent_trials(study)
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING
    search.grace = 0
    search._fail_silent_trials(study)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]  # failed and re-queued


# ------------------------------------------------------------------ 6. temporary files of killed runs
def test_a_killed_teacher_cache_write_is_cleaned_by_the_next_run(tmp_path):
    from speedy.distill.cache import TeacherCache

    writer = _start(f"""
        import time, numpy as np
        from speedy.distill.cache import TeacherCache
        def compute():
            print("writing", flush=True)
            time.sleep(600)
            yield np.ones((1, 2))
        TeacherCache.load_or_build({str(tmp_path)!r}, "k", compute)
    """)
    _kill_when(writer, "writing")
    assert [p.name for p in tmp_path.glob(".tmp-*")]  # the kill left its temporary folder
    live = tmp_path / f".tmp-other@{socket.gethostname()}@{os.getpid()}@x"  # this live process's: being written
    live.mkdir()
    fresh, old = tmp_path / ".tmp-untagged-fresh", tmp_path / ".tmp-untagged-old"  # writers unknown
    fresh.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 3 * 24 * 3600,) * 2)
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: iter([np.ones((1, 2))]))
    assert len(cache) == 1
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == sorted([live.name, fresh.name])
    # a run that finds its cache done still cleans up
    live.rename(tmp_path / f".tmp-other@{socket.gethostname()}@{_dead_pid()}@x")
    TeacherCache.load_or_build(tmp_path, "k", lambda: iter([]))
    assert [p.name for p in tmp_path.glob(".tmp-*")] == [fresh.name]


def test_a_killed_onnx_export_is_cleaned_by_the_next_export(bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import speedy_model
    from speedy.bench.engines import load_engine
    from speedy.bench.export import export_onnx

    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    onnx = folder / "onnx"
    onnx.mkdir()
    dead = f"@{socket.gethostname()}@{_dead_pid()}@1"
    killed = [onnx / f"raw{dead}.tmp.onnx", onnx / f"int8{dead}.tmp.onnx", onnx / f"int8{dead}.tmp.onnx.data",
              onnx / "fused.123-456.tmp.onnx"]  # the last: an older speedy's name, an hour old
    live = onnx / f"raw@{socket.gethostname()}@{os.getpid()}@2.tmp.onnx"  # another export, under way
    for path in killed + [live]:
        path.write_bytes(b"half")
    os.utime(killed[-1], (time.time() - 2 * 3600,) * 2)
    export_onnx(load_engine(folder, "torch"), onnx)
    assert sorted(p.name for p in onnx.iterdir()) == sorted(["model.onnx", "model-int8.onnx", live.name])


def test_a_grid_point_the_store_no_longer_counts_done_is_run_again(tmp_path):
    """Optuna keeps a finished point COMPLETE; if its store trial is failed later (a lost model, a hand edit),
    the grid runs it again instead of waiting forever for a worker that will never come."""
    import threading

    store = Store(tmp_path / "store.sqlite")
    calls = []

    def run(point):
        key = f"x{point['x']}"
        calls.append(key)
        trial = store.get(key)
        if not (trial and trial.status == "done"):
            assert store.claim(key, "finetune", "t", key, point, "w")
            store.finish(key, "w", status="done", val_loss=float(point["x"]), val_metrics={}, checkpoint=None)
        return key, float(point["x"])

    def grid():
        Search(store, heartbeat=1, grace=60, poll=0.05).grid("g", {"x": [1, 2]}, run, lambda p: f"x{p['x']}")

    grid()
    assert sorted(calls) == ["x1", "x2"]
    store.update("x1", status="failed")
    calls.clear()
    worker = threading.Thread(target=grid, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()  # before the fix it waited forever
    assert "x1" in calls and store.get("x1").status == "done"


def test_a_resumed_run_stops_early_at_the_epoch_the_unkilled_run_would(bert_dir, tiny_files, tmp_path, monkeypatch):
    """With a learning rate of 0 the validation loss never improves after epoch 1, so patience 2 stops the run
    after epoch 3. A run killed while saving epoch 3 resumes from epoch 2 and must still stop after epoch 3: the
    count of epochs without progress (1 at epoch 2) is restored, not started again (which stopped it after 4)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer

    from speedy.config import DataSpec, TaskSpec
    from speedy.tasks import ClassificationTask, load_task_data
    from speedy.training import fit

    data = load_task_data(TaskSpec(name="tiny", data=DataSpec(**tiny_files), max_length=32), tmp_path / "cache",
                          tmp_path / "data")
    task = ClassificationTask(data.labels)

    def run(folder):
        model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(task.labels))
        return fit(model, AutoTokenizer.from_pretrained(bert_dir), task, data, folder, epochs=6, batch_size=16,
                   learning_rate=0.0, seed=0, max_length=32, patience=2)

    unkilled = run(tmp_path / "unkilled")
    assert unkilled["epochs_run"] == 3.0
    # every epoch's figures are kept; a loss that never improves keeps the first epoch's checkpoint
    assert [row["epoch"] for row in unkilled["history"]] == [1.0, 2.0, 3.0] and unkilled["best_epoch"] == 1.0
    original, saves = Trainer._save, []

    def killed_at_the_third(self, output_dir=None, *args, **kwargs):
        saves.append(output_dir)
        if len(saves) == 3:
            raise KeyboardInterrupt("killed while saving epoch 3")
        return original(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    monkeypatch.setattr(Trainer, "_save", original)
    resumed = run(tmp_path / "killed")
    assert resumed["epochs_run"] == 3.0
    # the epochs before the kill come back with the checkpoint's log (at lr 0 every epoch scores the same model)
    assert [row["epoch"] for row in resumed["history"]] == [1.0, 2.0, 3.0] and resumed["best_epoch"] == 1.0
    losses = [row["loss"] for row in resumed["history"]]
    assert losses == pytest.approx([losses[0]] * 3, abs=1e-6)


def test_best_epoch_is_the_first_best_in_the_metrics_direction():
    from speedy.training import best_epoch, epoch_history

    log = [{"loss": 2.0, "epoch": 1.0}, {"eval_loss": 1.5, "eval_f1": 0.4, "epoch": 1.0},
           {"eval_loss": 1.2, "eval_f1": 0.6, "epoch": 2.0}, {"eval_loss": 1.3, "eval_f1": 0.6, "epoch": 3.0},
           {"train_runtime": 9.0, "epoch": 3.0}]
    history = epoch_history(log, "f1")
    assert history == [{"epoch": 1.0, "loss": 1.5, "f1": 0.4}, {"epoch": 2.0, "loss": 1.2, "f1": 0.6},
                       {"epoch": 3.0, "loss": 1.3, "f1": 0.6}]
    assert best_epoch(history, "f1", greater_is_better=True) == 2.0  # the tie at epoch 3 is no improvement
    assert best_epoch(epoch_history(log, "loss"), "loss", greater_is_better=False) == 2.0
    assert best_epoch(history, "accuracy", greater_is_better=True) is None  # a metric the log never had
