"""Load benchmark: ``speedy serve`` on loopback, teacher against student, ONNX Runtime int8 against PyTorch.

For each (model, engine) it starts ``speedy serve`` on 127.0.0.1, waits for /health, sends a bounded number of
requests of one real Spanish sentence each from ``--concurrency`` clients at once (each client sends its next
request when the previous one is answered), and prints requests per second and p50/p95/p99 latency, then stops
the server with SIGTERM. It stops by itself and talks only to 127.0.0.1.

Models come from a finished study (the selected teacher and one KD student of its first task); sentences from
CoNLL-2002 ``esp.testa`` in ``../shared/data`` (read there, never copied). Targets (same concurrency): the int8
student serves >= 10x the requests per second of the teacher in PyTorch fp32, with p95 under 50 ms. Example::

    python benchmarks/serving.py --study /tmp/bench/tagging/ner --student e5-2L --requests 400

Client and server share this machine's cores, so the figures include the client's own cost.
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


def start_server(model_dir: str, engine: str, port: int, threads: int, max_batch: int, max_wait_ms: float):
    command = [sys.executable, "-m", "speedy", "serve", model_dir, "--engine", engine, "--port", str(port),
               "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--max-chars", "5000"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="/tmp/bench/tagging/ner")
    parser.add_argument("--student", default=None, help="a KD student's name (default: the smallest)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--requests", type=int, default=400, help="timed requests per configuration")
    parser.add_argument("--teacher-requests", type=int, default=None, help="default: --requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="JSON results (default: <study>/serving.json)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from speedy.bench.engines import get_engine
    from speedy.configfile import load_config
    from speedy.console import quiet_libraries
    from speedy.data.readers import read_conll
    from speedy.pipeline import Study

    quiet_libraries()
    console = Console(width=150)
    study = Study(load_config(Path(args.study) / "study.yaml"), console)
    task_spec = study.config.tasks[0]
    teacher = study.selected_teacher(task_spec)
    students = sorted((t for t in study.store.trials("distill", task_spec.name) if t.params["mode"] == "kd"),
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
    console.print(f"loopback, concurrency {args.concurrency}, one CoNLL-2002 sentence per request "
                  f"({np.mean([len(s.split()) for s in sentences]):.1f} words on average), server threads "
                  f"{args.threads}, dynamic batching max {args.max_batch} / {args.max_wait_ms} ms")
    results = []
    for label, trial, engine in configurations:
        requests = args.teacher_requests or args.requests if label.startswith("teacher") else args.requests
        port = free_port()
        server, health = start_server(trial.checkpoint, engine, port, args.threads, args.max_batch, args.max_wait_ms)
        try:
            result = asyncio.run(load(port, route, sentences, requests, args.concurrency,
                                      warmup=2 * args.concurrency))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                stats = json.loads(response.read())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        result.update(model=label, engine=engine, mean_batch=stats["items"] / max(1, stats["batches"]),
                      largest_batch=stats["largest_batch"])
        results.append(result)
        console.print(f"  {label} [{engine}]: {result['requests_per_second']:.1f} requests/s, p95 "
                      f"{result['p95_ms']:.1f} ms", markup=False)

    base = results[0]["requests_per_second"]
    table = Table(title=f"Serving on loopback, concurrency {args.concurrency} (targets: int8 student >= 10x the "
                        "teacher in PyTorch; student p95 < 50 ms)")
    for column in ("model", "engine", "requests", "failures", "requests/s", "vs teacher torch", "p50 ms", "p95 ms",
                   "p99 ms", "mean batch", "largest batch"):
        table.add_column(column, justify="left" if column in ("model", "engine") else "right")
    for r in results:
        table.add_row(r["model"], r["engine"], str(r["requests"]), str(r["failures"]), f"{r['requests_per_second']:.1f}",
                      f"{r['requests_per_second'] / base:.1f}x", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", f"{r['mean_batch']:.1f}", str(r["largest_batch"]))
    console.print(table)
    out = Path(args.out or Path(args.study) / "serving.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2), "utf-8")
    os.replace(tmp, out)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
