"""The teacher cache: a frozen teacher's outputs on the training set, computed once and memory-mapped.

Layout on disk, one folder per key: ``values.npy`` (float32, ``[rows, dim]``), ``offsets.npy`` (int64,
``[examples + 1]``; example ``i`` owns rows ``offsets[i]:offsets[i+1]``, so an example may have one row per
word, or none) and ``meta.json``. Rows are per example, looked up by the example's index, so the training
data can be shuffled freely every epoch (the paper's code had to turn shuffling off for its per-batch cache).

The key is a fingerprint of the teacher's weights and of the teacher's encoded inputs: a retrained teacher or
changed data never reuses stale outputs. A cache is written into a temporary folder and renamed into place
only when complete (a rename is atomic), so a killed run leaves at most a stray temporary folder, never a
half-written cache that is later read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch


def fingerprint_model(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, by name, in a fixed order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint_inputs(rows: Iterable, extra: str = "") -> str:
    """SHA-256 of a sequence of encoded examples (anything with a stable ``repr``, e.g. lists of ids)."""
    digest = hashlib.sha256(extra.encode())
    for row in rows:
        digest.update(repr(row).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def cache_key(teacher_fingerprint: str, inputs_fingerprint: str) -> str:
    return hashlib.sha256(f"{teacher_fingerprint}:{inputs_fingerprint}".encode()).hexdigest()[:32]


class TeacherCache:
    """Read side of a finished cache. Use :meth:`load_or_build` to get one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.values = np.load(self.folder / "values.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, indices) -> tuple[torch.Tensor, list[int]]:
        """The rows of these examples, concatenated in the given order, and how many rows each has."""
        indices = [int(i) for i in indices]
        counts = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        parts = [self.values[self.offsets[i] : self.offsets[i + 1]] for i in indices]
        stacked = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.values.shape[1]), np.float32)
        return torch.from_numpy(np.array(stacked, dtype=np.float32)), counts

    def example(self, index: int) -> np.ndarray:
        """One example's rows, ``[rows, dim]``."""
        return np.array(self.values[self.offsets[index] : self.offsets[index + 1]], dtype=np.float32)

    @staticmethod
    def path_for(root: Path, key: str) -> Path:
        return Path(root) / key

    @classmethod
    def exists(cls, root: Path, key: str) -> bool:
        return (cls.path_for(root, key) / "meta.json").is_file()

    @classmethod
    def load_or_build(cls, root: Path, key: str, compute: "callable", meta: dict | None = None) -> "TeacherCache":
        """Open the cache under ``key``, or build it with ``compute()``.

        ``compute()`` yields one float array ``[rows_i, dim]`` per example, in example order.
        """
        folder = cls.path_for(root, key)
        if (folder / "meta.json").is_file():
            return cls(folder)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            per_example = [np.asarray(rows, dtype=np.float32) for rows in compute()]
            dim = next((rows.shape[1] for rows in per_example if rows.ndim == 2), 1)
            counts = np.array([len(rows) for rows in per_example], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float32,
                                               shape=(int(offsets[-1]), dim))
            for i, rows in enumerate(per_example):
                if len(rows):
                    values[offsets[i] : offsets[i + 1]] = rows
            values.flush()
            del values
            np.save(tmp / "offsets.npy", offsets)
            info = {"key": key, "examples": len(per_example), "rows": int(offsets[-1]), "dim": dim, **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(info, indent=1))
            for name in ("values.npy", "offsets.npy", "meta.json"):
                with open(tmp / name, "rb") as handle:
                    os.fsync(handle.fileno())
            try:
                os.replace(tmp, folder)
            except OSError:  # another worker finished the same cache first: theirs is as good as ours
                if not (folder / "meta.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)
