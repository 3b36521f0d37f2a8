"""A model folder trained by speedy: the task it was trained for, checked against its labels and its head, and its
PyTorch model loaded with that head.

``check_model_folder`` reads only what it must (``config.json``, the weights' header, the tokenizer: the file
checks of :mod:`speedy.models.folder`) and raises a :class:`~speedy.errors.SpeedyError` like ``model folder
runs/x/model: config.json has no speedy_task (...)``; ``load_torch_model`` loads the weights refusing any the
checkpoint does not hold (Hugging Face would start them at random, silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speedy.models.folder import (WEIGHTS, check_path, check_tokenizer, check_weights, fail, first_line, loading,
                                  read_config)
from speedy.tasks import TASK_CLASSES, task_from_model

HEAD_TENSORS = ("classifier.out_proj.weight", "classifier.weight", "qa_outputs.weight")


@dataclass
class ModelFolder:
    """A checked model folder: its config, task, trained length, tokenizer (if asked for) and weights file."""

    path: Path
    config: object
    task: object
    max_length: int
    tokenizer: object | None
    weights: Path | None
    embedding_rows: int


def _check_labels(path: Path, raw: dict, config) -> None:
    info = raw.get("speedy_task")
    if not info:
        fail(path, "config.json has no speedy_task (the task it was trained for: train it with speedy)")
    if not isinstance(info, dict) or info.get("type") not in TASK_CLASSES:
        kind = info.get("type") if isinstance(info, dict) else info
        fail(path, f"config.json: speedy_task type '{kind}' is unknown (allowed: {', '.join(TASK_CLASSES)})")
    for key in ("max_length", "stride"):
        value = info.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            fail(path, f"config.json: speedy_task.{key} must be a positive whole number, not {value!r}")
    task_class = TASK_CLASSES[info["type"]]
    architecture = (raw.get("architectures") or [None])[0]
    head = task_class.head_architecture
    if architecture is not None and not str(architecture).endswith(head):
        fail(path, f"config.json: unknown task head '{architecture}' for a {info['type']} model "
                   f"(expected a ...{head} model)")
    if task_class.fixed_labels:  # its outputs are not labels of the data: id2label says nothing
        return
    id2label = raw.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        fail(path, f"config.json has no id2label (the labels of the {info['type']} model)")
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        fail(path, "config.json: id2label keys must be the label ids 0, 1, 2...")
    if ids != list(range(len(ids))):
        fail(path, f"config.json: id2label keys must be the label ids 0..{len(ids) - 1}, not {ids}")
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    if not all(isinstance(label, str) and label for label in labels):
        fail(path, "config.json: id2label has a label that is not a non-empty string")
    if len(set(labels)) != len(labels):
        fail(path, "config.json: id2label names a label twice")
    if "num_labels" in raw and raw["num_labels"] != len(labels):
        fail(path, f"config.json: num_labels is {raw['num_labels']} but id2label has {len(labels)} labels")
    label2id = raw.get("label2id")
    if label2id is not None and (not isinstance(label2id, dict) or
                                 {str(k): str(v) for k, v in label2id.items()} !=
                                 {str(v): str(k) for k, v in id2label.items()}):
        fail(path, "config.json: label2id does not match id2label")
    if len(labels) < task_class.min_labels:
        fail(path, f"config.json: a {info['type']} model needs {task_class.min_labels} or more labels in id2label, not "
                   f"{len(labels)}")
    fallback = info.get("fallback")
    if fallback is not None and fallback not in labels:
        fail(path, f"config.json: speedy_task.fallback '{fallback}' is not one of the labels in id2label")
    if config.num_labels != len(labels):
        fail(path, f"config.json: num_labels is {config.num_labels} but id2label has {len(labels)} labels")


def _check_head(path: Path, weights: Path | None, tensors: dict, task) -> None:
    """The task head's outputs in the weights' ``tensors`` (their safetensors header) against the task's labels
    (or its fixed outputs: QA's start/end)."""
    if task is None:
        return
    wanted = len(task.labels)
    for key in HEAD_TENSORS:
        shape = next((t["shape"] for k, t in tensors.items() if k == key or k.endswith("." + key)), None)
        if shape:
            if shape[0] != wanted:
                what = (f"{'/'.join(task.fixed_labels)} outputs" if task.fixed_labels else
                        "labels in config.json's id2label")
                fail(path, f"{weights.name}: the task head ({key}) has {shape[0]} outputs, but there are "
                           f"{wanted} {what}")
            break


_CHECKED: dict = {}


def _signature(path: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


def check_model_folder(path, need_tokenizer: bool = True, need_weights: bool = True,
                       need_task: bool = True) -> ModelFolder:
    """Check a model folder a user gave: ``config.json`` (readable, a speedy task and consistent labels), the
    weights (present when ``need_weights``, complete, matching the config) and, when ``need_tokenizer``, a real
    tokenizer whose vocabulary fits the model's embeddings. Raises a one-line :class:`SpeedyError` naming the
    folder and the file at fault; returns what it read. A folder checked before and unchanged is not read again."""
    path = Path(path)
    check_path(path)
    key = (str(path.resolve()), need_tokenizer, need_weights, need_task)
    try:
        signature = _signature(path)
    except OSError as error:
        fail(path, f"cannot be read ({first_line(error)})")
    cached = _CHECKED.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    with loading(path):
        raw, config = read_config(path)
        task, max_length = None, 128
        if need_task:
            _check_labels(path, raw, config)
            task, max_length = task_from_model(config)
        weights, rows, tensors = check_weights(path, config, need_weights)
        _check_head(path, weights, tensors, task)
        tokenizer = check_tokenizer(path, rows) if need_tokenizer else None
    folder = ModelFolder(path, config, task, max_length, tokenizer, weights, rows)
    _CHECKED[key] = (signature, folder)
    while len(_CHECKED) > 16:  # a long run (a study's measure stage) checks many folders: keep the latest
        _CHECKED.pop(next(iter(_CHECKED)))
    return folder


def load_torch_model(path, model_class=None):
    """The PyTorch model of a checked speedy folder, refusing weights the checkpoint lacks or has in other shapes."""
    folder = check_model_folder(path, need_tokenizer=False)
    model_class = model_class or folder.task.model_class()
    name = folder.weights.name if folder.weights is not None else WEIGHTS
    with loading(path, f"{name} cannot be loaded"):
        model, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k]
    if missing:
        fail(path, f"{name} lacks {len(missing)} of the model's weights ({', '.join(sorted(missing)[:3])}"
                   f"{', ...' if len(missing) > 3 else ''})")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0]
        fail(path, f"{name}: {first[0] if isinstance(first, (tuple, list)) else first} has the wrong shape")
    return model.eval()
