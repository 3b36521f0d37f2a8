"""Scoring a trained model on a split: the task's metrics from batched predictions (``speedy.tasks.base.predict``)."""

from __future__ import annotations

from speedy.tasks.base import Task


def evaluate_model(model, tokenizer, task: Task, dataset, max_length: int, source: str = "") -> dict:
    return task.evaluate(model, tokenizer, dataset, max_length, source=source)
