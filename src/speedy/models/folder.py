"""Checking a user-given model folder before anything loads it, so a broken one is one line naming the file.

``check_model_folder`` reads only what it must (``config.json``, the weights' header, the tokenizer) and raises a
:class:`~speedy.errors.SpeedyError` like ``model folder runs/x/model: tokenizer.json missing (...)``.
``loading`` turns any exception a loader still raises into that same one line, and ``load_torch_model`` loads the
weights refusing any the checkpoint does not hold (Hugging Face would start them at random, silently).
"""

from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from speedy.errors import SpeedyError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
# A tokenizer's vocabulary lives in one of these (tokenizer.json: the fast tokenizer every speedy folder has).
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
HEADS = {"classification": "ForSequenceClassification", "tagging": "ForTokenClassification",
         "qa": "ForQuestionAnswering"}
EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "shared.weight")
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


def first_line(error: BaseException) -> str:
    """The error's first line (with the next one when the first only announces it, ending in a colon)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _fail(path, message: str):
    raise SpeedyError(f"model folder {path}: {message}")


def _read_json(path: Path, folder, name: str):
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        _fail(folder, f"{name} is not UTF-8 text")
    except OSError as error:
        _fail(folder, f"{name} cannot be read ({first_line(error)})")
    if not text.strip():
        _fail(folder, f"{name} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        _fail(folder, f"{name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})")


def _check_path(path: Path) -> None:
    if not path.exists():
        _fail(path, "no such folder")
    if not path.is_dir():
        _fail(path, "not a folder (a file: give the folder the model was saved in)")
    if not any(path.iterdir()):
        _fail(path, "config.json missing (the folder is empty)")
    if not (path / "config.json").is_file():
        _fail(path, "config.json missing (not a model folder saved by speedy or save_pretrained)")


def _check_config(path: Path, need_task: bool) -> tuple[dict, object]:
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = _read_json(path / "config.json", path, "config.json")
    if not isinstance(raw, dict):
        _fail(path, "config.json is not a JSON object")
    model_type = raw.get("model_type")
    if not model_type:
        _fail(path, "config.json has no model_type")
    if model_type not in CONFIG_MAPPING:
        _fail(path, f"config.json: unknown model_type '{model_type}'")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - a field of the wrong type, say
        _fail(path, f"config.json cannot be read ({first_line(error)})")
    if need_task:
        _check_labels(path, raw, config)
    return raw, config


def _check_labels(path: Path, raw: dict, config) -> None:
    from speedy.tasks import TASK_CLASSES

    info = raw.get("speedy_task")
    if not info:
        _fail(path, "config.json has no speedy_task (the task it was trained for: train it with speedy)")
    if not isinstance(info, dict) or info.get("type") not in TASK_CLASSES:
        kind = info.get("type") if isinstance(info, dict) else info
        _fail(path, f"config.json: speedy_task type '{kind}' is unknown (allowed: {', '.join(TASK_CLASSES)})")
    for key in ("max_length", "stride"):
        value = info.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            _fail(path, f"config.json: speedy_task.{key} must be a positive whole number, not {value!r}")
    architecture = (raw.get("architectures") or [None])[0]
    head = HEADS[info["type"]]
    if architecture is not None and not str(architecture).endswith(head):
        _fail(path, f"config.json: unknown task head '{architecture}' for a {info['type']} model "
                    f"(expected a ...{head} model)")
    if info["type"] == "qa":
        return
    id2label = raw.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        _fail(path, f"config.json has no id2label (the labels of the {info['type']} model)")
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        _fail(path, "config.json: id2label keys must be the label ids 0, 1, 2...")
    if ids != list(range(len(ids))):
        _fail(path, f"config.json: id2label keys must be the label ids 0..{len(ids) - 1}, not {ids}")
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    if not all(isinstance(label, str) and label for label in labels):
        _fail(path, "config.json: id2label has a label that is not a non-empty string")
    if len(set(labels)) != len(labels):
        _fail(path, "config.json: id2label names a label twice")
    if "num_labels" in raw and raw["num_labels"] != len(labels):
        _fail(path, f"config.json: num_labels is {raw['num_labels']} but id2label has {len(labels)} labels")
    label2id = raw.get("label2id")
    if label2id is not None and (not isinstance(label2id, dict) or
                                 {str(k): str(v) for k, v in label2id.items()} !=
                                 {str(v): str(k) for k, v in id2label.items()}):
        _fail(path, "config.json: label2id does not match id2label")
    if info["type"] == "classification" and len(labels) < 2:
        _fail(path, f"config.json: a classification model needs 2 or more labels in id2label, not {len(labels)}")
    fallback = info.get("fallback")
    if fallback is not None and fallback not in labels:
        _fail(path, f"config.json: speedy_task.fallback '{fallback}' is not one of the labels in id2label")
    if config.num_labels != len(labels):
        _fail(path, f"config.json: num_labels is {config.num_labels} but id2label has {len(labels)} labels")


def safetensors_header(file: Path, folder, name: str | None = None) -> dict:
    """The tensor table of a ``.safetensors`` file, after checking the file holds every byte it announces."""
    name = name or file.name
    size = file.stat().st_size
    if size == 0:
        _fail(folder, f"{name} is empty")
    with open(file, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            _fail(folder, f"{name} is truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", start)
        if length > size - 8:
            _fail(folder, f"{name} is corrupt or truncated (its header announces {length} bytes, the file has {size})")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            _fail(folder, f"{name} is corrupt (its header is not safetensors JSON)")
    if not isinstance(header, dict):
        _fail(folder, f"{name} is corrupt (its header is not a table of tensors)")
    header.pop("__metadata__", None)
    end = 0
    try:
        for tensor in header.values():
            begin, stop = tensor["data_offsets"]
            if not (0 <= begin <= stop) or not isinstance(tensor["shape"], list):
                raise ValueError
            end = max(end, int(stop))
    except (KeyError, TypeError, ValueError):
        _fail(folder, f"{name} is corrupt (a tensor entry of its header is malformed)")
    if not header:
        _fail(folder, f"{name} holds no tensors")
    if 8 + length + end > size:
        _fail(folder, f"{name} is truncated ({size} bytes; its header needs {8 + length + end})")
    if 8 + length + end < size:
        _fail(folder, f"{name} is corrupt ({size} bytes; its header describes {8 + length + end})")
    return header


def _check_weights(path: Path, config, task, need_weights: bool) -> tuple[Path | None, int]:
    """The weights file (after checking it) and the number of rows of the word embeddings."""
    rows = int(getattr(config, "vocab_size", 0) or 0)
    if (path / WEIGHTS).is_file():
        files, weights = {WEIGHTS: path / WEIGHTS}, path / WEIGHTS
    elif (path / WEIGHTS_INDEX).is_file():
        index = _read_json(path / WEIGHTS_INDEX, path, WEIGHTS_INDEX)
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            _fail(path, f"{WEIGHTS_INDEX} has no weight_map")
        for shard in shards:
            if not (path / shard).is_file():
                _fail(path, f"{shard} missing (listed in {WEIGHTS_INDEX})")
        files, weights = {shard: path / shard for shard in shards}, path / WEIGHTS_INDEX
    elif (path / TORCH_WEIGHTS).is_file():
        import zipfile

        if not zipfile.is_zipfile(path / TORCH_WEIGHTS):
            _fail(path, f"{TORCH_WEIGHTS} is corrupt or truncated (not a PyTorch checkpoint)")
        return path / TORCH_WEIGHTS, rows
    else:
        if need_weights:
            _fail(path, f"{WEIGHTS} missing (the model's weights)")
        return None, rows
    tensors = {}
    for name, file in files.items():
        tensors.update(safetensors_header(file, path, name))
    weights_name = weights.name
    for key, tensor in tensors.items():
        if key.endswith(EMBEDDING_SUFFIXES) and tensor["shape"]:
            if rows and tensor["shape"][0] != rows:
                _fail(path, f"{weights_name}: the word embeddings have {tensor['shape'][0]} rows, but config.json "
                            f"says vocab_size {rows}")
            rows = tensor["shape"][0]
            break
    if task is not None:
        wanted = 2 if task.type == "qa" else len(task.labels)
        for key in HEAD_TENSORS:
            shape = next((t["shape"] for k, t in tensors.items() if k == key or k.endswith("." + key)), None)
            if shape:
                if shape[0] != wanted:
                    what = "start/end outputs" if task.type == "qa" else "labels in config.json's id2label"
                    _fail(path, f"{weights_name}: the task head ({key}) has {shape[0]} outputs, but there are "
                                f"{wanted} {what}")
                break
    return weights, rows


def tokenizer_files(path: Path) -> list[str]:
    return [name for name in VOCAB_FILES if (path / name).is_file()]


def missing_tokenizer_message() -> str:
    return "tokenizer.json missing (no tokenizer files: tokenizer.json or vocab.txt/spiece.model)"


def _check_tokenizer(path: Path, rows: int):
    present = tokenizer_files(path)
    if not present:
        _fail(path, missing_tokenizer_message())
    for name in TOKENIZER_JSON_FILES:
        if (path / name).is_file():
            data = _read_json(path / name, path, name)
            if not isinstance(data, dict):
                _fail(path, f"{name} is not a JSON object")
    main = present[0]
    if main == "tokenizer.json":
        model = _read_json(path / main, path, main).get("model")
        if not isinstance(model, dict) or not model.get("vocab"):
            _fail(path, "tokenizer.json has no vocabulary (its model.vocab is missing or empty)")
    elif main == "vocab.json" and not (path / "merges.txt").is_file():
        _fail(path, "merges.txt missing (vocab.json needs it)")
    elif (path / main).stat().st_size == 0:
        _fail(path, f"{main} is empty")
    tokenizer = load_tokenizer_folder(path, main)
    size = len(tokenizer)
    specials = len(set(tokenizer.all_special_tokens))
    if size <= specials:
        _fail(path, f"{main}: the tokenizer has no vocabulary besides its {specials} special tokens")
    if tokenizer.pad_token_id is None:
        config_name = "tokenizer_config.json" if (path / "tokenizer_config.json").is_file() else main
        _fail(path, f"{config_name}: the tokenizer has no padding token")
    if rows and (size > rows or rows - size > max(64, rows // 100)):
        _fail(path, f"{main}: the tokenizer's vocabulary has {size} tokens, but the model has {rows} embeddings "
                    "(the tokenizer of another model?)")
    return tokenizer


def load_tokenizer_folder(path: Path, main: str | None = None):
    """The tokenizer of a local folder, never one made up from ``config.json`` alone (which AutoTokenizer
    does for a folder without tokenizer files: every word becomes the unknown token)."""
    from transformers import AutoTokenizer

    path = Path(path)
    present = tokenizer_files(path)
    if not present:
        _fail(path, missing_tokenizer_message())
    main = main or present[0]
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - tokenizers and sentencepiece raise their own exception types
        _fail(path, f"{main} cannot be loaded ({first_line(error)})")


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
    _check_path(path)
    key = (str(path.resolve()), need_tokenizer, need_weights, need_task)
    try:
        signature = _signature(path)
    except OSError as error:
        _fail(path, f"cannot be read ({first_line(error)})")
    cached = _CHECKED.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    with loading(path):
        raw, config = _check_config(path, need_task)
        task, max_length = None, 128
        if need_task:
            from speedy.tasks import task_from_model

            task, max_length = task_from_model(config)
        weights, rows = _check_weights(path, config, task, need_weights)
        tokenizer = _check_tokenizer(path, rows) if need_tokenizer else None
    folder = ModelFolder(path, config, task, max_length, tokenizer, weights, rows)
    _CHECKED[key] = (signature, folder)
    while len(_CHECKED) > 16:  # a long run (a study's measure stage) checks many folders: keep the latest
        _CHECKED.pop(next(iter(_CHECKED)))
    return folder


@contextmanager
def loading(path, what: str | None = None):
    """Run a loader: any exception it raises (other than a SpeedyError) becomes one line naming the folder."""
    try:
        yield
    except SpeedyError:
        raise
    except Exception as error:  # noqa: BLE001 - the point: no traceback for a broken folder
        raise SpeedyError(f"model folder {path}: {what or 'cannot be loaded'} ({first_line(error)})") from None


def load_torch_model(path, model_class=None):
    """The PyTorch model of a checked speedy folder, refusing weights the checkpoint lacks or has in other shapes."""
    folder = check_model_folder(path, need_tokenizer=False)
    model_class = model_class or folder.task.model_class()
    name = folder.weights.name if folder.weights is not None else WEIGHTS
    with loading(path, f"{name} cannot be loaded"):
        model, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k]
    if missing:
        _fail(path, f"{name} lacks {len(missing)} of the model's weights ({', '.join(sorted(missing)[:3])}"
                    f"{', ...' if len(missing) > 3 else ''})")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0]
        _fail(path, f"{name}: {first[0] if isinstance(first, (tuple, list)) else first} has the wrong shape")
    return model.eval()
