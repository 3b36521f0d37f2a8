"""Task types. Each is one module; :func:`make_task` is the one place that maps a type name to its class."""

from speedy.tasks.base import Task, TaskData
from speedy.tasks.classification import ClassificationTask

TASK_CLASSES = {ClassificationTask.type: ClassificationTask}


def make_task(task_type: str, labels: list[str]) -> Task:
    return TASK_CLASSES[task_type](labels)


__all__ = ["Task", "TaskData", "ClassificationTask", "TASK_CLASSES", "make_task"]
