"""Checking the files of a model folder before anything loads it, so a broken one is one line naming the file.

These checks know nothing of tasks: ``config.json`` readable by transformers, the weights complete and matching
it, a real tokenizer that fits the embeddings. Each raises a :class:`~speedy.errors.SpeedyError` like ``model
folder runs/x/model: tokenizer.json missing (...)``, and ``loading`` turns any exception a loader still raises
into that same one line. What a folder trained by speedy holds beyond that (its task, labels against the head)
and loading its model: :mod:`speedy.trained`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from speedy.errors import SpeedyError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
# A tokenizer's vocabulary lives in one of these (tokenizer.json: the fast tokenizer every speedy folder has).
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "shared.weight")


def first_line(error: BaseException) -> str:
    """The error's first line (with the next one when the first only announces it, ending in a colon)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def fail(path, message: str):
    raise SpeedyError(f"model folder {path}: {message}")


def _read_json(path: Path, folder, name: str):
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        fail(folder, f"{name} is not UTF-8 text")
    except OSError as error:
        fail(folder, f"{name} cannot be read ({first_line(error)})")
    if not text.strip():
        fail(folder, f"{name} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        fail(folder, f"{name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})")


def check_path(path: Path) -> None:
    if not path.exists():
        fail(path, "no such folder")
    if not path.is_dir():
        fail(path, "not a folder (a file: give the folder the model was saved in)")
    if not any(path.iterdir()):
        fail(path, "config.json missing (the folder is empty)")
    if not (path / "config.json").is_file():
        fail(path, "config.json missing (not a model folder saved by speedy or save_pretrained)")


def read_config(path: Path) -> tuple[dict, object]:
    """``config.json``, as JSON and as transformers reads it."""
    raw = _read_json(path / "config.json", path, "config.json")
    if not isinstance(raw, dict):
        fail(path, "config.json is not a JSON object")
    model_type = raw.get("model_type")
    if not model_type:
        fail(path, "config.json has no model_type")
    if model_type not in CONFIG_MAPPING:
        fail(path, f"config.json: unknown model_type '{model_type}'")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - a field of the wrong type, say
        fail(path, f"config.json cannot be read ({first_line(error)})")
    return raw, config


def safetensors_header(file: Path, folder, name: str | None = None) -> dict:
    """The tensor table of a ``.safetensors`` file, after checking the file holds every byte it announces."""
    name = name or file.name
    size = file.stat().st_size
    if size == 0:
        fail(folder, f"{name} is empty")
    with open(file, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            fail(folder, f"{name} is truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", start)
        if length > size - 8:
            fail(folder, f"{name} is corrupt or truncated (its header announces {length} bytes, the file has {size})")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            fail(folder, f"{name} is corrupt (its header is not safetensors JSON)")
    if not isinstance(header, dict):
        fail(folder, f"{name} is corrupt (its header is not a table of tensors)")
    header.pop("__metadata__", None)
    end = 0
    try:
        for tensor in header.values():
            begin, stop = tensor["data_offsets"]
            if not (0 <= begin <= stop) or not isinstance(tensor["shape"], list):
                raise ValueError
            end = max(end, int(stop))
    except (KeyError, TypeError, ValueError):
        fail(folder, f"{name} is corrupt (a tensor entry of its header is malformed)")
    if not header:
        fail(folder, f"{name} holds no tensors")
    if 8 + length + end > size:
        fail(folder, f"{name} is truncated ({size} bytes; its header needs {8 + length + end})")
    if 8 + length + end < size:
        fail(folder, f"{name} is corrupt ({size} bytes; its header describes {8 + length + end})")
    return header


def check_weights(path: Path, config, need_weights: bool) -> tuple[Path | None, int, dict]:
    """The weights file (after checking it), the number of rows of the word embeddings, and the safetensors
    header's tensors (none for a ``pytorch_model.bin`` or no weights)."""
    rows = int(getattr(config, "vocab_size", 0) or 0)
    if (path / WEIGHTS).is_file():
        files, weights = {WEIGHTS: path / WEIGHTS}, path / WEIGHTS
    elif (path / WEIGHTS_INDEX).is_file():
        index = _read_json(path / WEIGHTS_INDEX, path, WEIGHTS_INDEX)
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            fail(path, f"{WEIGHTS_INDEX} has no weight_map")
        for shard in shards:
            if not (path / shard).is_file():
                fail(path, f"{shard} missing (listed in {WEIGHTS_INDEX})")
        files, weights = {shard: path / shard for shard in shards}, path / WEIGHTS_INDEX
    elif (path / TORCH_WEIGHTS).is_file():
        if not zipfile.is_zipfile(path / TORCH_WEIGHTS):
            fail(path, f"{TORCH_WEIGHTS} is corrupt or truncated (not a PyTorch checkpoint)")
        return path / TORCH_WEIGHTS, rows, {}
    else:
        if need_weights:
            fail(path, f"{WEIGHTS} missing (the model's weights)")
        return None, rows, {}
    tensors = {}
    for name, file in files.items():
        tensors.update(safetensors_header(file, path, name))
    weights_name = weights.name
    for key, tensor in tensors.items():
        if key.endswith(EMBEDDING_SUFFIXES) and tensor["shape"]:
            if rows and tensor["shape"][0] != rows:
                fail(path, f"{weights_name}: the word embeddings have {tensor['shape'][0]} rows, but config.json "
                           f"says vocab_size {rows}")
            rows = tensor["shape"][0]
            break
    return weights, rows, tensors


def tokenizer_files(path: Path) -> list[str]:
    return [name for name in VOCAB_FILES if (path / name).is_file()]


def missing_tokenizer_message() -> str:
    return "tokenizer.json missing (no tokenizer files: tokenizer.json or vocab.txt/spiece.model)"


def check_tokenizer(path: Path, rows: int):
    """The folder's tokenizer, after checking its files and that it fits the model's ``rows`` embeddings."""
    present = tokenizer_files(path)
    if not present:
        fail(path, missing_tokenizer_message())
    for name in TOKENIZER_JSON_FILES:
        if (path / name).is_file():
            data = _read_json(path / name, path, name)
            if not isinstance(data, dict):
                fail(path, f"{name} is not a JSON object")
    main = present[0]
    if main == "tokenizer.json":
        model = _read_json(path / main, path, main).get("model")
        if not isinstance(model, dict) or not model.get("vocab"):
            fail(path, "tokenizer.json has no vocabulary (its model.vocab is missing or empty)")
    elif main == "vocab.json" and not (path / "merges.txt").is_file():
        fail(path, "merges.txt missing (vocab.json needs it)")
    elif (path / main).stat().st_size == 0:
        fail(path, f"{main} is empty")
    tokenizer = load_tokenizer_folder(path, main)
    size = len(tokenizer)
    specials = len(set(tokenizer.all_special_tokens))
    if size <= specials:
        fail(path, f"{main}: the tokenizer has no vocabulary besides its {specials} special tokens")
    if tokenizer.pad_token_id is None:
        config_name = "tokenizer_config.json" if (path / "tokenizer_config.json").is_file() else main
        fail(path, f"{config_name}: the tokenizer has no padding token")
    if rows and (size > rows or rows - size > max(64, rows // 100)):
        fail(path, f"{main}: the tokenizer's vocabulary has {size} tokens, but the model has {rows} embeddings "
                   "(the tokenizer of another model?)")
    return tokenizer


def load_tokenizer_folder(path: Path, main: str | None = None):
    """The tokenizer of a local folder, never one made up from ``config.json`` alone (which AutoTokenizer
    does for a folder without tokenizer files: every word becomes the unknown token)."""
    path = Path(path)
    present = tokenizer_files(path)
    if not present:
        fail(path, missing_tokenizer_message())
    main = main or present[0]
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - tokenizers and sentencepiece raise their own exception types
        fail(path, f"{main} cannot be loaded ({first_line(error)})")


@contextmanager
def loading(path, what: str | None = None):
    """Run a loader: any exception it raises (other than a SpeedyError) becomes one line naming the folder."""
    try:
        yield
    except SpeedyError:
        raise
    except Exception as error:  # noqa: BLE001 - the point: no traceback for a broken folder
        raise SpeedyError(f"model folder {path}: {what or 'cannot be loaded'} ({first_line(error)})") from None
