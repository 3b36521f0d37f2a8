"""Scoring a trained model on a split: the task's metrics from batched predictions."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from speedy.tasks.base import Task


@torch.no_grad()
def predict(model, tokenizer, task: Task, encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and gold label ids for an encoded dataset, in order."""
    model.eval()
    loader = DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=task.collator(tokenizer))
    logits, labels = [], []
    for batch in loader:
        batch.pop("example_index", None)
        gold = batch.pop("labels")
        logits.append(model(**batch).logits.float().cpu().numpy())
        labels.append(gold.cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_model(model, tokenizer, task: Task, dataset, max_length: int, source: str = "") -> dict:
    encoded = task.encode(dataset, tokenizer, max_length, source=source)
    logits, labels = predict(model, tokenizer, task, encoded)
    return task.compute_metrics(logits, labels)
