"""Task types. Each is one module, a :class:`~speedy.tasks.base.Task` subclass that declares everything about
it; ``TASK_CLASSES`` is the one place that names them, and every other module asks the class found here."""

from collections.abc import Mapping
from pathlib import Path

from speedy.config import TaskSpec
from speedy.data.load import TaskData, load_splits
from speedy.errors import SpeedyError
from speedy.tasks.base import Task
from speedy.tasks.classification import ClassificationTask
from speedy.tasks.embedding import EmbeddingTask
from speedy.tasks.qa import QATask
from speedy.tasks.tagging import TaggingTask

TASK_CLASSES: dict[str, type[Task]] = {cls.type: cls for cls in (ClassificationTask, TaggingTask, QATask, EmbeddingTask)}


def task_class(task_type: str, setting: str = "tasks.type") -> type[Task]:
    """The registered class of a type; an unknown one is a one-line error naming ``setting`` and the types."""
    if task_type not in TASK_CLASSES:
        raise SpeedyError(f"{setting}: unknown task type '{task_type}' (allowed: {', '.join(TASK_CLASSES)})")
    return TASK_CLASSES[task_type]


def make_task(task_type: str, labels: list[str], settings: TaskSpec | Mapping | None = None) -> Task:
    """A task of a registered type, built by its class from ``settings``: a config's ``TaskSpec``, or the
    ``describe`` dict a saved model keeps (none: the type's defaults)."""
    if settings is not None and not isinstance(settings, Mapping):
        settings = vars(settings)
    return task_class(task_type).from_settings(labels, settings or {})


def task_from_model(config) -> tuple[Task, int]:
    """The task a saved model was trained for, and its maximum length, from its config."""
    info = getattr(config, "speedy_task", None)
    if not info or info.get("type") not in TASK_CLASSES:
        raise SpeedyError("--model: this folder has no speedy task in its config.json (train it with speedy)")
    labels = [config.id2label[i] for i in sorted(int(k) for k in config.id2label)]
    return make_task(info["type"], labels, info), int(info.get("max_length") or 128)


def load_task_data(spec: TaskSpec, cache_dir: Path, data_dir: Path) -> TaskData:
    """A task's three splits, read as its type reads them, checked (see :func:`speedy.data.load.load_splits`)."""
    return load_splits(spec, task_class(spec.type), cache_dir, data_dir)


__all__ = ["Task", "ClassificationTask", "TaggingTask", "QATask", "EmbeddingTask", "TASK_CLASSES", "task_class", "make_task",
           "task_from_model", "load_task_data"]
