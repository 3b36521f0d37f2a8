"""Scoring a trained model on a split: the task's metrics from batched predictions."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from speedy.tasks.base import EXTRA_KEYS, Task


@torch.no_grad()
def predict(model, tokenizer, task: Task, encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and gold label ids for an encoded dataset, in order."""
    model.eval()
    loader = DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=task.collator(tokenizer))
    logits, labels = [], []
    for batch in loader:
        for name in EXTRA_KEYS:
            batch.pop(name, None)
        gold = batch.pop("labels")
        logits.append(model(**batch).logits.float().cpu().numpy())
        labels.append(gold.cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_model(model, tokenizer, task: Task, dataset, max_length: int, source: str = "") -> dict:
    return task.evaluate(model, tokenizer, dataset, max_length, source=source)
