"""A task type is one module: every registered type declares all the registry asks of it, and a new type defined
here (``RegressionTask``, the worked example of docs/architecture.md) runs through config validation, data
loading, encoding, a whole study (fine-tuning, selection, KD, evaluation, measures, report), the plan, MACs,
``speedy predict``, the server and ONNX export, registered with one line and no other module touched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from conftest import make_examples
from speedy.data.readers import load_hub_split, read_labelled_texts
from speedy.errors import SpeedyError, where
from speedy.tasks import TASK_CLASSES
from speedy.tasks.base import MAX, MIN, InputField, Task, lower_is_better


class RegressionTask(Task):
    """A score per text, read from a TSV/CSV/JSONL ``label`` column; one output, trained on mean squared error."""

    type = "regression"
    primary_metric = "r2"
    selection_metric = "mse"  # minimised: the direction comes from ``metrics``, not from the name
    metrics = {"mse": MIN, "r2": MAX}
    fixed_labels = ("score",)  # one output, not a label set of the data
    head_architecture = "ForSequenceClassification"
    pipeline_tag = "text-classification"
    route, route_help = "/score", "Score each text."
    inputs = {"text": InputField("The text.")}
    results = {"score": float}

    def model_class(self):
        return AutoModelForSequenceClassification

    @classmethod
    def read_file(cls, path, options, report=print):
        return read_labelled_texts(path, options.get("text", "text"), options.get("label", "label"),
                                   fmt=options.get("format"))

    @classmethod
    def load_hub(cls, name, config, split, columns):
        return load_hub_split(name, config, split, columns["text"], columns["label"])

    def encode(self, dataset, tokenizer, max_length, with_index=False, source=""):
        encoded = tokenizer(list(dataset["text"]), truncation=True, max_length=max_length)
        columns = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
        columns["labels"] = [self.value(label, line, source) for label, line in zip(dataset["label"], dataset["line"])]
        if with_index:
            columns["example_index"] = list(range(len(dataset)))
        return Dataset.from_dict(columns)

    @staticmethod
    def value(label: str, line: int, source: str) -> float:
        try:
            return float(label)
        except ValueError:
            raise SpeedyError(f"{where(source or 'data', line)}: '{label}' is not a number") from None

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, predictions, label_ids):
        predicted, gold = np.asarray(predictions).reshape(-1), np.asarray(label_ids).reshape(-1)
        mse = float(np.mean((predicted - gold) ** 2))
        return {"mse": mse, "r2": 1.0 - mse / max(float(np.var(gold)), 1e-12)}

    def teacher_rows(self, outputs, batch, signal="logits"):
        self.row_dim(signal)
        scores = outputs.logits.detach().float().cpu().numpy()
        for example, row in zip(batch["example_index"].tolist(), scores):
            yield example, np.zeros(1, dtype=np.int64), row[None, :]

    def kd_rows(self, outputs, inputs, extras, cache, signal="logits", student_signal=None):
        self.row_dim(signal)
        teacher, _ = cache.rows(extras["example_index"].tolist(), signal)
        return outputs.logits, teacher.to(outputs.logits.device), None  # no class labels: distil with alpha 0

    def input_item(self, fields):
        return fields["text"]

    def predict_items(self, model, tokenizer, items, max_length):
        inputs = tokenizer(items, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return [{"score": float(score)} for score in model(**inputs).logits[:, 0].float()]


REQUIRED = [name for name, annotation in Task.__annotations__.items()
            if "ClassVar" in str(annotation) and not hasattr(Task, name)]


@pytest.mark.parametrize("task_class", [*TASK_CLASSES.values(), RegressionTask], ids=lambda c: c.type)
def test_every_task_type_declares_what_the_registry_asks(task_class):
    assert REQUIRED and not [name for name in REQUIRED if not hasattr(task_class, name)]
    assert not task_class.__abstractmethods__
    assert task_class.fixed_labels or task_class.gold_labels is not Task.gold_labels  # how its label set is read
    assert task_class.selection_metric in task_class.metric_names({})
    for name, direction in task_class.metrics.items():
        assert direction in (MAX, MIN) and lower_is_better(name) == (direction == MIN)
    assert task_class.inputs and task_class.results and task_class.onnx_outputs
    assert task_class.route.startswith("/") and task_class.route not in (c.route for c in TASK_CLASSES.values()
                                                                           if c is not task_class)
    for name, (_what, allowed) in task_class.choices.items():
        assert allowed and name in ("scheme", "normalization", "stride", "max_windows")  # TaskSpec's settings


@pytest.fixture(scope="module")
def registered():
    """The new type in the registry: the one line a real one adds to ``speedy/tasks/__init__.py``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TASK_CLASSES, RegressionTask.type, RegressionTask)
        yield RegressionTask


def score_files(folder) -> dict:
    """train / validation / test TSV files whose score (1 for sport, 0 for politics) follows from the words."""
    files = {}
    for split, (count, seed) in {"train": (64, 2), "validation": (16, 3), "test": (16, 4)}.items():
        rows = [("1.0" if label == "deporte" else "0.0", text) for label, text in make_examples(count, seed)]
        files[split] = folder / f"{split}.tsv"
        files[split].write_text("label\ttext\n" + "".join(f"{s}\t{t}\n" for s, t in rows), "utf-8")
    return {split: str(path) for split, path in files.items()}


def write_config(folder, bert_dir, **distill) -> str:
    config = {
        "name": "scores", "output_dir": str(folder / "out"), "seed": 1,
        "tasks": [{"name": "scores", "type": "regression", "max_length": 32, "data": score_files(folder)}],
        "teachers": [{"name": "teacher", "base": str(bert_dir)}],
        "students": [{"name": "student", "base": str(bert_dir), "kind": "truncate", "layers": 2}],
        "grid": {"batch_size": [16], "epochs": [2], "learning_rate": [1e-3]},
        "distill": {"epochs": 2, "patience": 2, "batch_size": 16, "learning_rate": 1e-3, "loss": "mse", **distill},
        "speed": {"batch_size": 1, "length": 16, "warmup": 1, "runs": 3, "engines": ["torch"]},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_an_unregistered_type_is_refused_and_a_registered_one_checked_by_its_declarations(tmp_path, bert_dir):
    from speedy.configfile import load_config

    with pytest.raises(SpeedyError, match=r"tasks\[0\].type: unknown task type 'regression' \(allowed: "
                                          r"classification, tagging, qa, embedding\)"):
        load_config(write_config(tmp_path, bert_dir))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TASK_CLASSES, RegressionTask.type, RegressionTask)
        assert load_config(write_config(tmp_path, bert_dir, metric="r2")).tasks[0].type == "regression"
        with pytest.raises(SpeedyError, match=r"distill.metric: task 'scores' \(regression\) has no validation "
                                              r"metric 'accuracy' \(allowed: loss, mse, r2\)"):
            load_config(write_config(tmp_path, bert_dir, metric="accuracy"))


@pytest.fixture(scope="module")
def study(registered, tmp_path_factory, bert_dir):
    """A whole study of the new type, run in this process (the registry line is only here)."""
    from speedy.configfile import load_config
    from speedy.pipeline import Study

    study = Study(load_config(write_config(tmp_path_factory.mktemp("regression"), bert_dir)))
    study.run()
    return study


def test_data_loading_and_encoding_follow_the_type(registered, tmp_path, bert_dir):
    from transformers import AutoTokenizer

    from speedy.config import DataSpec, TaskSpec
    from speedy.tasks import load_task_data, make_task

    spec = TaskSpec(name="scores", type="regression", data=DataSpec(**score_files(tmp_path)))
    data = load_task_data(spec, tmp_path, tmp_path)
    assert data.labels == ["score"] and len(data.splits["train"]) == 64
    task = make_task("regression", data.labels, spec)
    assert isinstance(task, RegressionTask) and task.describe(32) == {"type": "regression", "max_length": 32}
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    encoded = task.encode(data.splits["train"], tokenizer, 32, with_index=True)
    assert encoded["labels"][:2] == [1.0, 0.0] and encoded["example_index"][:2] == [0, 1]
    broken = Dataset.from_dict({"text": ["hola"], "label": ["mucho"], "line": [7]})
    with pytest.raises(SpeedyError, match="train.tsv:7: 'mucho' is not a number"):
        task.encode(broken, tokenizer, 32, source="train.tsv")


def test_a_whole_study_of_the_new_type_selects_distils_evaluates_and_measures(study):
    from speedy.plan import plan

    teachers, students = study.store.trials("finetune", "scores"), study.store.trials("distill", "scores")
    assert len(teachers) == 1 and [t.name for t in students] == ["student (KD)"]
    assert study.store.selection("scores").key == teachers[0].key
    for trial in teachers + students:
        assert set(trial.test_metrics) == {"mse", "r2"} and trial.test_metrics["mse"] >= 0
        assert "mse" in trial.val_metrics and study.store.measurement(trial.key, "size")["macs"] > 0
    assert {(t.stage, t.settings) for t in plan(study.config)} == {(t.stage, t.name) for t in study.store.trials()}
    assert "student, KD" in (study.output_dir / "report" / "report.md").read_text()


def test_its_head_macs_and_model_folder_follow_its_declarations(study):
    from speedy.bench.macs import count_macs, encoder_macs
    from speedy.trained import check_model_folder, load_torch_model

    folder = study.store.trials("distill", "scores")[0].checkpoint
    checked = check_model_folder(folder)
    assert isinstance(checked.task, RegressionTask) and checked.task.labels == ["score"]
    model = load_torch_model(folder)
    config = model.config
    counted = count_macs(model, batch_size=2, length=20)["macs"]
    assert encoder_macs(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.hidden_size,
                        20, 2, "regression", outputs=7) == counted  # one output (fixed_labels), whatever is asked


def test_predict_serve_and_export_a_model_of_the_new_type(study, tmp_path):
    fastapi = pytest.importorskip("fastapi")  # noqa: F841 - the serve extra
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from speedy.bench.export import check_export, export_onnx
    from speedy.cli import app
    from speedy.predictor import Predictor
    from speedy.serve.app import ServeSettings, create_app
    from speedy.trained import load_torch_model

    folder = study.store.trials("distill", "scores")[0].checkpoint
    [scored] = Predictor(folder, "torch").run_batch(["El equipo ganó el partido ayer."])
    assert set(scored) == {"score"} and isinstance(scored["score"], float)
    result = CliRunner().invoke(app, ["predict", "--model", folder, "--text", "El equipo ganó el partido ayer."])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == pytest.approx(scored)
    empty = CliRunner().invoke(app, ["predict", "--model", folder, "--text", " "])
    assert empty.exit_code != 0 and "a regression model needs a non-empty --text" in empty.output
    with TestClient(create_app(folder, ServeSettings(engine="torch"))) as client:
        answer = client.post("/score", json={"inputs": [{"text": "El equipo ganó el partido ayer."}]})
        assert answer.status_code == 200 and answer.json()["results"][0]["score"] == pytest.approx(scored["score"])
        assert set(client.get("/openapi.json").json()["paths"]) == {"/score", "/health"}
        assert client.post("/score", json={"inputs": [{"question": "¿Qué?"}]}).status_code == 422
    model = load_torch_model(folder)
    export_onnx(model, tmp_path / "onnx")
    assert check_export(model, tmp_path / "onnx")["fp32_max_abs_diff"] < 1e-4
