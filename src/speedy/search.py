"""Search with Optuna, its studies kept in the experiment store's database, so many workers can share them.

- A grid (stage 1's batch x epochs x learning rate; stage 3's KD grid) is an Optuna study with a ``GridSampler``.
  Optuna gives each worker's trial its own grid point; a worker that dies stops sending heartbeats, its trial is
  failed after a grace period and retried (``RetryHeartbeatStaleTrialCallback``) by a live worker.
- The KD settings (loss, alpha, temperature) can be searched with ``TPESampler`` (``distill.search``).
- Each point's work is claimed in the store's ``trials`` table (one atomic transaction) before it runs and is
  skipped when it is done, so however workers race, a trial runs to completion exactly once; a claim whose
  heartbeat went stale (a killed worker) can be taken over. Heartbeats are judged by the database's clock.
- A worker killed after Optuna marked its trial RUNNING but before the trial's first heartbeat leaves a trial
  Optuna never finds stale; a live worker that sees it stay without a heartbeat for the grace period fails and
  re-queues it (``Search._fail_silent_trials``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from speedy.errors import SpeedyError

HEARTBEAT = float(os.environ.get("SPEEDY_HEARTBEAT", 5))  # seconds between heartbeats (Optuna's and the store's)
GRACE = float(os.environ.get("SPEEDY_GRACE", 20))  # a worker silent this long is dead: its trial is retried

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna marks its heartbeats "experimental"; they are what lets a live worker take over a dead one's trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def distributed() -> bool:
    """Under ``accelerate launch`` with several processes, every rank must train the same trial together."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def worker_id() -> str:
    """Who holds a trial in the store: ``host:pid``, or for ``accelerate launch`` ``launch-ADDRESS:PORT`` (all the
    ranks of one launch are one worker).

    ``SPEEDY_WORKER_ID`` (optional, any text, e.g. ``gpu0``) is a label put in front (``gpu0@host:pid``) to tell
    workers apart in the store; it never replaces the machine and process, so two workers given the same label
    are still two workers, and the store records every claim's host and pid in their own columns besides.
    """
    label = os.environ.get("SPEEDY_WORKER_ID", "").strip()
    prefix = f"{label}@" if label else ""
    if distributed():  # one worker made of all the ranks of one launch (a loopback address: this machine's)
        address = os.environ.get("MASTER_ADDR", "localhost")
        if address in ("127.0.0.1", "localhost", "::1"):
            address = socket.gethostname()
        return f"{prefix}launch-{address}:{os.environ.get('MASTER_PORT', '0')}"
    return f"{prefix}{socket.gethostname()}:{os.getpid()}"


class Search:
    def __init__(self, store, heartbeat: float = HEARTBEAT, grace: float = GRACE, poll: float = 2.0):
        self.store = store
        self.worker = worker_id()
        self.heartbeat, self.grace, self.poll = heartbeat, grace, poll
        self._silent: dict[int, float] = {}  # RUNNING Optuna trials seen without a heartbeat: since when (ours)
        with store.schema_lock():  # Optuna creates its tables on first use: one worker at a time
            self.storage = RDBStorage(store.url, heartbeat_interval=int(max(1, heartbeat)),
                                      grace_period=int(grace),
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=5),
                                      engine_kwargs={"pool_pre_ping": True})

    def _study(self, name: str, sampler, direction: str = "minimize") -> optuna.Study:
        return optuna.create_study(study_name=name, storage=self.storage, sampler=sampler, direction=direction,
                                   load_if_exists=True)

    def grid(self, name: str, space: dict[str, list], run: Callable[[dict], tuple[str, float | None]],
             keys: Callable[[dict], str], direction: str = "minimize") -> None:
        """Run every point of ``space`` once across all workers; return when every point's trial is done.

        ``run(params)`` does (or skips, if done) the point's work and returns ``(trial key, value)``;
        ``keys(params)`` gives a point's trial key without running anything.
        """
        points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
        wanted = {keys(p) for p in points}
        # The study is named by what its trials are (their keys hash data, model, teacher, settings): a changed
        # config is a new study, never an old, finished one that would have nothing left to hand out.
        name = f"{name}/{hashlib.sha256(''.join(sorted(wanted)).encode()).hexdigest()[:12]}"
        study = self._study(name, optuna.samplers.GridSampler(space, seed=0), direction)

        def objective(trial: optuna.Trial) -> float:
            params = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
            key, value = run(params)
            while value is None:  # another worker holds it: wait until it is done, or until its holder is dead
                time.sleep(self.poll)
                key, value = run(params)
            trial.set_user_attr("trial_key", key)
            return value

        finished = {t.key for t in self.store.trials(status="done")}
        for point in points:  # what is done already is only reported, never run again
            if keys(point) in finished:
                run(point)
        if distributed():  # the ranks of one launch go through the grid in the same order, together
            for point in points:
                run(point)
            return
        while True:
            done = {t.key for t in self.store.trials(status="done") if t.key in wanted}
            if done >= wanted:
                return
            self._fail_silent_trials(study)
            if self._has_work(study, space):
                study.optimize(objective, n_trials=1, catch=())
            else:  # the rest runs elsewhere: wait, and let Optuna fail and re-queue the trials of dead workers
                self._run_orphans(points, keys, run, done)
                optuna.storages.fail_stale_trials(study)
                time.sleep(self.poll)

    def _run_orphans(self, points: list[dict], keys: Callable[[dict], str],
                     run: Callable[[dict], tuple[str, float | None]], done: set[str]) -> None:
        """Run the points Optuna counts as handed out but whose trial the store has neither done nor running
        (failed after it finished, or lost): no worker would ever take them, and the grid would wait forever."""
        for point in points:
            key = keys(point)
            trial = self.store.get(key)
            if key not in done and (trial is None or trial.status != "running"):
                run(point)

    def _fail_silent_trials(self, study: optuna.Study) -> None:
        """Fail and re-queue the RUNNING trials that have had no heartbeat at all for ``grace`` seconds.

        Optuna judges a trial stale by its last heartbeat, so a worker killed between marking a trial RUNNING
        and its first heartbeat leaves a trial that is never failed: its grid point would be waited for forever.
        Time is this process's own clock, from when it first saw the trial without a heartbeat (no clocks of two
        machines are compared); a live worker's first heartbeat follows its RUNNING mark within milliseconds.
        """
        running = [t._trial_id for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        silent = set()
        if running:
            with self.store.engine.connect() as conn:  # Optuna's own table of heartbeats, in the same database
                beating = {row[0] for row in conn.execute(
                    sa.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids")
                    .bindparams(sa.bindparam("ids", expanding=True)), {"ids": running})}
            silent = set(running) - beating
        now = time.monotonic()
        self._silent = {trial_id: self._silent.get(trial_id, now) for trial_id in silent}
        callback = self.storage.get_heartbeat_stale_trial_callback()
        for trial_id, since in list(self._silent.items()):
            if now - since < self.grace:
                continue
            del self._silent[trial_id]
            try:
                failed = self.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # finished, or failed by another worker first
                continue
            if failed and callback is not None:  # re-queued exactly as Optuna re-queues a stale trial
                callback(study, self.storage.get_trial(trial_id))

    @staticmethod
    def _has_work(study: optuna.Study, space: dict[str, list]) -> bool:
        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        if any(t.state == states.WAITING for t in trials):
            return True
        taken = {t.system_attrs.get("grid_id") for t in trials
                 if t.state in (states.RUNNING, states.COMPLETE, states.PRUNED)}
        return len(taken - {None}) < len(list(itertools.product(*space.values())))

    def tpe(self, name: str, n_trials: int, suggest: Callable[[optuna.Trial], dict],
            run: Callable[[dict], tuple[str, float | None]], direction: str = "maximize") -> optuna.Study:
        """Up to ``n_trials`` finished trials in total over all workers, sampled by TPE."""
        if distributed():
            raise SpeedyError("distill.search_trials: the TPE search runs one trial per process; with accelerate "
                              "launch use the KD grid, or start one 'speedy worker' per GPU")
        study = self._study(name, optuna.samplers.TPESampler(seed=0), direction)

        def objective(trial: optuna.Trial) -> float:
            params = suggest(trial)
            key, value = run(params)
            while value is None:
                time.sleep(self.poll)
                key, value = run(params)
            trial.set_user_attr("trial_key", key)
            return value

        states = optuna.trial.TrialState
        while len([t for t in study.get_trials(deepcopy=False) if t.state == states.COMPLETE]) < n_trials:
            self._fail_silent_trials(study)
            study.optimize(objective, n_trials=1, catch=())
        return study

    def held(self, key: str):
        """A context that keeps the store's heartbeat of ``key`` fresh while its work runs."""
        return _Heartbeat(self.store, key, self.worker, self.heartbeat)


class _Heartbeat:
    def __init__(self, store, key: str, worker: str, every: float):
        self.store, self.key, self.worker, self.every = store, key, worker, every
        self.stop = threading.Event()

    def __enter__(self):
        def beat():
            while not self.stop.wait(self.every):
                try:
                    self.store.beat(self.key, self.worker)
                except Exception:  # noqa: BLE001 - a missed beat is retried; it must not kill the training
                    pass

        self.thread = threading.Thread(target=beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(timeout=5)


def claimable_now(trial, worker: str) -> bool:
    """A running trial whose worker was a process of this machine that no longer exists can be taken at once
    (no need to wait for its heartbeat to go stale): a run killed here and started again resumes immediately.

    The holder's machine and process are the store's ``host`` and ``pid`` columns, never parsed from its worker
    id (which may be any label); a claim that names no process is not taken early: its heartbeat decides."""
    if trial is None or trial.status != "running":
        return False
    holder = getattr(trial, "worker", None)
    if not holder:
        return True  # written by a speedy without workers
    if holder == worker:
        return True
    host, pid = getattr(trial, "host", None), getattr(trial, "pid", None)
    if host is None or pid is None:  # claimed by a speedy that kept them only in its worker id, "host:pid"
        host, _, digits = holder.rpartition(":")
        pid = int(digits) if digits.isdigit() else None
    if host != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
