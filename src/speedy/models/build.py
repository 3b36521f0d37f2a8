"""What building a model from a :class:`~speedy.config.ModelSpec` needs before any task head: its tokenizer, and a
check of a student's ``layers`` against its base (the model with the task's head: :mod:`speedy.build`)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from speedy.config import ModelSpec
from speedy.errors import SpeedyError
from speedy.models.folder import load_tokenizer_folder
from speedy.models.registry import resolve


def first_line(error: Exception) -> str:
    """The error's first line (for one-line messages about a model that cannot be loaded)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(source: str):
    """The tokenizer of a folder or Hub id. A folder without tokenizer files is an error: AutoTokenizer would
    make an empty one from ``config.json``'s model type and turn every word into the unknown token."""
    if Path(source).is_dir():
        tokenizer = load_tokenizer_folder(source)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as error:  # noqa: BLE001 - not found locally and no Hub: one clear line
            raise SpeedyError(f"model '{source}': cannot load its tokenizer ({first_line(error)})") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise SpeedyError(f"model '{source}': its tokenizer has no vocabulary besides its special tokens")
    return tokenizer


def check_layers(spec: ModelSpec, cache_dir: Path | None = None, setting: str = "students") -> None:
    """Check a student's ``layers`` against its base's depth before any work starts."""
    if spec.kind == "pretrained":
        return
    source = resolve(spec.base or spec.name, cache_dir)
    try:
        depth = AutoConfig.from_pretrained(source).num_hidden_layers
    except Exception as error:  # noqa: BLE001
        raise SpeedyError(f"model '{spec.name}' ({source}): cannot read its config ({first_line(error)})") from None
    wanted = [spec.layers] if isinstance(spec.layers, int) else list(spec.layers)
    if spec.kind == "albert-base-n" or isinstance(spec.layers, int):
        ok = len(wanted) == 1 and 1 <= wanted[0] <= depth
    else:
        ok = bool(wanted) and wanted == sorted(set(wanted)) and wanted[0] >= 0 and wanted[-1] < depth
    if not ok:
        raise SpeedyError(f"{setting}.layers: {spec.layers} does not fit '{spec.name}', whose base has {depth} layers")
