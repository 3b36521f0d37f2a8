"""Broken model folders: every one is a single line naming the folder and the file at fault, exit code 2.

One good tiny classification folder is built once; each case copies it, breaks one thing (the way the audit's 32
broken folders were broken) and runs ``speedy predict --model DIR --text hola``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_examples, speedy_model, train_wordpiece, write_tsv
from speedy.cli import app
from speedy.errors import SpeedyError


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, bert_dir):
    return speedy_model(bert_dir, "classification", tmp_path_factory.mktemp("good") / "model")


def _config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text("utf-8"))
    change(config)
    (folder / "config.json").write_text(json.dumps(config), "utf-8")


def _truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _drop_tensor(folder: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _garbage_header(folder: Path) -> None:
    body = b"this is not json at all"
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)


def _other_tokenizer(folder: Path, vocab_size: int) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    train_wordpiece(folder, vocab_size=vocab_size)


def _added_tokens(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"palabra{i}" for i in range(40)])  # ids past the model's embeddings
    tokenizer.save_pretrained(folder)


def _no_pad_token(folder: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
    data["padding"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data), "utf-8")


def _unlink(*names):
    def run(folder: Path) -> None:
        for name in names:
            (folder / name).unlink()
    return run


def _write(name: str, content: bytes):
    def run(folder: Path) -> None:
        (folder / name).write_bytes(content)
    return run


def _set(key, value):
    return lambda folder: _config(folder, lambda c: c.__setitem__(key, value))


def _drop(*keys):
    return lambda folder: _config(folder, lambda c: [c.pop(k, None) for k in keys])


def _task(**values):
    return lambda folder: _config(folder, lambda c: c["speedy_task"].update(values))


# (id, how to break the folder, what the one line must say besides the folder)
CASES = [
    ("no-such-path", "missing", "no such folder"),
    ("a-file", "file", "not a folder"),
    ("empty-folder", "empty", "config.json missing"),
    ("no-config", _unlink("config.json"), "config.json missing"),
    ("config-not-json", _write("config.json", b"{model_type: bert"), "config.json is not valid JSON"),
    ("config-truncated", lambda f: _truncate(f / "config.json"), "config.json is not valid JSON"),
    ("config-empty", _write("config.json", b""), "config.json is empty"),
    ("config-not-utf8", _write("config.json", b"\xff\xfe{\x00}"), "config.json is not UTF-8"),
    ("config-a-list", _write("config.json", b"[1, 2]"), "config.json is not a JSON object"),
    ("no-model-type", _drop("model_type"), "config.json has no model_type"),
    ("unknown-model-type", _set("model_type", "bertish"), "config.json: unknown model_type 'bertish'"),
    ("config-bad-field", _set("hidden_size", "big"), "config.json"),
    ("no-speedy-task", _drop("speedy_task"), "config.json has no speedy_task"),
    ("unknown-task", _task(type="sentiment"), "speedy_task type 'sentiment'"),
    ("bad-max-length", _task(max_length="long"), "speedy_task.max_length"),
    ("no-id2label", _drop("id2label", "label2id"), "config.json has no id2label"),
    ("num-labels-differs", _set("num_labels", 3), "config.json"),
    ("id2label-bad-ids", _set("id2label", {"0": "deporte", "5": "politica"}), "config.json: id2label keys"),
    ("id2label-duplicate", _set("id2label", {"0": "deporte", "1": "deporte"}), "config.json: id2label names"),
    ("label2id-differs", _set("label2id", {"deporte": 1, "politica": 0}), "config.json: label2id"),
    ("three-labels-two-outputs", lambda f: (_drop("label2id")(f), _set("id2label", {"0": "a", "1": "b", "2": "c"})(f)),
     "model.safetensors: the task head"),
    ("qa-head-for-classification", _set("architectures", ["BertForQuestionAnswering"]),
     "config.json: unknown task head 'BertForQuestionAnswering'"),
    ("vocab-size-differs", _set("vocab_size", 400), "model.safetensors: the word embeddings"),
    ("no-weights", _unlink("model.safetensors"), "model.safetensors missing"),
    ("weights-truncated", lambda f: _truncate(f / "model.safetensors"), "model.safetensors is truncated"),
    ("weights-empty", _write("model.safetensors", b""), "model.safetensors is empty"),
    ("weights-random-bytes", _write("model.safetensors", os.urandom(4096)), "model.safetensors is corrupt"),
    ("weights-header-garbage", _garbage_header, "model.safetensors is corrupt"),
    ("weights-lack-the-head", lambda f: _drop_tensor(f, "classifier.weight"), "model.safetensors lacks"),
    ("weights-pytorch-bin-corrupt", lambda f: (_unlink("model.safetensors")(f),
                                               _write("pytorch_model.bin", b"not a zip")(f)),
     "pytorch_model.bin is corrupt"),
    ("no-tokenizer-files", _unlink("tokenizer.json", "tokenizer_config.json"), "tokenizer.json missing"),
    ("no-tokenizer-json", _unlink("tokenizer.json"), "tokenizer.json missing"),
    ("tokenizer-not-json", _write("tokenizer.json", b"<html>"), "tokenizer.json is not valid JSON"),
    ("tokenizer-truncated", lambda f: _truncate(f / "tokenizer.json"), "tokenizer.json is not valid JSON"),
    ("tokenizer-no-vocab", lambda f: (f / "tokenizer.json").write_text(json.dumps(
        {**json.loads((f / "tokenizer.json").read_text("utf-8")), "model": {"type": "WordPiece", "vocab": {}}}),
        "utf-8"), "tokenizer.json has no vocabulary"),
    ("tokenizer-config-not-json", _write("tokenizer_config.json", b"{'a': 1"),
     "tokenizer_config.json is not valid JSON"),
    ("special-tokens-map-not-json", _write("special_tokens_map.json", b"{"), "special_tokens_map.json"),
    ("tokenizer-bigger-than-embeddings", _added_tokens, "tokenizer.json: the tokenizer's vocabulary"),
    ("tokenizer-of-another-model", lambda f: _other_tokenizer(f, 100), "tokenizer.json: the tokenizer's vocabulary"),
    ("tokenizer-without-pad-token", _no_pad_token, "tokenizer_config.json: the tokenizer has no padding token"),
]


def _broken(good: Path, tmp_path: Path, breaker) -> Path:
    folder = tmp_path / "runs" / "x" / "model"
    if breaker == "missing":
        return folder
    folder.parent.mkdir(parents=True)
    if breaker == "file":
        folder.write_text("not a folder", "utf-8")
    elif breaker == "empty":
        folder.mkdir()
    else:
        shutil.copytree(good, folder)
        breaker(folder)
    return folder


def _one_line_error(result, folder: Path, says: str) -> str:
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line, line
    assert "Traceback" not in line
    assert line.startswith(f"error: model folder {folder}: "), line
    assert says in line, line
    return line


@pytest.mark.parametrize("breaker,says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_broken_model_folder_is_one_line_naming_the_file(good_dir, tmp_path, breaker, says):
    folder = _broken(good_dir, tmp_path, breaker)
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), "--text", "hola"])
    _one_line_error(result, folder, says)


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


def test_the_good_folder_still_predicts_evaluates_and_loads(good_dir, tmp_path):
    from speedy.bench.engines import load_engine
    from speedy.models.build import load_tokenizer
    from speedy.trained import check_model_folder

    result = CliRunner().invoke(app, ["predict", "--model", str(good_dir), "--text", "hola"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    assert answer["label"] in {"deporte", "politica"} and set(answer["scores"]) == {"deporte", "politica"}
    test_file = write_tsv(tmp_path / "test.tsv", make_examples(8, seed=5))
    result = CliRunner().invoke(app, ["evaluate", "--model", str(good_dir), "--test-file", test_file],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    folder = check_model_folder(good_dir)
    assert folder.task.labels == ["deporte", "politica"] and len(folder.tokenizer) == folder.embedding_rows
    assert load_engine(good_dir, "torch").config.num_labels == 2
    assert len(load_tokenizer(str(good_dir))) == folder.embedding_rows


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_check_the_folder_too(good_dir, tmp_path, command):
    folder = _broken(good_dir, tmp_path, _unlink("tokenizer.json", "tokenizer_config.json"))
    test_file = write_tsv(tmp_path / "test.tsv", make_examples(8, seed=5))
    args = (["evaluate", "--model", str(folder), "--test-file", test_file] if command == "evaluate"
            else ["export", str(folder), str(tmp_path / "out")])
    _one_line_error(CliRunner().invoke(app, args), folder, "tokenizer.json missing")
    assert not (tmp_path / "out").exists()


def test_no_tokenizer_is_never_made_up_from_the_config(good_dir, tmp_path):
    """AutoTokenizer builds an empty BERT tokenizer from config.json's model_type when a folder has no tokenizer
    files (every word becomes [UNK]): every loader of a folder refuses it instead."""
    from speedy.bench.engines import load_engine
    from speedy.models.build import load_tokenizer

    folder = _broken(good_dir, tmp_path, _unlink("tokenizer.json", "tokenizer_config.json"))
    for load in (lambda: load_tokenizer(str(folder)), lambda: load_engine(folder, "torch")):
        with pytest.raises(SpeedyError, match=r"tokenizer\.json missing \(no tokenizer files"):
            load()


def test_a_folder_broken_after_a_check_is_checked_again(good_dir, tmp_path):
    from speedy.trained import check_model_folder

    folder = _broken(good_dir, tmp_path, lambda f: None)
    check_model_folder(folder)
    _truncate(folder / "model.safetensors")
    with pytest.raises(SpeedyError, match="model.safetensors is truncated"):
        check_model_folder(folder)


def test_the_command_itself_prints_one_line_and_exits_2(good_dir, tmp_path):
    folder = _broken(good_dir, tmp_path, _unlink("tokenizer.json", "tokenizer_config.json"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "speedy", "predict", "--model", str(folder), "--text", "hola"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (f"error: model folder {folder}: tokenizer.json missing (no tokenizer files: "
                                   "tokenizer.json or vocab.txt/spiece.model)")


@pytest.mark.parametrize("task_type,base", [("classification", "albert_dir"), ("tagging", "bert_dir"),
                                            ("qa", "bert_unigram_dir")])
def test_good_folders_of_every_task_and_tokenizer_pass_the_check(task_type, base, request, tmp_path):
    from speedy.bench.engines import load_engine
    from speedy.trained import check_model_folder

    folder = speedy_model(request.getfixturevalue(base), task_type, tmp_path / "model")
    checked = check_model_folder(folder)
    assert checked.task.type == task_type and checked.tokenizer is not None
    assert load_engine(folder, "torch").config.speedy_task["type"] == task_type
    args = (["--question", "¿Quién ganó?", "--context", "El equipo ganó el partido."] if task_type == "qa"
            else ["--text", "El equipo ganó"])
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), *args])
    assert result.exit_code == 0, result.output
