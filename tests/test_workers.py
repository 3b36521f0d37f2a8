"""Two `speedy worker` processes share one study in a real PostgreSQL server: no trial runs twice, and the trial
of a worker killed mid-trial (or killed before its trial's first heartbeat) is finished by the other; heartbeats
are judged by the server's clock.

The set-up starts Debian's PostgreSQL (``postgresql`` package: ``initdb``/``pg_ctl``) on a free local port in a
temporary folder, as the ``postgres`` user when the tests run as root. Without PostgreSQL the test is skipped,
unless ``SPEEDY_REQUIRE_POSTGRES=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import free_port, make_examples, write_tsv
from test_resume import check_a_trial_killed_before_its_first_heartbeat_is_taken_over, \
    check_heartbeats_ignore_the_workers_clocks


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[::-1]), None)
    return found



@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        psycopg = None
    if not initdb or not pg_ctl or psycopg is None:
        missing = "the psycopg driver (pip install -e '.[postgres]')" if psycopg is None else \
            "PostgreSQL's initdb and pg_ctl (apt-get install postgresql)"
        if os.environ.get("SPEEDY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"the two-worker test needs {missing}")
        pytest.skip(f"needs {missing}")
    # not under pytest's folder: that one is private to root, and the server runs as the postgres user
    folder = Path(tempfile.mkdtemp(prefix="speedy-postgres-"))
    data = folder / "data"
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-U", "speedy", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                              f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={port} user=speedy dbname=postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE study")
    yield f"postgresql+psycopg://speedy@127.0.0.1:{port}/study"
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def _database(postgres: str, name: str) -> str:
    """A new, empty database on the test's server (each test gets its own)."""
    import psycopg

    with psycopg.connect(postgres.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.rsplit("/", 1)[0] + f"/{name}"


def test_heartbeats_are_judged_by_the_servers_clock(postgres, monkeypatch):
    check_heartbeats_ignore_the_workers_clocks(_database(postgres, "clocks"), monkeypatch)


def test_a_workers_trial_killed_before_its_first_heartbeat_is_finished_by_the_other(postgres):
    check_a_trial_killed_before_its_first_heartbeat_is_taken_over(_database(postgres, "silent"), together=True)


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_finished_once(postgres, tmp_path, bert_dir):
    from speedy.store import Store

    files = {"train": write_tsv(tmp_path / "train.tsv", make_examples(320, seed=2)),
             "validation": write_tsv(tmp_path / "validation.tsv", make_examples(32, seed=3)),
             "test": write_tsv(tmp_path / "test.tsv", make_examples(32, seed=4))}
    config = {"name": "shared", "output_dir": str(tmp_path / "out"), "seed": 1,
              "tasks": [{"name": "tiny", "max_length": 32, "data": files}],
              "teachers": [{"name": "bert", "base": str(bert_dir)}],
              "grid": {"batch_size": [8, 16], "epochs": [2], "learning_rate": [1e-3, 2e-3, 3e-3]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config), "utf-8")
    # both workers carry the same label: they must still be told apart (by host and process)
    env = {**os.environ, "SPEEDY_HEARTBEAT": "1", "SPEEDY_GRACE": "4", "PYTHONUNBUFFERED": "1",
           "SPEEDY_WORKER_ID": "gpu0"}
    command = [sys.executable, "-m", "speedy", "worker", str(tmp_path / "study.yaml"), "--store", postgres,
               "--stages", "finetune"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = Store(postgres, root=tmp_path / "out")
    killed_key = None
    deadline = time.time() + 300
    try:
        while killed_key is None and time.time() < deadline:  # kill the first worker in the middle of a trial
            for trial in store.trials(status="running"):
                if trial.pid == first.pid:
                    first.send_signal(signal.SIGKILL)
                    killed_key = trial.key
                    break
            time.sleep(0.05)
        assert killed_key is not None, "the first worker never started a trial"
        first.wait(timeout=30)
        output, _ = second.communicate(timeout=600)
        assert second.returncode == 0, output[-3000:]
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()

    trials = store.trials(status=None)
    assert len(trials) == 6 and all(t.status == "done" for t in trials)  # none lost
    by_key = {t.key: t for t in trials}
    assert by_key[killed_key].attempts == 2  # started by the killed worker, finished by the other
    assert by_key[killed_key].pid == second.pid and by_key[killed_key].worker.startswith("gpu0@")
    assert all(t.attempts == 1 for k, t in by_key.items() if k != killed_key)  # nothing else ran twice
    assert sorted((t.params["batch_size"], t.params["learning_rate"]) for t in trials) == \
        sorted((b, r) for b in (8, 16) for r in (1e-3, 2e-3, 3e-3))
    assert all(os.path.isdir(t.checkpoint) for t in trials)
