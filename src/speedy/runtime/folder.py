"""An exported model folder read without torch or transformers: ``config.json`` (its speedy task, labels and
length), ``tokenizer.json`` and the ONNX graph of an engine. A broken folder is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from speedy.errors import SpeedyError


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise SpeedyError(f"model folder {path.parent}: no {path.name}")
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpeedyError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise SpeedyError(f"{path}: not a JSON object")
    return value


def task_info(path: Path, raw: dict, types: dict) -> tuple[dict, list[str], int]:
    """``speedy_task``, the labels (by id) and the trained length of a ``config.json`` (``raw``), checked against
    the runtime task types ``types``."""
    info = raw.get("speedy_task")
    if not isinstance(info, dict) or info.get("type") not in types:
        kind = info.get("type") if isinstance(info, dict) else info
        raise SpeedyError(f"{path}: speedy_task type '{kind}' cannot be served without torch (allowed: "
                          f"{', '.join(types)}); train the model with speedy, or use --engine torch")
    max_length = info.get("max_length") or 128
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise SpeedyError(f"{path}: speedy_task.max_length must be a positive whole number, not {max_length!r}")
    runtime = types[info["type"]]
    if runtime.fixed_labels:
        return info, list(runtime.fixed_labels), max_length
    id2label = raw.get("id2label")
    try:
        labels = [id2label[k] for k in sorted(id2label, key=int)]
        valid = sorted(int(k) for k in id2label) == list(range(len(labels)))
    except (TypeError, ValueError, AttributeError):
        valid = False
    if not valid or not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise SpeedyError(f"{path}: id2label must map the ids 0, 1, 2... to distinct non-empty labels")
    if len(labels) < runtime.min_labels:
        raise SpeedyError(f"{path}: a {info['type']} model needs {runtime.min_labels} or more labels in id2label, "
                          f"not {len(labels)}")
    return info, labels, max_length


def signature(raw: dict) -> dict:
    """What an exported graph must agree with its ``config.json`` on (the ONNX file's ``speedy_config``
    metadata; ``speedy.bench.export.config_signature`` writes the same from a transformers config)."""
    labels = raw.get("id2label")
    return {"model_type": raw.get("model_type"), "vocab_size": raw.get("vocab_size"),
            "hidden_size": raw.get("hidden_size", raw.get("dim")),
            "num_hidden_layers": raw.get("num_hidden_layers", raw.get("n_layers")),
            "num_labels": raw.get("num_labels", len(labels) if isinstance(labels, dict) else 2),
            "task": (raw.get("speedy_task") or {}).get("type")}
