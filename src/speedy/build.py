"""Turn a :class:`~speedy.config.ModelSpec` into a ``(model, tokenizer)`` pair with the task's head."""

from __future__ import annotations

from pathlib import Path

from transformers import set_seed

from speedy.config import ModelSpec
from speedy.errors import SpeedyError
from speedy.models.build import first_line, load_tokenizer
from speedy.models.registry import resolve
from speedy.models.students import albert_base_n, prune_vocabulary, truncate_layers
from speedy.tasks.base import Task


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
        raise SpeedyError(f"model '{spec.name}' ({source}): cannot load ({first_line(error)})") from None
    if spec.kind == "truncate":
        truncate_layers(model, kept_layers(spec))
    if spec.prune_vocab:
        model, tokenizer = prune_vocabulary(model, tokenizer, corpus)
    return model, tokenizer


def build_from_teacher(spec: ModelSpec, task: Task, teacher_checkpoint: str, seed: int | None = None):
    """A student made of the fine-tuned teacher's own layers (``spec.layers``: how many, or which), with its
    embeddings, vocabulary and task head: DistilBERT's initialisation (Sanh et al., 2019), here from the task's
    teacher rather than the pretrained model. ``spec.base`` and ``prune_vocab`` do not apply (the teacher's
    vocabulary is already the task's)."""
    tokenizer = load_tokenizer(teacher_checkpoint)
    if seed is not None:
        set_seed(seed)
    try:
        model = task.model_class().from_pretrained(teacher_checkpoint)
    except Exception as error:  # noqa: BLE001
        raise SpeedyError(f"student '{spec.name}': cannot load the teacher {teacher_checkpoint} "
                          f"({first_line(error)})") from None
    if spec.layers is not None:
        truncate_layers(model, kept_layers(spec))
    return model, tokenizer


def kept_layers(spec: ModelSpec) -> list[int]:
    """The layer indices a truncated model keeps: the first n, or the ones listed."""
    return list(range(spec.layers)) if isinstance(spec.layers, int) else list(spec.layers)
