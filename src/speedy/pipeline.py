"""A study: its config, experiment store, data and search, and the one way a trial is run and recorded.

The stages themselves live in :mod:`speedy.stages` (one module each); :meth:`Study.run` runs them in order. Every
stage reads the previous stages' results from the store and writes its own, and finished trials are skipped, so
any stage can run alone and a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console

from speedy.config import StudyConfig, TaskSpec
from speedy.data.load import TaskData
from speedy.data.transfer import read_transfer_lines
from speedy.distill.cache import fingerprint_inputs
from speedy.models.offline import default_cache_dir
from speedy.models.registry import check_name
from speedy.search import GRACE, Search, claimable_now
from speedy.selection import models_to_report, speed_kind
from speedy.stages import STAGES
from speedy.store import Store, Trial
from speedy.tasks import load_task_data, make_task
from speedy.tasks.base import Task
from speedy.trials import TrialSpec


class Study:
    """What every stage works with: ``config``, ``store``, ``data(task)``, ``task(task)``, ``search`` and
    :meth:`run_trial`. Opening it checks the model names; the store is opened on first use, after the data."""

    def __init__(self, config: StudyConfig, console: Console | None = None):
        self.config = config
        self.console = console or Console()
        self.output_dir = Path(config.output_dir)
        self.cache_dir = default_cache_dir()
        for section in ("teachers", "students"):
            for i, spec in enumerate(getattr(config, section)):
                if spec.init != "teacher":  # a student made of the teacher's layers has no base of its own
                    check_name(spec.base or spec.name, f"{section}[{i}].base")
        self._store: Store | None = None
        self._search: Search | None = None
        self._data: dict[str, TaskData] = {}
        self._fingerprints: dict[str, str] = {}
        self._transfer: dict[str, list] = {}
        if "://" in config.store_url and not config.store_url.startswith("sqlite"):
            self.store  # a database server that cannot be reached is a config error: say so before any work

    @property
    def store(self) -> Store:
        """The experiment store, opened (and for SQLite, created) on first use: after the data is checked."""
        if self._store is None:
            self._store = Store(self.config.store_url, root=self.output_dir)
        return self._store

    @property
    def search(self) -> Search:
        """Optuna studies in the store's database (see ``speedy.search``), made on first use."""
        if self._search is None:
            self._search = Search(self.store)
        return self._search

    def data(self, spec: TaskSpec) -> TaskData:
        if spec.name not in self._data:
            self._data[spec.name] = load_task_data(spec, self.cache_dir, self.output_dir / "data")
        return self._data[spec.name]

    def task(self, spec: TaskSpec) -> Task:
        task = make_task(spec.type, self.data(spec).labels, spec)
        task.prepare(self.data(spec).splits["train"])
        return task

    def data_fingerprint(self, spec: TaskSpec) -> str:
        if spec.name not in self._fingerprints:  # hashed once: every trial key of the task needs it
            data = self.data(spec)
            parts = [(name, split.to_dict()) for name, split in sorted(data.splits.items())]
            if self.transfer_lines(spec):  # left out when absent: the keys of studies without transfer text stay
                # A file the data source made (the demo's verses) is named without its folder, so the keys do not
                # depend on where the study lives; the user's files keep their paths (the keys of older studies).
                given = {str(Path(file)) for file in spec.transfer_files}  # as read_transfer_lines names them
                parts.append(("transfer", [(file if file in given else Path(file).name, line, text)
                                           for file, line, text in self.transfer_lines(spec)]))
            self._fingerprints[spec.name] = fingerprint_inputs(parts)[:16]
        return self._fingerprints[spec.name]

    def transfer_lines(self, spec: TaskSpec) -> list[tuple[str, int, str]]:
        """The task's unlabelled transfer text, ``(file, line, text)`` (read once): its ``transfer_files`` and what
        its data source provides (the demo's ``data.transfer`` verses)."""
        if spec.name not in self._transfer:
            files = list(spec.transfer_files) + self.data(spec).transfer_files
            self._transfer[spec.name] = read_transfer_lines(files) if files else []
        return self._transfer[spec.name]

    def corpus(self, spec: TaskSpec) -> list[str]:
        """The texts a pruned vocabulary keeps: training and validation text, and the transfer text."""
        return self.data(spec).texts() + [text for _, _, text in self.transfer_lines(spec)]

    def trial_dir(self, key: str) -> Path:
        return self.output_dir / "trials" / key

    def models_to_report(self, task: TaskSpec) -> list[Trial]:
        return models_to_report(self.store, self.config, task)

    def speed_kind(self, engine: str = "torch") -> str:
        return speed_kind(self.config.speed, engine)

    def run_trial(self, spec: TrialSpec, work: Callable[[Path], dict],
                  teacher_key: str | None = None) -> tuple[str, Trial | None]:
        """Run ``work(output_dir)`` for ``spec`` unless the store has it done, and record its result. The trial is
        None when another live worker holds it (that worker records the result)."""
        params = spec.params(self.data_fingerprint(spec.task), teacher_key)
        key = spec.key(self.data_fingerprint(spec.task), teacher_key)
        if not self._claim(key, spec, params):
            return key, (self.store.get(key) if self._done(key) else None)
        self.console.print(f"  [bold]{spec.stage}[/bold] {spec.name} [dim](trial {key})[/dim]")
        start = time.time()
        try:
            with self.search.held(key):
                result = work(self.trial_dir(key))
        except BaseException:
            self.store.finish(key, self.search.worker, status="failed")
            raise
        if not self.store.finish(key, self.search.worker, status="done", val_loss=result["val_loss"],
                                 val_metrics=result["val_metrics"], checkpoint=result["checkpoint"],
                                 info=result.get("info", {}), seconds=time.time() - start):
            self.console.print(f"  [yellow]{spec.name}: another worker took this trial over; its record stands"
                               "[/yellow]")
        return key, self.store.get(key)

    def _done(self, key: str) -> bool:
        trial = self.store.get(key)
        return bool(trial and trial.status == "done" and trial.checkpoint and Path(trial.checkpoint).is_dir())

    def _claim(self, key: str, spec: TrialSpec, params: dict) -> bool:
        """Whether this worker is to run the trial now: False when it is done (its model is on disk) or held by
        another live worker."""
        trial = self.store.get(key)
        if self._done(key):
            self.console.print(f"  [dim]skip {spec.name}: done earlier (trial {key})[/dim]")
            return False
        if trial and trial.status == "done":  # its model folder is gone: train it again
            self.console.print(f"  [yellow]{spec.name}: done earlier but {trial.checkpoint} is missing: again"
                               "[/yellow]")
            self.store.update(key, status="failed", checkpoint=None)
            trial = self.store.get(key)
        lease = 0.0 if claimable_now(trial, self.search.worker) else GRACE
        if not self.store.claim(key, spec.stage, spec.task.name, spec.name, params, self.search.worker, lease):
            self.console.print(f"  [dim]{spec.name}: under way in another worker (trial {key})[/dim]")
            return False
        return True

    def run(self, stages: Iterable[str] = tuple(STAGES)) -> None:
        for task in self.config.tasks:  # bad data stops the run before anything is created
            self.data(task)
            self.transfer_lines(task)
        for stage in stages:
            STAGES[stage](self)
