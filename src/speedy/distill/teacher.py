"""Running the frozen teacher once over the training set, into the teacher cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from speedy.distill.cache import TeacherCache, cache_key, fingerprint_inputs, fingerprint_model
from speedy.tasks.base import Task


def teacher_cache_for(teacher, teacher_tokenizer, task: Task, dataset, max_length: int, root: Path,
                      batch_size: int = 64, source: str = "") -> TeacherCache:
    """The teacher's rows for every example of ``dataset``, from the cache or computed now (one pass)."""
    encoded = task.encode(dataset, teacher_tokenizer, max_length, source=source)
    inputs_fingerprint = fingerprint_inputs(
        zip(*(encoded[name] for name in encoded.column_names)), extra=f"{task.type}:{task.labels}")
    key = cache_key(fingerprint_model(teacher), inputs_fingerprint)

    @torch.no_grad()
    def compute():
        teacher.eval()
        device = next(teacher.parameters()).device
        loader = DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=task.collator(teacher_tokenizer))
        for batch in loader:
            batch = {name: value.to(device) for name, value in batch.items()}
            inputs = {name: value for name, value in batch.items() if name != "labels"}
            yield from task.teacher_rows(teacher(**inputs), batch)

    return TeacherCache.load_or_build(root, key, compute, meta={"task": task.type, "examples": len(dataset)})
