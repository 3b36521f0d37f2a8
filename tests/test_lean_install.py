"""`pip install 'speedy[serve]'` in a fresh virtual environment, without PyTorch, serves an exported model.

The environment is built for real (from PyPI, with the versions of constraints.txt), so this test proves what a
user of the serving install gets: no torch, transformers, datasets or Optuna installed, ``speedy serve`` and
``speedy predict`` answering as the training install does. It prints the install size and the cold start
(process start to first answer); the README's figures come from ``benchmarks/serving.py --lean``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, speedy_model
from speedy.bench.engines import load_engine
from speedy.bench.export import export_onnx
from speedy.runtime.predictor import RuntimePredictor

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["El equipo ganó el partido.", "La ministra aprobó la ley ayer en el senado."]


def _post(port: int, route: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_serve_install_has_no_torch_and_serves_an_exported_model(bert_dir, tmp_path):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    export_onnx(load_engine(folder, "torch"), folder / "onnx")
    expected = RuntimePredictor(folder, "onnx-int8").run_batch([(text, None) for text in TEXTS])

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "-c", str(REPO / "constraints.txt"), f"{REPO}[serve]"], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    for absent in ("torch", "transformers", "datasets", "optuna"):
        probe = subprocess.run([str(bin_dir / "python"), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is installed by speedy[serve]"
    size = sum(p.stat().st_size for p in (venv / "lib").rglob("*") if p.is_file()) / 1e6

    predicted = subprocess.run([str(bin_dir / "speedy"), "predict", "--model", str(folder), "--engine", "onnx-int8",
                                "--text", TEXTS[0]], capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["label"] == expected[0]["label"]

    training = subprocess.run([str(bin_dir / "speedy"), "demo", "--output", str(tmp_path / "demo")],
                              capture_output=True, text=True, timeout=120)
    assert training.returncode == 2 and "pip install 'speedy[train]'" in training.stderr
    assert len(training.stderr.strip().splitlines()) == 1 and not (tmp_path / "demo").exists()

    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([str(bin_dir / "speedy"), "serve", str(folder), "--port", str(port), "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ""})
    try:
        answer = None
        while answer is None and time.perf_counter() - start < 60 and server.poll() is None:
            try:
                answer = _post(port, "/classify", {"inputs": [{"text": TEXTS[0]}]})
            except OSError:
                time.sleep(0.02)
        cold = time.perf_counter() - start
        assert answer is not None, server.stderr.read() if server.poll() is not None else "no answer in 60 s"
        both = _post(port, "/classify", {"inputs": [{"text": t} for t in TEXTS]})["results"]
        assert [r["label"] for r in both] == [r["label"] for r in expected]
        assert both[1]["score"] == pytest.approx(expected[1]["score"], abs=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\nspeedy[serve] install: {size:.0f} MB; cold start to the first answer: {cold:.2f} s")
