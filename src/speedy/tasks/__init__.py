"""Task types. Each is one module; :func:`make_task` is the one place that maps a type name to its class."""

from speedy.errors import SpeedyError
from speedy.tasks.base import Task
from speedy.tasks.classification import ClassificationTask
from speedy.tasks.qa import QATask
from speedy.tasks.tagging import TaggingTask

TASK_CLASSES = {ClassificationTask.type: ClassificationTask, TaggingTask.type: TaggingTask, QATask.type: QATask}


def make_task(task_type: str, labels: list[str], scheme: str = "bio", normalization: str = "en",
              stride: int = 64, max_windows: int = 64) -> Task:
    if task_type == TaggingTask.type:
        return TaggingTask(labels, scheme)
    if task_type == QATask.type:
        return QATask(normalization=normalization, stride=stride, max_windows=max_windows)
    return TASK_CLASSES[task_type](labels)


def task_from_model(config) -> tuple[Task, int]:
    """The task a saved model was trained for, and its maximum length, from its config."""
    info = getattr(config, "speedy_task", None)
    if not info or info.get("type") not in TASK_CLASSES:
        raise SpeedyError("--model: this folder has no speedy task in its config.json (train it with speedy)")
    labels = [config.id2label[i] for i in sorted(int(k) for k in config.id2label)]
    task = make_task(info["type"], labels, info.get("scheme") or "bio", info.get("normalization") or "en",
                     int(info.get("stride") or 64), int(info.get("max_windows") or 64))
    if info.get("fallback") in task.label2id:
        task.fallback = info["fallback"]
    return task, int(info.get("max_length") or 128)


__all__ = ["Task", "ClassificationTask", "TaggingTask", "QATask", "TASK_CLASSES", "make_task", "task_from_model"]
