"""The engine registry: an engine added by one class and one registry entry is usable everywhere (``speedy bench
speed``, ``speedy predict``, the server's Predictor); an unknown name is one line; the engines and the export code
do not import each other in a cycle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import speedy_model
from speedy.bench import engines
from speedy.bench.engines import ENGINES, Engine, get_engine, load_engine
from speedy.cli import app
from speedy.errors import SpeedyError
from speedy.predictor import Predictor

TEXTS = [("El equipo ganó el partido ayer.", None), ("La ministra aprobó la ley.", None)]


class CopyEngine(Engine):
    """A trivial engine with a file of its own: a copy of the PyTorch model in ``copy/``, written on demand."""

    name = "copy"
    card = "a copy of the PyTorch model"
    file = "copy/model.safetensors"
    loaded: list = []

    def write(self, model, folder: Path) -> None:
        model.save_pretrained(folder / "copy")

    def load(self, folder, config, threads=None, model=None):
        from speedy.trained import load_torch_model

        CopyEngine.loaded.append((Path(folder), threads))
        return load_torch_model(Path(folder) / "copy")


@pytest.fixture
def copy_engine(monkeypatch):
    monkeypatch.setitem(ENGINES, CopyEngine.name, CopyEngine)  # the one registry line, for this test only
    monkeypatch.setattr(CopyEngine, "loaded", [])
    return CopyEngine


def test_the_registry_lists_the_engines_in_order():
    assert list(ENGINES) == ["torch", "onnx", "onnx-int8"]
    assert all(issubclass(engine, Engine) and engine.name == name for name, engine in ENGINES.items())
    assert get_engine("torch").file is None and get_engine("torch").needs_weights
    assert get_engine("onnx").file == "onnx/model.onnx" and get_engine("onnx-int8").file == "onnx/model-int8.onnx"
    assert not get_engine("onnx-int8").needs_weights


def test_a_registered_engine_is_usable_by_bench_speed_and_the_predictor(copy_engine, bert_dir, tmp_path):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    expected = Predictor(folder, "torch").run_batch(TEXTS)
    result = CliRunner().invoke(app, ["bench", "speed", str(folder), "--engine", "torch", "--engine", "copy",
                                      "--length", "16", "--runs", "3", "--warmup", "1", "--threads", "1",
                                      "--json", str(tmp_path / "speed.json")], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "speed.json").read_text("utf-8"))
    assert [r["engine"] for r in rows] == ["torch", "copy"]
    assert (folder / "copy" / "model.safetensors").is_file()  # written on demand by Engine.prepare
    assert copy_engine.loaded == [(folder, 1)]

    (folder / "model.safetensors").unlink()  # the engine runs its own file: the PyTorch weights are not needed
    predictor = Predictor(folder, "copy")
    assert predictor.run_batch(TEXTS) == pytest.approx(expected)
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), "--engine", "copy", "--text", TEXTS[0][0]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["label"] == expected[0]["label"]
    with pytest.raises(SpeedyError, match="model.safetensors"):  # torch still needs them
        Predictor(folder, "torch")


def test_a_missing_engine_file_names_the_file_unless_it_may_be_written(copy_engine, bert_dir, tmp_path):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    with pytest.raises(SpeedyError, match=r"copy/model\.safetensors: no such file: run 'speedy export"):
        load_engine(folder, "copy")
    assert load_engine(folder, "copy", threads=2, export_missing=True).config.num_labels == 2
    assert copy_engine.loaded == [(folder, 2)]


def test_an_unknown_engine_is_a_one_line_error(bert_dir, tmp_path):
    with pytest.raises(SpeedyError) as error:
        get_engine("x")
    assert str(error.value) == "--engine: unknown engine 'x' (allowed: torch, onnx, onnx-int8)"
    with pytest.raises(SpeedyError, match=r"^speed\.engines\[1\]: unknown engine 'x' \(allowed: "):
        engines.check_engine("x", "speed.engines[1]")
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    for command in (["bench", "speed", str(folder), "--engine", "torch", "--engine", "x"],
                    ["predict", "--model", str(folder), "--engine", "x", "--text", "Hola."]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2
        assert "unknown engine 'x' (allowed: torch, onnx, onnx-int8)" in result.output
        assert "\n" not in result.output.strip()


@pytest.mark.parametrize("module, absent", [("speedy.bench.engines", ["speedy.bench.export", "torch"]),
                                            ("speedy.bench.export", ["speedy.bench.engines"])])
def test_engines_and_export_do_not_import_each_other(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
