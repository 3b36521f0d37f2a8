"""The experiment store: every trial, teacher selection and measurement of a study, in one database.

SQLite file by default (``sqlite:///path``, or a plain path); any SQLAlchemy URL (PostgreSQL for many machines)
works the same. Each trial is keyed by a hash of everything that determines its result, so a re-run skips
what is finished and a killed run redoes only the trial that was under way. Every write is one transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from speedy.errors import SpeedyError

metadata = sa.MetaData()

# Prefixed: Optuna keeps its own studies in the same database, and it has a table named "trials" too.
trials = sa.Table(
    "speedy_trials", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),  # finetune | distill
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),  # a readable label: model and role
    sa.Column("params", sa.Text, nullable=False),  # JSON: everything the key hashes
    sa.Column("status", sa.String(16), nullable=False),  # running | done | failed
    sa.Column("val_loss", sa.Float),
    sa.Column("val_metrics", sa.Text),
    sa.Column("test_metrics", sa.Text),
    sa.Column("checkpoint", sa.Text),  # relative to the study's output_dir (see Store.root); absolute if elsewhere
    sa.Column("info", sa.Text),  # JSON: sizes, timings, anything else worth keeping
    sa.Column("seconds", sa.Float),
    sa.Column("updated", sa.Float),
    sa.Column("worker", sa.String(128)),  # who runs it (speedy.search.worker_id), while it runs
    sa.Column("host", sa.String(255)),  # the machine and process of the worker that claimed it, whatever its id
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat", sa.Float),  # by the database's clock, refreshed while it runs: stale = its worker died
    sa.Column("attempts", sa.Integer),  # how many times it was started
)

selections = sa.Table(
    "speedy_selections", metadata,
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("trial_key", sa.String(64), nullable=False),
    sa.Column("updated", sa.Float),
)

measurements = sa.Table(
    "speedy_measurements", metadata,
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
    worker: str | None = None
    attempts: int | None = None
    host: str | None = None
    pid: int | None = None

    @classmethod
    def from_row(cls, row, root: Path | None = None) -> "Trial":
        load = lambda text: json.loads(text) if text else {}  # noqa: E731
        checkpoint = row.checkpoint
        if checkpoint and root is not None and not Path(checkpoint).is_absolute():
            checkpoint = str(Path(root) / checkpoint)
        return cls(row.key, row.stage, row.task, row.name, load(row.params), row.status, row.val_loss,
                   load(row.val_metrics), load(row.test_metrics), checkpoint, load(row.info), row.seconds,
                   row.worker, row.attempts, row.host, row.pid)


class Store:
    """``root`` is the study's ``output_dir``: checkpoints under it are stored relative to it and read back under
    the reader's ``root``, so machines that mount the shared output folder at different paths all find them.
    Without ``root``, a SQLite file's own folder is used (the default layout is ``<output_dir>/store.sqlite``)."""

    def __init__(self, url: str | Path, root: str | Path | None = None):
        url = str(url)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.url = url
        try:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
            database = self.engine.url.database
            if root is None and self.engine.dialect.name == "sqlite" and database and database != ":memory:":
                root = Path(database).parent
            self.root = Path(root) if root is not None else None
            with self.schema_lock():
                self._rename_old_tables()
                metadata.create_all(self.engine)
                self._add_new_columns()
        except Exception as error:  # noqa: BLE001 - any driver error means the same to the user
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SpeedyError(f"store: cannot open the experiment store at {url}: {first}") from None

    @contextmanager
    def schema_lock(self):
        """Held while tables are created: workers starting together on one PostgreSQL database would otherwise
        race to create the same tables (an advisory lock; SQLite serialises writers by itself)."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(727272)"))
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(727272)"))
                conn.commit()

    def _rename_old_tables(self) -> None:
        """A store written before the tables had their prefix keeps its results under the new names."""
        inspector = sa.inspect(self.engine)
        names = set(inspector.get_table_names())
        with self.engine.begin() as conn:
            for old in ("trials", "selections", "measurements"):
                mine = old != "trials" or "key" in {c["name"] for c in inspector.get_columns("trials")} \
                    if old in names else False
                if mine and f"speedy_{old}" not in names:
                    conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO speedy_{old}"))

    def _add_new_columns(self) -> None:
        """A store written by an older speedy gains the columns added since (nothing else changes)."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns("speedy_trials")}
        with self.engine.begin() as conn:
            for column in trials.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.execute(sa.text(f"ALTER TABLE speedy_trials ADD COLUMN {column.name} {kind}"))

    def now(self):
        """The database server's clock (seconds since the epoch), as an SQL expression. Every heartbeat is written
        and judged by this one clock: machines whose clocks disagree cannot make a live trial look stale, nor a
        dead one look live."""
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return sa.cast(sa.extract("epoch", sa.func.now()), sa.Float)
        if dialect == "sqlite":  # the database is a local file: "its" clock is this machine's
            return (sa.func.julianday("now") - 2440587.5) * 86400.0
        if dialect in ("mysql", "mariadb"):
            return sa.cast(sa.func.unix_timestamp(sa.func.now(6)), sa.Float)
        return sa.cast(sa.extract("epoch", sa.func.current_timestamp()), sa.Float)

    def _stored_checkpoint(self, path):
        """A checkpoint under ``root`` is stored relative to it (see the class)."""
        if not path or self.root is None:
            return path
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:  # elsewhere: kept as given
            return str(path)

    # ------------------------------------------------------------------ trials
    def claim(self, key: str, stage: str, task: str, name: str, params: dict, worker: str,
              lease: float = 120.0) -> bool:
        """Take trial ``key`` for ``worker``, atomically: True if it is new, failed, or running under a worker
        whose heartbeat is older than ``lease`` seconds (dead); False if done or running elsewhere.

        The claiming process's host and pid are recorded beside ``worker`` (whatever form its id takes), so a
        later run on the same machine can tell whether that process still exists."""
        now = self.now()
        values = dict(stage=stage, task=task, name=name, params=json.dumps(params, sort_keys=True, default=str),
                      status="running", updated=time.time(), worker=worker, heartbeat=now,
                      host=socket.gethostname(), pid=os.getpid())
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():  # a savepoint: PostgreSQL aborts the transaction on a failed insert
                    conn.execute(trials.insert().values(key=key, attempts=1, **values))
                return True
            except sa.exc.IntegrityError:
                pass
            taken = conn.execute(trials.update().where(
                (trials.c.key == key) & ((trials.c.status != "done") | (trials.c.checkpoint.is_(None))) &
                ((trials.c.status == "failed") | (trials.c.worker == worker) | (trials.c.heartbeat.is_(None)) |
                 (trials.c.heartbeat < now - lease))
            ).values(attempts=sa.func.coalesce(trials.c.attempts, 0) + 1, **values))
            return taken.rowcount == 1

    def finish(self, key: str, worker: str, **fields) -> bool:
        """Record a trial's end, only if ``worker`` still holds it (a worker whose claim was taken over after
        its heartbeat lapsed must not overwrite the new holder's record). False if it no longer holds it."""
        for name in ("val_metrics", "test_metrics", "info"):
            if name in fields and not isinstance(fields[name], str):
                fields[name] = json.dumps(fields[name], default=float)
        if "checkpoint" in fields:
            fields["checkpoint"] = self._stored_checkpoint(fields["checkpoint"])
        fields["updated"] = time.time()
        with self.engine.begin() as conn:
            done = conn.execute(trials.update().where((trials.c.key == key) & (trials.c.worker == worker))
                                .values(**fields))
        return done.rowcount == 1

    def beat(self, key: str, worker: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(trials.update().where((trials.c.key == key) & (trials.c.worker == worker))
                         .values(heartbeat=self.now()))

    def get(self, key: str) -> Trial | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(trials).where(trials.c.key == key)).first()
        return Trial.from_row(row, self.root) if row else None

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
        if "checkpoint" in fields:
            fields["checkpoint"] = self._stored_checkpoint(fields["checkpoint"])
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
            return [Trial.from_row(row, self.root) for row in conn.execute(query)]

    # ------------------------------------------------------------------ selections
    def _replace(self, table, match, values: dict) -> None:
        """Delete-and-insert in one transaction; if another worker inserted the same row meanwhile, theirs stays
        (they computed the same thing)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(table.delete().where(match))
                conn.execute(table.insert().values(**values))
        except sa.exc.IntegrityError:
            pass

    def select(self, task: str, key: str) -> None:
        self._replace(selections, selections.c.task == task, dict(task=task, trial_key=key, updated=time.time()))

    def selection(self, task: str) -> Trial | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(selections.c.trial_key).where(selections.c.task == task)).first()
        return self.get(row.trial_key) if row else None

    # ------------------------------------------------------------------ measurements
    def measure(self, key: str, kind: str, value: dict) -> None:
        self._replace(measurements, (measurements.c.trial_key == key) & (measurements.c.kind == kind),
                      dict(trial_key=key, kind=kind, value=json.dumps(value), updated=time.time()))

    def measurement(self, key: str, kind: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(measurements.c.value).where(
                (measurements.c.trial_key == key) & (measurements.c.kind == kind))).first()
        return json.loads(row.value) if row else None
