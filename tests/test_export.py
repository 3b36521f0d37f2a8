"""Export to ONNX Runtime (fp32 fused, int8) gives the answers of PyTorch, for every task type."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from datasets import Dataset
from typer.testing import CliRunner

from conftest import TASKS, make_examples, speedy_model, write_tsv
from speedy.bench.engines import get_engine, load_engine
from speedy.bench.export import OnnxModel, check_export, compare_engines, export_onnx, predictions
from speedy.cli import app
from speedy.errors import SpeedyError
from speedy.tasks import make_task

pytest.importorskip("onnxruntime")

SENTENCES = [["El", "equipo", "ganó", "el", "partido", "ayer", "."], ["La", "ministra", "aprobó", "la", "ley", "."],
             ["Señor", ",", "ten", "piedad", "."]]
QA = {"question": ["¿Quién ganó el partido?", "¿Qué aprobó la ministra?"],
      "context": ["El equipo ganó el partido ayer en el estadio.", "La ministra aprobó la ley hoy en el senado."]}
@pytest.mark.parametrize("base", ["bert_dir", "albert_dir"])
@pytest.mark.parametrize("task_type", ["classification", "tagging", "qa"])
def test_onnx_fp32_matches_pytorch_and_int8_runs(task_type, base, request, tmp_path):
    from transformers import AutoTokenizer

    folder = speedy_model(request.getfixturevalue(base), task_type, tmp_path / "model")
    model = load_engine(folder, "torch")
    written = export_onnx(model, folder / "onnx")
    fused = written["fused_operators"]
    assert fused["Attention"] >= model.config.num_hidden_layers - 1 and fused["SkipLayerNormalization"] > 0
    checks = check_export(model, folder / "onnx")  # padded batches of lengths 7, 33, 128
    assert checks["fp32_max_abs_diff"] < 1e-4
    assert 0 < checks["int8_max_abs_diff"] < 0.1  # quantized, so not equal, but close
    tokenizer, task = AutoTokenizer.from_pretrained(folder), make_task(task_type, TASKS[task_type])
    data = (Dataset.from_dict(QA) if task_type == "qa" else
            Dataset.from_dict({"tokens": SENTENCES, "tags": [["O"] * len(s) for s in SENTENCES]})
            if task_type == "tagging" else Dataset.from_dict({"text": [" ".join(s) for s in SENTENCES],
                                                              "label": ["deporte", "politica", "deporte"],
                                                              "line": [1, 2, 3]}))
    fp32 = load_engine(folder, "onnx")
    assert predictions(fp32, tokenizer, task, data, 64) == predictions(model, tokenizer, task, data, 64)


def train_classifier(bert_dir, folder, steps=60):
    """A tiny classifier trained until its logits are far apart (a random one ties, and any rounding flips it)."""
    from transformers import AutoTokenizer

    speedy_model(bert_dir, "classification", folder)
    task = make_task("classification", TASKS["classification"])
    model, tokenizer = load_engine(folder, "torch"), AutoTokenizer.from_pretrained(folder)
    rows = make_examples(64, seed=2)
    batch = tokenizer([text for _, text in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([task.label2id[label] for label, _ in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    return model, tokenizer, task


def test_int8_predicts_the_same_labels_as_pytorch_with_the_score_drop_reported(bert_dir, tmp_path):
    model, tokenizer, task = train_classifier(bert_dir, tmp_path / "model")
    export_onnx(model, tmp_path / "model" / "onnx")
    rows = make_examples(300, seed=9)
    data = Dataset.from_dict({"text": [t for _, t in rows], "label": [label for label, _ in rows],
                              "line": list(range(2, 302))})
    result = compare_engines(model, load_engine(tmp_path / "model", "onnx-int8"), tokenizer, task, data, 64)
    assert result["compared"] == 300
    assert result["agreement"] >= 0.99
    assert result["reference_score"] > 0.9  # it did learn the task, so the agreement means something
    assert abs(result["score_drop"]) <= 0.01


def test_speedy_export_writes_a_card_and_every_engine_predicts(bert_dir, tmp_path):
    train_classifier(bert_dir, tmp_path / "model")
    validation = write_tsv(tmp_path / "validation.tsv", make_examples(40, seed=5))
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "model"), str(tmp_path / "out"),
                                 "--validation-file", validation])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert (out / "config.json").is_file() and (out / "onnx" / "model.onnx").is_file()
    assert (out / "onnx" / "model-int8.onnx").is_file() and not (tmp_path / "out.tmp").exists()
    card = (out / "README.md").read_text("utf-8")
    assert card.startswith("---\nlanguage: es") and "pipeline_tag: text-classification" in card
    assert "deporte, politica" in card and "onnx-int8" in card and "validation.tsv" in card
    summary = json.loads((out / "export.json").read_text("utf-8"))
    assert summary["checks"]["fp32_max_abs_diff"] < 1e-4 and summary["checks"]["int8"]["agreement"] >= 0.99
    answers = []
    for engine in ("torch", "onnx", "onnx-int8"):
        result = runner.invoke(app, ["predict", "--model", str(out), "--engine", engine,
                                     "--text", "El delantero marcó un gol ayer."])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output.strip().splitlines()[-1]))
    assert {a["label"] for a in answers} == {"deporte"}
    assert answers[1]["score"] == pytest.approx(answers[0]["score"], abs=1e-5)


def test_export_refuses_an_unknown_head(bert_dir, tmp_path):
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(bert_dir)
    model.config.speedy_task = {"type": "classification", "max_length": 64}
    model.save_pretrained(tmp_path / "encoder")
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(tmp_path / "encoder")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "encoder"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown task head 'BertModel'" in result.output and "\n" not in result.output.strip()
    assert not (tmp_path / "out").exists()


def test_an_onnx_file_that_does_not_match_its_config_is_refused(bert_dir, tmp_path):
    from transformers import AutoConfig

    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    export_onnx(load_engine(folder, "torch"), folder / "onnx")
    config = AutoConfig.from_pretrained(folder)
    config.num_labels = 3
    with pytest.raises(SpeedyError, match=r"model\.onnx: does not match its config\.json \(num_labels: 2 in the ONNX"):
        OnnxModel(get_engine("onnx").path(folder), config)
    tagging = speedy_model(bert_dir, "tagging", tmp_path / "tagger")
    (tagging / "onnx").mkdir()
    (tagging / "onnx" / "model.onnx").write_bytes((folder / "onnx" / "model.onnx").read_bytes())
    with pytest.raises(SpeedyError, match="does not match its config.json"):
        load_engine(tagging, "onnx")


def test_a_missing_onnxruntime_names_the_extra_to_install(bert_dir, tmp_path, monkeypatch):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without it looks like
    with pytest.raises(SpeedyError, match=r"pip install 'speedy\[onnx\]'"):
        load_engine(folder, "onnx-int8")
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), "--engine", "onnx", "--text", "Hola."])
    assert result.exit_code == 2 and "speedy[onnx]" in result.output


def test_bench_speed_on_an_empty_sentence_file_is_a_one_line_error(bert_dir, tmp_path):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    (tmp_path / "empty.txt").write_text("", "utf-8")
    result = CliRunner().invoke(app, ["bench", "speed", str(folder), "--sentences", str(tmp_path / "empty.txt")])
    assert result.exit_code == 2
    assert "empty.txt: no sentences" in result.output


def test_bench_commands_print_their_tables(bert_dir, tmp_path):
    folder = speedy_model(bert_dir, "classification", tmp_path / "model")
    (tmp_path / "s.txt").write_text("El equipo ganó.\nLa ministra habló en el senado hoy.\n", "utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "macs", str(folder), "--length", "16"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "THOP" in result.output
    result = runner.invoke(app, ["bench", "speed", str(folder), "--engine", "torch", "--engine", "onnx-int8",
                                 "--length", "16", "--runs", "5", "--warmup", "1", "--sentences",
                                 str(tmp_path / "s.txt"), "--json", str(tmp_path / "speed.json")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "speed.json").read_text("utf-8"))
    assert {(r["engine"], r["workload"]) for r in rows} == {("torch", "fixed 16"), ("torch", "sentences"),
                                                            ("onnx-int8", "fixed 16"), ("onnx-int8", "sentences")}
