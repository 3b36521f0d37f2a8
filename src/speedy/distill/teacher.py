"""Running the frozen teacher once over the training set, into the teacher cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from speedy.distill.cache import (TeacherCache, cache_key, check_signal_name, fingerprint_inputs, fingerprint_model,
                                  stored_dtype)
from speedy.errors import SpeedyError
from speedy.tasks.base import EXTRA_KEYS, Task, needs_hidden_states


def teacher_cache_for(teacher, teacher_tokenizer, task: Task, dataset, max_length: int, root: Path,
                      batch_size: int = 64, source: str = "", signals=("logits",),
                      teacher_name: str | None = None) -> TeacherCache:
    """The teacher's rows of each of ``signals`` for every example of ``dataset``, from the cache or computed now
    (one pass). ``teacher_name`` (default: the model's ``name_or_path``) is kept in the cache's metadata."""
    signals = tuple(dict.fromkeys(check_signal_name(signal) for signal in signals))
    dims = {signal: task.row_dim(signal, teacher) for signal in signals}  # a signal the task cannot give fails here
    hidden = needs_hidden_states(signals)
    encoded = task.encode(dataset, teacher_tokenizer, max_length, with_index=True, source=source)
    inputs_fingerprint = fingerprint_inputs(
        zip(*(encoded[name] for name in encoded.column_names)), extra=f"{task.type}:{task.labels}")
    teacher_fingerprint = fingerprint_model(teacher)
    key = cache_key(teacher_fingerprint, inputs_fingerprint)

    @torch.no_grad()
    def compute():
        teacher.eval()
        device = next(teacher.parameters()).device
        # Rows a teacher never produced (a word it saw no piece of) stay NaN and are left out of the KD loss.
        rows = {signal: [np.full((n, dims[signal]), np.nan, dtype=stored_dtype(signal))
                         for n in task.rows_per_example(dataset, signal, encoded)] for signal in signals}
        # Sequences in order of length, so batches carry little padding; rows land by example index anyway.
        lengths = [len(ids) for ids in encoded["input_ids"]]
        by_length = sorted(range(len(encoded)), key=lengths.__getitem__)
        loader = DataLoader(encoded.select(by_length), batch_size=batch_size, shuffle=False,
                            collate_fn=task.collator(teacher_tokenizer))
        for batch in loader:
            inputs = {name: value.to(device) for name, value in batch.items()
                      if name not in EXTRA_KEYS and name not in ("labels", "start_positions", "end_positions")}
            outputs = teacher(**inputs, output_hidden_states=True) if hidden else teacher(**inputs)
            for signal in signals:
                for example, positions, values in task.teacher_rows(outputs, batch, signal):
                    rows[signal][example][positions] = values
        return rows

    identity = {"fingerprint": teacher_fingerprint,
                "name": teacher_name if teacher_name is not None else str(getattr(teacher, "name_or_path", "") or "")}
    return TeacherCache.load_or_build(root, key, compute, meta={"task": task.type, "examples": len(dataset),
                                                                "inputs": inputs_fingerprint},
                                      signals=signals, teacher=identity)


def check_same_tokens(task: Task, dataset, student_tokenizer, teacher_tokenizers: list, max_length: int,
                      setting: str = "distill.hidden_units: tokens") -> None:
    """Refuse, in one line naming the first text that differs (its index, and its start where it has a text), a
    student that splits any text of ``dataset`` into other tokens than one of its teachers: token-level KD pairs the
    i-th token of both, so equal token counts are not enough. Tokens are compared as strings, so a student with the
    teacher's vocabulary pruned (other ids, the same pieces) passes. The student's side is encoded once."""
    mine = [student_tokenizer.convert_ids_to_tokens(ids)
            for ids in task.encode(dataset, student_tokenizer, max_length)["input_ids"]]
    for teacher_tokenizer in teacher_tokenizers:
        theirs = task.encode(dataset, teacher_tokenizer, max_length)["input_ids"]
        for example, (pieces, their_ids) in enumerate(zip(mine, theirs)):
            their_pieces = teacher_tokenizer.convert_ids_to_tokens(their_ids)
            if pieces == their_pieces:
                continue
            at = next((i for i, (a, b) in enumerate(zip(pieces, their_pieces)) if a != b),
                      min(len(pieces), len(their_pieces)))
            text = dataset[example].get("text")
            shown = f" ({text[:40]!r}{'...' * (len(text) > 40)})" if isinstance(text, str) else ""
            raise SpeedyError(f"{setting}: training text {example}{shown} splits into other tokens for the student "
                              f"than for the teacher (token {at}: {pieces[at:at + 1]} against "
                              f"{their_pieces[at:at + 1]}): token-level KD needs a student that tokenizes as its "
                              f"teacher (a truncated one, pruned or not); use hidden_units: task")
