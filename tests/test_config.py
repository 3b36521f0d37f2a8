"""A study's YAML file is checked whole before any work: every mistake is one line, ``FILE: key.path: problem``."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from speedy.configfile import load_config
from speedy.errors import SpeedyError
from speedy.trials import NEW_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
FILES = "{name: t, data: {train: a.tsv, validation: a.tsv, test: a.tsv}}"


def study(tasks: str = f"[{FILES}]", teachers: str = "[{name: m}]", extra: str = "") -> str:
    """A small valid study in YAML, with one section replaced or settings added."""
    return f"name: s\noutput_dir: out\ntasks: {tasks}\nteachers: {teachers}\n{extra}\n"


def task(settings: str) -> str:
    return f"[{{name: t, {settings}, data: {{train: a.tsv, validation: a.tsv, test: a.tsv}}}}]"


STUDY_KEYS = "name, tasks, teachers, students, grid, distill, speed, output_dir, store, seed, source"
LAYERS = "expected a number of layers >= 1 or a list of increasing layer indices >= 0"
EMPTY = "empty file (a study needs at least name, tasks and teachers)"
TOP = "expected a mapping of settings (name, tasks, teachers, ...), got"

BAD = [
    # wrong types
    (study(extra="grid: {epochs: [two]}"), ": grid.epochs[0]: expected an integer, got 'two'"),
    (study(extra="grid: {batch_size: [16.5]}"), ": grid.batch_size[0]: expected an integer, got 16.5"),
    (study(extra="grid: {learning_rate: [fast]}"), ": grid.learning_rate[0]: expected a number, got 'fast'"),
    (study(extra="grid: {learning_rate: 1e-5}"), ": grid.learning_rate: expected a list, got '1e-5'"),
    (study(extra="grid: {epochs: [true]}"), ": grid.epochs[0]: expected a number, got true"),
    (study(extra="grid: [16]"), ": grid: expected a mapping, got [16]"),
    (study(extra="distill: {epochs: [10]}"), ": distill.epochs: expected an integer, got [10]"),
    (study(extra="distill: {learning_rate: .nan}"), ": distill.learning_rate[0]: expected a finite number, got NaN"),
    (study(extra="speed: {threads: all}"), ": speed.threads: expected an integer, got 'all'"),
    (study(extra="students: [{name: s, finetune: perhaps}]"),
     ": students[0].finetune: expected true or false, got 'perhaps'"),
    (study(teachers="[{name: m, learning_rate: 1e-5}]"), ": teachers[0].learning_rate: expected a list, got '1e-5'"),
    (study(tasks="{name: t}"), ': tasks: expected a list, got {"name": "t"}'),
    (study(tasks="[mldoc]"), ": tasks[0]: expected a mapping, got 'mldoc'"),
    (study(tasks="[{name: t, data: null}]"), ": tasks[0].data: expected a mapping, got null"),
    (study(extra="output_dir: null"), ": output_dir: expected a string, got null"),
    # out of range
    (study(extra="grid: {epochs: [0]}"), ": grid.epochs[0]: must be >= 1, got 0"),
    (study(extra="grid: {epochs: [2, -1]}"), ": grid.epochs[1]: must be >= 1, got -1"),
    (study(extra="grid: {batch_size: [0]}"), ": grid.batch_size[0]: must be >= 1, got 0"),
    (study(extra="grid: {learning_rate: [0]}"), ": grid.learning_rate[0]: must be > 0, got 0"),
    (study(extra="distill: {epochs: 0}"), ": distill.epochs: must be >= 1, got 0"),
    (study(extra="distill: {epochs: -1}"), ": distill.epochs: must be >= 1, got -1"),
    (study(extra="distill: {patience: 0}"), ": distill.patience: must be >= 1, got 0"),
    (study(extra="distill: {alpha: 1.5}"), ": distill.alpha: must be <= 1, got 1.5"),
    (study(extra="distill: {alpha: -0.1}"), ": distill.alpha: must be >= 0, got -0.1"),
    (study(extra="distill: {temperature: 0}"), ": distill.temperature: must be > 0, got 0"),
    (study(extra="distill: {learning_rate: -1e-4}"), ": distill.learning_rate[0]: must be > 0, got '-1e-4'"),
    (study(extra="distill: {batch_size: [32, 0]}"), ": distill.batch_size[1]: must be >= 1, got 0"),
    (study(extra="distill: {warmup_ratio: 1.5}"), ": distill.warmup_ratio: must be < 1, got 1.5"),
    (study(extra="distill: {weight_decay: -0.01}"), ": distill.weight_decay: must be >= 0, got -0.01"),
    (study(extra="distill: {search_trials: -2}"), ": distill.search_trials: must be >= 0, got -2"),
    (study(extra="distill: {search_alpha: [0.8, 0.2]}"),
     ": distill.search_alpha: expected [low, high], got [0.8, 0.2]"),
    (study(extra="distill: {search_alpha: [0, 2]}"), ": distill.search_alpha[1]: must be <= 1, got 2"),
    (study(extra="distill: {search_temperature: [0, 4]}"), ": distill.search_temperature[0]: must be > 0, got 0"),
    (study(extra="speed: {runs: 0}"), ": speed.runs: must be >= 1, got 0"),
    (study(extra="speed: {warmup: -1}"), ": speed.warmup: must be >= 0, got -1"),
    (study(extra="speed: {batch_size: 0}"), ": speed.batch_size: must be >= 1, got 0"),
    (study(extra="speed: {length: 4}"), ": speed.length: must be >= 8, got 4"),
    (study(extra="seed: -1"), ": seed: must be >= 0, got -1"),
    (study(tasks=task("max_length: 4")), ": tasks[0].max_length: must be >= 8, got 4"),
    (study(tasks=task("stride: -1")), ": tasks[0].stride: must be >= 0, got -1"),
    (study(tasks=task("max_windows: 0")), ": tasks[0].max_windows: must be >= 1, got 0"),
    (study(tasks="[{name: t, data: {builtin: rv1909-genre, per_class: [0, 5, 5]}}]"),
     ": tasks[0].data.per_class[0]: must be >= 1, got 0"),
    (study(tasks="[{name: t, data: {builtin: rv1909-genre, per_class: [5, 5]}}]"),
     ": tasks[0].data.per_class: expected [train, validation, test], got [5, 5]"),
    (study(tasks="[{name: t, data: {train: a.tsv, validation: a.tsv, test: a.tsv, transfer: 9}}]"),
     ": tasks[0].data.transfer: only for builtin data (other text: give tasks[].transfer_files)"),
    (study(extra="students: [{name: s, kind: truncate, layers: 0}]"), f": students[0].layers: {LAYERS}, got 0"),
    (study(extra="students: [{name: s, kind: truncate, layers: [3, 1]}]"),
     f": students[0].layers: {LAYERS}, got [3, 1]"),
    # unknown keys
    (study(extra="grid: {batch: [8]}"), ": grid.batch: unknown setting (allowed: batch_size, epochs, learning_rate, seeds, select_by)"),
    (study(extra="epoch: 3"), f": epoch: unknown setting (allowed: {STUDY_KEYS})"),
    (study(tasks=task("maxlen: 64")),
     ": tasks[0].maxlen: unknown setting (allowed: name, type, data, max_length, scheme, normalization, stride, "
     "max_windows, transfer_files)"),
    (study(extra="students: [{name: s, layer: 2}]"), ": students[0].layer: unknown setting (allowed: name, base, "
     "kind, layers, prune_vocab, learning_rate, kd, init, finetune)"),
    (study(tasks="[{name: t, data: {hub: h, hub_splits: {train: a, dev: b, test: c}}}]"),
     ": tasks[0].data.hub_splits.dev: unknown split (give the Hub's split for each of train, validation, test)"),
    # empty lists and grid axes
    (study(extra="grid: {batch_size: []}"), ": grid.batch_size: the grid has an empty axis"),
    (study(extra="grid: {learning_rate: []}"), ": grid.learning_rate: the grid has an empty axis"),
    (study(extra="distill: {learning_rate: []}"), ": distill.learning_rate: the grid has an empty axis"),
    (study(teachers="[{name: m, learning_rate: []}]"), ": teachers[0].learning_rate: the grid has an empty axis"),
    (study(teachers="[]"), ": teachers: must not be empty"),
    (study(tasks="[]"), ": tasks: must not be empty"),
    (study(extra="speed: {engines: []}"), ": speed.engines: must not be empty"),
    (study(extra="distill: {search_losses: []}"), ": distill.search_losses: must not be empty"),
    # missing required settings
    (f"tasks: [{FILES}]\nteachers: [{{name: m}}]\n", ": name: missing required setting"),
    (f"name: s\ntasks: [{FILES}]\n", ": teachers: missing required setting"),
    (study(tasks="[{data: {train: a.tsv}}]"), ": tasks[0].name: missing required setting"),
    (study(teachers="[{base: beto-cased}]"), ": teachers[0].name: missing required setting"),
    (study(tasks="[{name: t}]"), ": tasks[0].data: give one of dataset, builtin, train/validation/test files, or hub"),
    (study(tasks="[{name: t, data: {train: a.tsv, test: a.tsv}}]"),
     ": tasks[0].data.validation: missing (local files: give train, validation and test)"),
    (study(tasks="[{name: t, data: {hub: h, hub_splits: {train: a}}}]"),
     ": tasks[0].data.hub_splits.test: missing (give the Hub's split for each of train, validation, test)"),
    (study(extra="students: [{name: s, kind: truncate}]"), ": students[0].layers: needed for kind 'truncate'"),
    # values outside their set, and settings that do not fit together
    (study(tasks=task("type: tagger")),
     ": tasks[0].type: unknown task type 'tagger' (allowed: classification, tagging, qa, embedding)"),
    (study(tasks=task("type: tagging, scheme: iob")),
     ": tasks[0].scheme: unknown tagging scheme 'iob' (allowed: bio, pos)"),
    (study(tasks="[{name: t, data: {train: a, validation: a, test: a, format: xls}}]"),
     ": tasks[0].data.format: unknown classification file format 'xls' (allowed: tsv, csv, jsonl)"),
    (study(extra="students: [{name: s, kind: trunc, layers: 2}]"),
     ": students[0].kind: unknown kind 'trunc' (allowed: pretrained, truncate, albert-base-n)"),
    (study(extra="students: [{name: s, kind: albert-base-n, layers: [4]}]"),
     ": students[0].layers: kind 'albert-base-n' runs one layer n times: give n, got [4]"),
    (study(extra="students: [{name: s, layers: 2}]"),
     ": students[0].layers: only for kind truncate or albert-base-n (this one is 'pretrained')"),
    (study(extra="students: [{name: s, kd: false}]"),
     ": students[0]: kd and finetune are both false: nothing to train"),
    (study(extra="students: [{name: m}]"), ": students[0].name: 'm' is already the name of teachers[0]"),
    (study(tasks=f"[{FILES}, {FILES}]"), ": tasks[1].name: 't' is already the name of tasks[0]"),
    (study(extra="distill: {loss: hinge}"), ": distill.loss: unknown KD loss 'hinge' (allowed: kl, ce, mse, cosine)"),
    (study(extra="distill: {loss: cosine}"),
     ": distill.loss: task 't' (classification) takes the KD losses kl, ce, mse, not 'cosine'"),
    (study(extra="distill: {mixed_precision: fp8}"),
     ": distill.mixed_precision: unknown 'fp8' (allowed: no, fp16, bf16)"),
    (study(extra="distill: {metric: f1}"), ": distill.metric: task 't' (classification) has no validation metric 'f1' "
     "(allowed: loss, accuracy, macro_f1)"),
    (study(extra="speed: {engines: [torch, tf]}"),
     ": speed.engines[1]: unknown engine 'tf' (allowed: torch, onnx, onnx-int8)"),
    (study(tasks="[{name: t, data: {dataset: mldocs}}]"), ": tasks[0].data.dataset: unknown dataset 'mldocs' (allowed: "
     "mldoc, pawsx-es, xnli-es, ancora-pos, conll2002-es, mlqa-es, sqac, tar-xquad)"),
    # not YAML, or not a study
    ("", f": {EMPTY}"),
    ("# nothing but a comment\n", f": {EMPTY}"),
    ("- name: s\n- tasks: []\n", f': {TOP} [{{"name": "s"}}, {{"tasks": []}}]'),
    ("just some words\n", f": {TOP} 'just some words'"),
    ("name: [s\n", ":2:1: malformed YAML (expected ',' or ']', but got '<stream end>')"),
    ("name: s\n  tasks: []\n", ":2:8: malformed YAML (mapping values are not allowed here)"),
    ("name: s\n\tteachers: []\n", ":2:1: malformed YAML (found character '\\t' that cannot start any token)"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.lstrip(":0123456789 ")[:48] for _, m in BAD])
def test_a_bad_config_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(SpeedyError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}{message}"


def test_numbers_yaml_reads_as_strings_load_as_numbers(tmp_path):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; where a number is expected it is the number."""
    path = tmp_path / "study.yaml"
    path.write_text(study(teachers="[{name: m, learning_rate: [1e-5, 3E-5]}]", extra="grid: {learning_rate: [1e-5]}\n"
                          "distill: {learning_rate: 5e-5, alpha: '0.5', temperature: 2e0}"), "utf-8")
    config = load_config(path)
    assert config.grid.learning_rate == [1e-05] and type(config.grid.learning_rate[0]) is float
    assert config.teachers[0].learning_rate == [1e-05, 3e-05]
    assert config.distill.learning_rate == [5e-05] and type(config.distill.learning_rate[0]) is float
    assert (config.distill.alpha, config.distill.temperature) == (0.5, 2.0)


def test_a_small_study_keeps_its_shapes(tmp_path):
    """A scalar KD batch size or rate becomes a one-point grid; an empty students list is no students."""
    path = tmp_path / "study.yaml"
    path.write_text(study(extra="students:\ndistill: {batch_size: 8, learning_rate: 0.001, patience: null}"), "utf-8")
    config = load_config(path)
    assert (config.students, config.distill.batch_size, config.distill.learning_rate) == ([], [8], [0.001])
    assert config.distill.patience is None and config.source == str(path)


# What the configs shipped with speedy loaded to before their checks moved to pydantic (recorded from that code).
def _data(**given):
    return {"dataset": None, "dir": None, "builtin": None, "train": None, "validation": None, "test": None,
            "format": None, "tag_column": None, "hub_tokens": "tokens", "hub_tags": "ner_tags", "bad_answers": "fix",
            "columns": None, "text": "text", "text_pair": None, "label": "label", "hub": None, "hub_config": None,
            "hub_splits": {"train": "train", "validation": "validation", "test": "test"},
            "per_class": [300, 60, 150], "seed": 0, "transfer": 0} | given


def _task(name, type, max_length, data, scheme="bio", normalization="en", stride=64):
    return {"name": name, "type": type, "data": data, "max_length": max_length, "scheme": scheme,
            "normalization": normalization, "stride": stride, "max_windows": 64}


def _model(name, **given):
    return {"name": name, "base": None, "kind": "pretrained", "layers": None, "prune_vocab": False,
            "learning_rate": None, "kd": True, "finetune": False} | given


def _distill(**given):
    return {"loss": "kl", "alpha": 0.0, "temperature": 1.0, "epochs": 50, "patience": 10, "batch_size": [16, 32, 64],
            "learning_rate": [5e-05, 0.0001], "warmup_ratio": 0.1, "weight_decay": 0.01, "metric": None,
            "mixed_precision": "no", "search_trials": 0, "search_losses": ["kl", "ce", "mse"],
            "search_alpha": [0.0, 1.0], "search_temperature": [1.0, 8.0], "restarts": 0} | given


ENGINES = ["torch", "onnx", "onnx-int8"]
DEMO = {
    "name": "demo", "output_dir": "runs/demo", "seed": 42, "store": None,
    "tasks": [_task("rv1909-genre", "classification", 64, _data(builtin="rv1909-genre", per_class=[200, 50, 100]))],
    "teachers": [_model("multilingual-e5-small", prune_vocab=True, learning_rate=[0.00015]),
                 _model("all-MiniLM-L6-v2")],
    "students": [_model("e5-truncated-2L", base="multilingual-e5-small", kind="truncate", layers=2, prune_vocab=True),
                 # the seventh session's KD lever that won on the demo (README): the teacher's own first 4 layers
                 _model("e5-teacher-4L", kind="truncate", layers=4, finetune=True, init="teacher")],
    "grid": {"batch_size": [16], "epochs": [8], "learning_rate": [0.0001]},
    # restarts changes no key (it only trains a collapsed student again)
    "distill": _distill(epochs=8, patience=3, batch_size=[32], learning_rate=[0.0002], restarts=1),
    "speed": {"batch_size": 1, "length": 128, "warmup": 5, "runs": 30, "threads": None, "engines": ENGINES},
}
RATES, SMALL_RATES = [1e-05, 2e-05, 3e-05, 4e-05, 5e-05], [1e-06, 2e-06, 3e-06, 4e-06, 5e-06]
PAPER = {
    "name": "speedy-gonzales", "output_dir": "runs/paper", "seed": 42, "store": None,
    "tasks": [_task("mldoc", "classification", 512, _data(dataset="mldoc")),
              _task("pawsx-es", "classification", 128, _data(dataset="pawsx-es")),
              _task("xnli-es", "classification", 128, _data(dataset="xnli-es")),
              _task("ancora-pos", "tagging", 128, _data(dataset="ancora-pos"), scheme="pos"),
              _task("conll2002-es", "tagging", 128, _data(dataset="conll2002-es")),
              _task("mlqa-es", "qa", 384, _data(dataset="mlqa-es"), normalization="es", stride=128),
              _task("sqac", "qa", 384, _data(dataset="sqac"), normalization="es", stride=128),
              _task("tar-xquad", "qa", 384, _data(dataset="tar-xquad"), normalization="es", stride=128)],
    "teachers": [_model(name, learning_rate=SMALL_RATES if name in ("albeto-large", "albeto-xlarge", "albeto-xxlarge")
                        else RATES)
                 for name in ("beto-cased", "beto-uncased", "distilbeto", "albeto-tiny", "albeto-base", "albeto-large",
                              "albeto-xlarge", "albeto-xxlarge", "bertin", "roberta-bne-base", "roberta-bne-large")],
    "students": [_model("albeto-tiny-student", base="albeto-tiny", finetune=True)] +
                [_model(f"albeto-base-{n}", base="albeto-base", kind="albert-base-n", layers=n, finetune=True)
                 for n in (2, 4, 6, 8, 10)],
    "grid": {"batch_size": [16, 32, 64], "epochs": [2, 3, 4], "learning_rate": RATES},
    "distill": _distill(),
    "speed": {"batch_size": 1, "length": 512, "warmup": 10, "runs": 100, "threads": None, "engines": ENGINES},
}


@pytest.mark.parametrize("path, expected", [(ROOT / "src/speedy/configs/demo.yaml", DEMO),
                                            (ROOT / "configs/paper.yaml", PAPER)], ids=["demo", "paper"])
def test_shipped_configs_load_to_the_values_they_always_did(path, expected):
    loaded, expected = dataclasses.asdict(load_config(path)), copy.deepcopy(expected)
    assert loaded.pop("source") == str(path)
    # Settings added since (issue 14's levers) must be at their defaults, which trial keys leave out
    added = {"grid": {"seeds": None, "select_by": "loss"}, "distill": NEW_SETTINGS}
    for section, defaults in added.items():
        for name, default in defaults.items():
            if name in loaded[section]:
                assert loaded[section].pop(name) == default, (section, name)
    for task in loaded["tasks"]:
        assert task.pop("transfer_files") == []
        # the embedding type's data settings (no trial key holds a task's data settings)
        assert (task["data"].pop("query_prefix"), task["data"].pop("passage_prefix")) == ("query: ", "passage: ")
    wanted = {model["name"]: model.pop("init", "pretrained") for model in expected["teachers"] + expected["students"]}
    for model in loaded["teachers"] + loaded["students"]:
        assert model.pop("init") == wanted[model["name"]]
    # JSON tells 2 from 2.0: the values and their types are those the trial keys were hashed from
    assert json.dumps(loaded, sort_keys=True) == json.dumps(expected, sort_keys=True)
