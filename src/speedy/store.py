"""The experiment store: every trial, teacher selection and measurement of a study, in one database.

SQLite file by default (``sqlite:///path``, or a plain path); any SQLAlchemy URL (PostgreSQL for many machines)
works the same. Each trial is keyed by a hash of everything that determines its result, so a re-run skips
what is finished and a killed run redoes only the trial that was under way. Every write is one transaction.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from speedy.errors import SpeedyError

metadata = sa.MetaData()

trials = sa.Table(
    "trials", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),  # finetune | distill
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),  # a readable label: model and role
    sa.Column("params", sa.Text, nullable=False),  # JSON: everything the key hashes
    sa.Column("status", sa.String(16), nullable=False),  # running | done | failed
    sa.Column("val_loss", sa.Float),
    sa.Column("val_metrics", sa.Text),
    sa.Column("test_metrics", sa.Text),
    sa.Column("checkpoint", sa.Text),
    sa.Column("info", sa.Text),  # JSON: sizes, timings, anything else worth keeping
    sa.Column("seconds", sa.Float),
    sa.Column("updated", sa.Float),
)

selections = sa.Table(
    "selections", metadata,
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("trial_key", sa.String(64), nullable=False),
    sa.Column("updated", sa.Float),
)

measurements = sa.Table(
    "measurements", metadata,
    sa.Column("trial_key", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),  # e.g. speed-torch-cpu, size
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("updated", sa.Float),
)


def trial_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class Trial:
    key: str
    stage: str
    task: str
    name: str
    params: dict
    status: str
    val_loss: float | None = None
    val_metrics: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    checkpoint: str | None = None
    info: dict = field(default_factory=dict)
    seconds: float | None = None

    @classmethod
    def from_row(cls, row) -> "Trial":
        load = lambda text: json.loads(text) if text else {}  # noqa: E731
        return cls(row.key, row.stage, row.task, row.name, load(row.params), row.status, row.val_loss,
                   load(row.val_metrics), load(row.test_metrics), row.checkpoint, load(row.info), row.seconds)


class Store:
    def __init__(self, url: str | Path):
        url = str(url)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.url = url
        try:
            self.engine = sa.create_engine(url)
            metadata.create_all(self.engine)
        except Exception as error:  # noqa: BLE001 - any driver error means the same to the user
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SpeedyError(f"store: cannot open the experiment store at {url}: {first}") from None

    # ------------------------------------------------------------------ trials
    def get(self, key: str) -> Trial | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(trials).where(trials.c.key == key)).first()
        return Trial.from_row(row) if row else None

    def start(self, key: str, stage: str, task: str, name: str, params: dict) -> None:
        values = dict(stage=stage, task=task, name=name, params=json.dumps(params, sort_keys=True, default=str),
                      status="running", updated=time.time())
        with self.engine.begin() as conn:
            if conn.execute(sa.select(trials.c.key).where(trials.c.key == key)).first():
                conn.execute(trials.update().where(trials.c.key == key).values(**values))
            else:
                conn.execute(trials.insert().values(key=key, **values))

    def update(self, key: str, **fields) -> None:
        for name in ("val_metrics", "test_metrics", "info"):
            if name in fields and not isinstance(fields[name], str):
                fields[name] = json.dumps(fields[name], default=float)
        fields["updated"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(trials.update().where(trials.c.key == key).values(**fields))

    def trials(self, stage: str | None = None, task: str | None = None, status: str | None = "done") -> list[Trial]:
        query = sa.select(trials).order_by(trials.c.updated)
        if stage:
            query = query.where(trials.c.stage == stage)
        if task:
            query = query.where(trials.c.task == task)
        if status:
            query = query.where(trials.c.status == status)
        with self.engine.connect() as conn:
            return [Trial.from_row(row) for row in conn.execute(query)]

    # ------------------------------------------------------------------ selections
    def select(self, task: str, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(selections.delete().where(selections.c.task == task))
            conn.execute(selections.insert().values(task=task, trial_key=key, updated=time.time()))

    def selection(self, task: str) -> Trial | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(selections.c.trial_key).where(selections.c.task == task)).first()
        return self.get(row.trial_key) if row else None

    # ------------------------------------------------------------------ measurements
    def measure(self, key: str, kind: str, value: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(measurements.delete().where((measurements.c.trial_key == key) & (measurements.c.kind == kind)))
            conn.execute(measurements.insert().values(trial_key=key, kind=kind, value=json.dumps(value),
                                                      updated=time.time()))

    def measurement(self, key: str, kind: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(measurements.c.value).where(
                (measurements.c.trial_key == key) & (measurements.c.kind == kind))).first()
        return json.loads(row.value) if row else None
