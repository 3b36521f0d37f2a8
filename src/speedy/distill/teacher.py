"""Running the frozen teacher once over the training set, into the teacher cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from speedy.distill.cache import TeacherCache, cache_key, fingerprint_inputs, fingerprint_model
from speedy.tasks.base import EXTRA_KEYS, Task


def teacher_cache_for(teacher, teacher_tokenizer, task: Task, dataset, max_length: int, root: Path,
                      batch_size: int = 64, source: str = "") -> TeacherCache:
    """The teacher's rows for every example of ``dataset``, from the cache or computed now (one pass)."""
    encoded = task.encode(dataset, teacher_tokenizer, max_length, with_index=True, source=source)
    inputs_fingerprint = fingerprint_inputs(
        zip(*(encoded[name] for name in encoded.column_names)), extra=f"{task.type}:{task.labels}")
    key = cache_key(fingerprint_model(teacher), inputs_fingerprint)

    @torch.no_grad()
    def compute():
        teacher.eval()
        device = next(teacher.parameters()).device
        # Rows a teacher never produced (a word it saw no piece of) stay NaN and are left out of the KD loss.
        rows = [np.full((n, task.row_dim), np.nan, dtype=np.float32) for n in task.rows_per_example(dataset)]
        # Sequences in order of length, so batches carry little padding; rows land by example index anyway.
        lengths = [len(ids) for ids in encoded["input_ids"]]
        by_length = sorted(range(len(encoded)), key=lengths.__getitem__)
        loader = DataLoader(encoded.select(by_length), batch_size=batch_size, shuffle=False,
                            collate_fn=task.collator(teacher_tokenizer))
        for batch in loader:
            inputs = {name: value.to(device) for name, value in batch.items()
                      if name not in EXTRA_KEYS and name not in ("labels", "start_positions", "end_positions")}
            for example, positions, values in task.teacher_rows(teacher(**inputs), batch):
                rows[example][positions] = values
        return rows

    return TeacherCache.load_or_build(root, key, compute, meta={"task": task.type, "examples": len(dataset)})
