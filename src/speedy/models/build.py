"""Turn a :class:`~speedy.config.ModelSpec` into a ``(model, tokenizer)`` pair with the task's head."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, set_seed

from speedy.config import ModelSpec
from speedy.errors import SpeedyError
from speedy.models.registry import resolve
from speedy.models.students import albert_base_n, prune_vocabulary, truncate_layers
from speedy.tasks.base import Task


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(source: str):
    """The tokenizer of a folder or Hub id. A folder without tokenizer files is an error: AutoTokenizer would
    make an empty one from ``config.json``'s model type and turn every word into the unknown token."""
    if Path(source).is_dir():
        from speedy.models.folder import load_tokenizer_folder

        tokenizer = load_tokenizer_folder(source)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as error:  # noqa: BLE001 - not found locally and no Hub: one clear line
            raise SpeedyError(f"model '{source}': cannot load its tokenizer ({_first_line(error)})") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise SpeedyError(f"model '{source}': its tokenizer has no vocabulary besides its special tokens")
    return tokenizer


def check_layers(spec: ModelSpec, cache_dir: Path | None = None, setting: str = "students") -> None:
    """Check a student's ``layers`` against its base's depth before any work starts."""
    if spec.kind == "pretrained":
        return
    from transformers import AutoConfig

    source = resolve(spec.base or spec.name, cache_dir)
    try:
        depth = AutoConfig.from_pretrained(source).num_hidden_layers
    except Exception as error:  # noqa: BLE001
        raise SpeedyError(f"model '{spec.name}' ({source}): cannot read its config ({_first_line(error)})") from None
    wanted = [spec.layers] if isinstance(spec.layers, int) else list(spec.layers)
    if spec.kind == "albert-base-n" or isinstance(spec.layers, int):
        ok = len(wanted) == 1 and 1 <= wanted[0] <= depth
    else:
        ok = bool(wanted) and wanted == sorted(set(wanted)) and wanted[0] >= 0 and wanted[-1] < depth
    if not ok:
        raise SpeedyError(f"{setting}.layers: {spec.layers} does not fit '{spec.name}', whose base has {depth} layers")


def build_model(spec: ModelSpec, task: Task, corpus: list[str], cache_dir: Path | None = None,
                seed: int | None = None):
    """The model with a freshly initialised task head, and its tokenizer.

    With ``seed``, every random generator is seeded right before the model is built, after the base is resolved:
    resolving may convert an offline base on first use, which draws random numbers, and a trial's result must
    not depend on whether that happened in the same process."""
    source = resolve(spec.base or spec.name, cache_dir)
    tokenizer = load_tokenizer(source)
    if seed is not None:
        set_seed(seed)
    try:
        if spec.kind == "albert-base-n":
            model = albert_base_n(source, int(spec.layers), task.model_class(), num_labels=len(task.labels),
                                  id2label=dict(enumerate(task.labels)), label2id=task.label2id)
        else:
            model = task.load_model(source)
    except SpeedyError:
        raise
    except Exception as error:  # noqa: BLE001
        raise SpeedyError(f"model '{spec.name}' ({source}): cannot load ({_first_line(error)})") from None
    if spec.kind == "truncate":
        keep = list(range(spec.layers)) if isinstance(spec.layers, int) else list(spec.layers)
        truncate_layers(model, keep)
    if spec.prune_vocab:
        model, tokenizer = prune_vocabulary(model, tokenizer, corpus)
    return model, tokenizer
