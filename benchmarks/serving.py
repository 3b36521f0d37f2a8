"""Load benchmark: ``speedy serve`` on loopback, teacher against student, ONNX Runtime int8 against PyTorch.

For each (model, engine) it starts ``speedy serve`` on 127.0.0.1, waits for /health, sends a bounded number of
requests of one real Spanish sentence each from ``--concurrency`` clients at once (each client sends its next
request when the previous one is answered), and prints requests per second and p50/p95/p99 latency, then stops
the server with SIGTERM. It stops by itself and talks only to 127.0.0.1.

Models come from a finished study (the selected teacher and one KD student of its first task: ``--study`` a
study folder with its ``study.yaml``, or ``--config`` a study YAML); sentences from CoNLL-2002 ``esp.testa`` in
``../shared/data`` (read there, never copied). Beside each served figure it measures the engine itself, in
process, on the same sentences in batches of ``--concurrency`` (the most a server can gather from that many
clients): served / engine is what HTTP, JSON, tokenisation and batching cost. ONNX engines are served by the
torch-free runtime (``speedy.runtime``). With ``--lean-venv DIR`` it builds (once) a virtual environment with
``pip install 'speedy[serve]'`` only, prints its size and the cold start of the int8 student (process start to the
first answer), and serves the int8 student from it. Targets (same concurrency): the int8 student serves >= 10x
the requests per second of the teacher in PyTorch fp32, with p95 under 50 ms, and >= 0.8 of its engine's batched
throughput. Example::

    python benchmarks/serving.py --config runs/bench-recipes/configs/transfer-4L-s1.yaml --requests 400 \
        --lean-venv /tmp/speedy-serve

Client and server share this machine's cores, so the figures include the client's own cost. The servers batch at
most half the clients (``--max-batch``, default ``--concurrency`` / 2): clients that each wait for their answer
send in step, and a cap of half lets one half's batch run while the event loop answers the other half (8 clients,
int8 2-layer student: 441-536 requests/s in 3 runs at a cap of 4, 432-453 in 2 runs at 32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import REPO

ROUTES = {"classification": "/classify", "tagging": "/tag", "qa": "/answer"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, engine: str, port: int, threads: int, max_batch: int, max_wait_ms: float,
                 speedy: list[str] | None = None):
    command = [*(speedy or [sys.executable, "-m", "speedy"]), "serve", model_dir, "--engine", engine, "--port", str(port),
               "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--max-chars", "5000"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": "" if speedy else str(REPO / "src")})
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server stopped: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                return server, json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /health within 300 s")


async def load(port: int, route: str, sentences: list[str], requests: int, concurrency: int, warmup: int) -> dict:
    """Each of ``concurrency`` clients keeps one HTTP/1.1 connection open and sends its next request when the
    previous one is answered. A plain asyncio client: it shares the CPU with the server, so it must be light."""
    latencies, failures = [], 0
    counter = iter(range(requests + warmup))

    async def client():
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                body = json.dumps({"inputs": [{"text": sentences[i % len(sentences)]}]}).encode()
                start = time.perf_counter()
                writer.write(f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                await reader.readexactly(length)
                elapsed = time.perf_counter() - start
                if head.split(b" ", 2)[1] != b"200":
                    failures += 1
                elif i >= warmup:
                    latencies.append(elapsed)
        finally:
            writer.close()

    first = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    wall = time.perf_counter() - first
    ms = 1000 * np.asarray(latencies)
    return {"requests": len(latencies), "failures": failures, "seconds": wall,
            "requests_per_second": len(latencies) / wall if wall else 0.0,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def engine_throughput(model_dir: str, engine: str, sentences: list[str], batch: int, threads: int,
                      seconds: float = 10.0) -> float:
    """Sentences per second of the engine alone, in process, in batches of ``batch`` (what serving adds nothing to)."""
    from speedy.predictor import open_predictor

    predictor = open_predictor(model_dir, engine, threads)
    items = [predictor.task.input_item({"text": s}) for s in sentences]
    predictor.run_each(items[:batch])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [items[(done + i) % len(items)] for i in range(batch)]
        predictor.run_each(chunk)
        done += batch
    return done / (time.perf_counter() - start)


def lean_environment(folder: Path) -> tuple[list[str], float]:
    """A virtual environment with ``speedy[serve]`` only (built once, from constraints.txt): its ``speedy`` command
    and its size in MB."""
    speedy = folder / "bin" / "speedy"
    if not speedy.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-c", str(REPO / "constraints.txt"), f"{REPO}[serve]"], check=True)
    size = sum(p.stat().st_size for p in (folder / "lib").rglob("*") if p.is_file()) / 1e6
    tools = sum(p.stat().st_size for name in ("pip", "setuptools") for p in
                next((folder / "lib").glob("python3*/site-packages")).glob(f"{name}*/**/*") if p.is_file()) / 1e6
    return [str(speedy)], size - tools


def cold_start(speedy: list[str], model_dir: str, route: str, text: str, threads: int) -> float:
    """Seconds from starting ``speedy serve`` to its first answer."""
    port = free_port()
    body = json.dumps({"inputs": [{"text": text}]}).encode()
    start = time.perf_counter()
    server = subprocess.Popen([*speedy, "serve", model_dir, "--port", str(port), "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ""})
    try:
        while time.perf_counter() - start < 60:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", body,
                                                 {"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                return time.perf_counter() - start
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("no answer within 60 s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="/tmp/bench/tagging/ner")
    parser.add_argument("--config", default=None, help="a study YAML (instead of --study)")
    parser.add_argument("--lean-venv", default=None, help="serve the int8 student from a speedy[serve]-only venv")
    parser.add_argument("--student", default=None, help="a KD student's name (default: the smallest)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--requests", type=int, default=400, help="timed requests per configuration")
    parser.add_argument("--teacher-requests", type=int, default=None, help="default: --requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=None,
                        help="the servers' --max-batch (default: half of --concurrency, so that one half's batch "
                             "runs while the event loop answers the other half)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="JSON results (default: <study>/serving.json)")
    args = parser.parse_args()
    args.max_batch = args.max_batch or max(1, args.concurrency // 2)

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from speedy.bench.cpu import cpu_description
    from speedy.bench.engines import get_engine
    from speedy.configfile import load_config
    from speedy.console import quiet_libraries
    from speedy.data.readers import read_conll
    from speedy.pipeline import Study

    quiet_libraries()
    console = Console(width=150)
    study = Study(load_config(Path(args.config) if args.config else Path(args.study) / "study.yaml"), console)
    task_spec = study.config.tasks[0]
    teacher = study.store.selection(task_spec.name)
    students = sorted((t for t in study.store.trials("distill", task_spec.name) if t.params.get("mode") == "kd" and
                       t.status == "done" and t.checkpoint and Path(t.checkpoint).is_dir()),
                      key=lambda t: AutoConfig.from_pretrained(t.checkpoint).num_hidden_layers)
    student = next(t for t in students if args.student in (None, t.params["model"]["name"]))
    route = ROUTES[study.task(task_spec).type]
    data = read_conll(Path(args.data_dir) / "conll2002-es" / "esp.testa")
    sentences = [" ".join(tokens) for tokens in data["tokens"]]
    configurations = [("teacher " + teacher.params["model"]["name"], teacher, "torch"),
                      ("teacher " + teacher.params["model"]["name"], teacher, "onnx-int8"),
                      ("student " + student.params["model"]["name"], student, "torch"),
                      ("student " + student.params["model"]["name"], student, "onnx-int8")]
    for _, trial, engine in configurations:  # each engine's files, once (the servers only read them)
        get_engine(engine).prepare(trial.checkpoint)
    lean = None
    if args.lean_venv:
        lean, size = lean_environment(Path(args.lean_venv))
        seconds = [cold_start(lean, student.checkpoint, route, sentences[0], args.threads) for _ in range(3)]
        console.print(f"speedy[serve] only (no torch): {size:.0f} MB installed (pip and setuptools left out); cold "
                      f"start of the int8 student, process start to first answer: {min(seconds):.2f} s (best of 3; "
                      f"{', '.join(f'{x:.2f}' for x in seconds)})", markup=False, soft_wrap=True)
    console.print(f"CPU: {cpu_description()}")
    console.print(f"loopback, concurrency {args.concurrency}, one CoNLL-2002 sentence per request "
                  f"({np.mean([len(s.split()) for s in sentences]):.1f} words on average), server threads "
                  f"{args.threads}, dynamic batching max {args.max_batch} / {args.max_wait_ms} ms")
    results = []
    for label, trial, engine in configurations:
        requests = args.teacher_requests or args.requests if label.startswith("teacher") else args.requests
        port = free_port()
        served_by = lean if lean and engine == "onnx-int8" and label.startswith("student") else None
        server, health = start_server(trial.checkpoint, engine, port, args.threads, args.max_batch, args.max_wait_ms,
                                      served_by)
        try:
            result = asyncio.run(load(port, route, sentences, requests, args.concurrency,
                                      warmup=2 * args.concurrency))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                stats = json.loads(response.read())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        engine_rate = engine_throughput(trial.checkpoint, engine, sentences, args.concurrency, args.threads)
        result.update(model=label, engine=engine, mean_batch=stats["items"] / max(1, stats["batches"]),
                      largest_batch=stats["largest_batch"], engine_per_second=engine_rate,
                      served_fraction=result["requests_per_second"] / engine_rate, lean=served_by is not None)
        results.append(result)
        console.print(f"  {label} [{engine}]: {result['requests_per_second']:.1f} requests/s, p95 "
                      f"{result['p95_ms']:.1f} ms", markup=False)

    base = results[0]["requests_per_second"]
    table = Table(title=f"Serving on loopback, concurrency {args.concurrency} (targets: int8 student >= 10x the "
                        "teacher in PyTorch; student p95 < 50 ms; served >= 0.8 of the engine)")
    for column in ("model", "engine", "requests", "failures", "requests/s", "vs teacher torch", "engine sent/s",
                   "served / engine", "p50 ms", "p95 ms", "p99 ms", "mean batch", "largest batch"):
        table.add_column(column, justify="left" if column in ("model", "engine") else "right")
    for r in results:
        table.add_row(r["model"], r["engine"] + (" (lean)" if r["lean"] else ""), str(r["requests"]),
                      str(r["failures"]), f"{r['requests_per_second']:.1f}", f"{r['requests_per_second'] / base:.1f}x",
                      f"{r['engine_per_second']:.1f}", f"{r['served_fraction']:.2f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", f"{r['mean_batch']:.1f}", str(r["largest_batch"]))
    console.print(table)
    out = Path(args.out or Path(study.config.output_dir) / "serving.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2), "utf-8")
    os.replace(tmp, out)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
