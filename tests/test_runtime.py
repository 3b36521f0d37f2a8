"""The torch-free runtime (``speedy.runtime``): an exported model answers exactly as the same ONNX graph does
behind the PyTorch-side predictor, for every task type; a batch is cut by tokens without changing any answer;
serving and predicting with an ONNX engine import no training library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import speedy_model
from speedy.bench.engines import load_engine
from speedy.bench.export import export_onnx
from speedy.errors import SpeedyError
from speedy.predictor import Predictor
from speedy.runtime.predictor import RuntimePredictor
from speedy.runtime.session import OnnxRunner

pytest.importorskip("onnxruntime")

LONG = " ".join(f"palabra{i}" for i in range(90)) + " ."  # longer than the model's 64 tokens: several windows
ITEMS = {
    "classification": [("El equipo ganó el partido.", None), ("La ministra aprobó la ley.", "El senado la votó."),
                       (LONG, None), ("Señor, ten piedad.", None)],
    "tagging": [["El", "delantero", "marcó", "un", "gol", "."], LONG.split(), [], ["Madrid"]],
    "qa": [("¿Quién ganó?", "El equipo ganó el partido ayer en el estadio."), ("¿Qué pasó?", LONG),
           (" ".join(["pregunta"] * 80) + "?", "Un contexto corto.")],  # a question that fills the window
}


@pytest.fixture(scope="module", params=["bert_dir", "bert_unigram_dir"])
def exported(request, tmp_path_factory):
    """A model folder of each task type with its ONNX graphs (WordPiece with token types; a unigram vocabulary
    fed none, as XLM-R is)."""
    root = tmp_path_factory.mktemp(request.param)
    folders = {}
    for task in ITEMS:
        folder = speedy_model(request.getfixturevalue(request.param), task, root / task)
        export_onnx(load_engine(folder, "torch"), folder / "onnx")
        folders[task] = folder
    return folders


def _same(a, b):
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    close = (float, dict)  # scores: equal but for float rounding (the batches are padded differently)
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-5) if isinstance(a[k], close) else
                                        a[k] == b[k] for k in a)


@pytest.mark.parametrize("task", list(ITEMS))
@pytest.mark.parametrize("engine", ["onnx", "onnx-int8"])
def test_the_runtime_answers_as_the_same_graph_behind_the_torch_predictor(exported, task, engine):
    lean, full = RuntimePredictor(exported[task], engine), Predictor(exported[task], engine)
    if engine == "onnx":
        lean, full = lean.run_each(ITEMS[task]), full.run_each(ITEMS[task])
    else:  # int8 scales the activations by the whole batch: the same answers need the same batches
        lean = [lean.run_each([item])[0] for item in ITEMS[task]]
        full = [full.run_each([item])[0] for item in ITEMS[task]]
    assert len(lean) == len(ITEMS[task])
    assert all(_same(a, b) for a, b in zip(lean, full)), (lean, full)
    if task == "qa":
        assert lean[0]["answer"] and isinstance(lean[2], SpeedyError) and str(lean[2]).startswith("question:")
    if task == "tagging":
        assert len(lean[1]["tags"]) == len(LONG.split()) and lean[2] == {"words": [], "tags": []}


def test_cutting_a_batch_by_tokens_changes_no_answer(exported):
    folder = exported["tagging"]
    sentences = [LONG.split()[: n] for n in (3, 40, 7, 90, 1, 25)]
    whole = RuntimePredictor(folder, "onnx").run_each(sentences)
    small = RuntimePredictor(folder, "onnx", max_tokens=64)  # at most one 64-token window per call
    assert small.run_each(sentences) == whole


def test_calls_hold_every_row_once_longest_first_within_the_budget():
    runner = OnnxRunner.__new__(OnnxRunner)
    runner.max_tokens = 100
    lengths = [10, 60, 5, 30, 30, 200, 1]
    calls = runner.calls(lengths)
    assert sorted(i for call in calls for i in call) == list(range(len(lengths)))
    for call in calls:
        assert len(call) == 1 or len(call) * max(lengths[i] for i in call) <= 100
        assert [lengths[i] for i in call] == sorted((lengths[i] for i in call), reverse=True)
    assert calls[0] == [5]  # longer than the budget: alone


def test_a_broken_exported_folder_is_one_line(exported, tmp_path):
    folder = exported["classification"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(SpeedyError, match=r"model-int8\.onnx: no such file: run 'speedy export"):
        RuntimePredictor(copy, "onnx-int8")
    (copy / "config.json").write_text("{", "utf-8")
    with pytest.raises(SpeedyError, match=r"config\.json: not valid JSON"):
        RuntimePredictor(copy, "onnx")
    raw = json.loads((folder / "config.json").read_text("utf-8"))
    raw["id2label"] = {"0": "deporte", "2": "politica"}
    (copy / "config.json").write_text(json.dumps(raw), "utf-8")
    with pytest.raises(SpeedyError, match="id2label must map the ids 0, 1, 2"):
        RuntimePredictor(copy, "onnx")
    with pytest.raises(SpeedyError, match="not an ONNX engine"):
        RuntimePredictor(folder, "torch")


LEAN_CHECK = """
import json, sys
from speedy.cli import app
from speedy.predictor import open_predictor
from speedy.serve.app import create_app
folder = sys.argv[1]
predictor = open_predictor(folder, "onnx-int8")
print(json.dumps(predictor.run_batch([predictor.task.input_item({"text": "El equipo ganó."})])))
create_app(folder)
try:
    app(["predict", "--model", folder, "--engine", "onnx", "--text", "Hola."])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print(json.dumps(sorted(m for m in ("torch", "transformers", "datasets", "optuna", "sklearn") if m in sys.modules)))
"""


def test_serving_and_predicting_with_onnx_import_no_training_library(exported):
    pytest.importorskip("fastapi")
    out = subprocess.run([sys.executable, "-c", LEAN_CHECK, str(exported["classification"])], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])[0]["label"] in ("deporte", "politica")
    assert json.loads(lines[-1]) == []


def test_the_server_answers_from_the_runtime_with_its_limits(exported):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from speedy.serve.app import ServeSettings, create_app

    settings = ServeSettings(engine="onnx-int8", max_chars=1000, max_items=4, max_batch_tokens=64)
    with TestClient(create_app(exported["qa"], settings)) as client:
        assert client.get("/health").json()["engine"] == "onnx-int8"
        question, context = ITEMS["qa"][0]
        long_question = ITEMS["qa"][2][0]
        response = client.post("/answer", json={"inputs": [{"question": question, "context": context}]})
        assert response.status_code == 200 and response.json()["results"][0]["answer"]
        refused = client.post("/answer", json={"inputs": [{"question": long_question, "context": context}]})
        assert refused.status_code == 422 and refused.json()["detail"].startswith("inputs[0].question: longer")
    fp32 = ServeSettings(engine="onnx", max_batch_tokens=64)  # fp32: the answers do not depend on the batching
    with TestClient(create_app(exported["tagging"], fp32)) as client:
        response = client.post("/tag", json={"inputs": [{"text": LONG}, {"text": "El gol ."}]})
        tags = [r["tags"] for r in response.json()["results"]]
        assert [len(t) for t in tags] == [len(LONG.split()), 3]
        alone = RuntimePredictor(exported["tagging"], "onnx")
        assert tags == [alone.run_each([words])[0]["tags"] for words in (LONG.split(), ["El", "gol", "."])]


def test_a_context_of_too_many_windows_fails_alone_and_a_bad_stride_is_one_line(exported, tmp_path):
    folder = exported["qa"]
    predictor = RuntimePredictor(folder, "onnx")
    predictor.task.max_windows = 2
    answers = predictor.run_each([ITEMS["qa"][0], ("¿Qué pasó?", LONG * 3)])
    assert answers[0]["answer"] and isinstance(answers[1], SpeedyError)
    assert str(answers[1]).startswith("context: longer than 2 windows")
    copy = tmp_path / "qa"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    raw = json.loads((folder / "config.json").read_text("utf-8"))
    raw["speedy_task"]["stride"] = 0
    (copy / "config.json").write_text(json.dumps(raw), "utf-8")
    with pytest.raises(SpeedyError, match=r"speedy_task\.stride must be a positive whole number, not 0"):
        RuntimePredictor(copy, "onnx")
