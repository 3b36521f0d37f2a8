"""The teacher cache: a frozen teacher's outputs on the training set, computed once and memory-mapped.

Layout on disk (format 2), one folder per key: per *signal* (a named per-example tensor the teacher pass
produces: ``logits``, ``hidden.<layer>``, ``tokens.<layer>``; ``attention.<layer>`` is a name for later),
``<signal>.values.npy`` (float32; ``hidden.*`` and ``tokens.*`` float16; ``[rows, dim]``) and
``<signal>.offsets.npy`` (int64, ``[examples + 1]``; example ``i`` owns rows ``offsets[i]:offsets[i+1]``, so an
example may have one row per word, or none); and ``meta.json``: ``format: 2``, ``signals: {name: {dim, rows}}``,
``teacher: {fingerprint, name}``, the example count and the build time. Rows are
per example, looked up by the example's index, so the training data can be shuffled freely every epoch (the
paper's code had to turn shuffling off for its per-batch cache).

The key is a fingerprint of the teacher's weights and of the teacher's encoded inputs: a retrained teacher or
changed data never reuses stale outputs. A cache is written into a temporary folder and renamed into place
only when complete (a rename is atomic), so a killed run leaves at most a stray temporary folder, never a
half-written cache that is later read as valid. The temporary folder's name carries its writer's host and pid,
so the next run removes those of killed writers (see :func:`is_leftover`). A signal asked of a cache that lacks
it is added the same way (its files renamed in, then ``meta.json`` replaced). A format-1 cache (``values.npy``,
``offsets.npy``: speedy before named signals) is read as the signal ``logits``; a cache whose ``meta.json`` is
unreadable or does not match its arrays is rebuilt; each case is said in one printed line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from speedy.errors import SpeedyError
from speedy.tasks.base import is_state_signal


LEFTOVER_AGE = 24 * 3600.0  # a temporary file untouched this long is a killed run's, whoever wrote it


def owner_tag() -> str:
    """Part of a temporary file's name (``@host@pid@``): a later run can tell whether its writer still runs."""
    return f"@{socket.gethostname()}@{os.getpid()}@"


def is_leftover(path: Path, max_age: float = LEFTOVER_AGE) -> bool:
    """Whether a temporary file or folder can no longer be being written: its name's :func:`owner_tag` names a
    process of this machine that has ended, or nothing in it changed for ``max_age`` seconds (its writer ran on
    another machine, whose processes this one cannot see, or its name has no tag)."""
    path = Path(path)
    parts = path.name.split("@")
    if len(parts) >= 4 and parts[1] == socket.gethostname() and parts[2].isdigit():
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, under another user
            pass
    try:
        changed = max(p.stat().st_mtime for p in ([path, *path.rglob("*")] if path.is_dir() else [path]))
    except OSError:  # removed meanwhile
        return False
    return time.time() - changed > max_age


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


FORMAT = 2  # what this speedy writes; it reads 1 and 2
SIGNAL = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")  # logits, hidden.4, attention.11: also a file name part


class CacheMismatch(SpeedyError):
    """A cache folder that cannot be read as what its ``meta.json`` says (it is rebuilt, never misread)."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_signal_name(signal: str) -> str:
    if not isinstance(signal, str) or not SIGNAL.fullmatch(signal):
        raise SpeedyError(f"distill: '{signal}' is not a KD signal name (like logits, hidden.4, attention.11)")
    return signal


class TeacherCache:
    """Read side of a finished cache. Use :meth:`load_or_build` to get one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError) as error:
            raise CacheMismatch(f"teacher cache {self.folder}: meta.json is unreadable ({error})") from None
        if not isinstance(self.meta, dict):
            raise CacheMismatch(f"teacher cache {self.folder}: meta.json is not an object")
        self.format = self.meta.get("format", 1)
        if self.format == 1:  # speedy before named signals: one array pair, the logits
            files = {"logits": ("values.npy", "offsets.npy")}
            expected = {"logits": {name: self.meta[name] for name in ("dim", "rows") if name in self.meta}}
        elif self.format == FORMAT:
            expected = self.meta.get("signals")
            if not isinstance(expected, dict) or not expected or not all(
                    isinstance(name, str) and SIGNAL.fullmatch(name) and isinstance(info, dict)
                    for name, info in expected.items()):
                raise CacheMismatch(f"teacher cache {self.folder}: meta.json names no valid signals")
            files = {name: (f"{name}.values.npy", f"{name}.offsets.npy") for name in expected}
        else:
            raise SpeedyError(f"teacher cache {self.folder}: format {self.format!r} is not one this speedy reads "
                              f"(1, {FORMAT}); a newer speedy wrote it: upgrade, or delete the folder")
        self._files = files  # {signal: (values file, offsets file)}
        self._values, self._offsets = {}, {}
        examples = self.meta.get("examples")
        for name, (values_file, offsets_file) in files.items():
            try:
                values = np.load(self.folder / values_file, mmap_mode="r")
                offsets = np.load(self.folder / offsets_file)
            except (OSError, ValueError) as error:
                raise CacheMismatch(f"teacher cache {self.folder}: signal '{name}' is unreadable ({error})") from None
            problem = None
            if values.ndim != 2 or values.dtype != stored_dtype(name):
                problem = (f"values of shape {values.shape} and type {values.dtype}, not "
                           f"{np.dtype(stored_dtype(name)).name} [rows, dim]")
            elif offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) < 1 or offsets[0] != 0 \
                    or offsets[-1] != values.shape[0] or bool((np.diff(offsets) < 0).any()):
                problem = f"offsets that do not split its {values.shape[0]} rows"
            elif any(expected[name].get(key, size) != size for key, size in (("rows", values.shape[0]),
                                                                               ("dim", values.shape[1]))):
                problem = f"arrays [{values.shape[0]}, {values.shape[1]}], not what meta.json says"
            elif examples is not None and len(offsets) - 1 != examples:
                problem = f"{len(offsets) - 1} examples, meta.json says {examples}"
            if problem:
                raise CacheMismatch(f"teacher cache {self.folder}: signal '{name}' has {problem}")
            examples = len(offsets) - 1
            self._values[name], self._offsets[name] = values, offsets

    def __len__(self) -> int:
        return len(next(iter(self._offsets.values()))) - 1

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals this cache holds."""
        return tuple(self._values)

    @property
    def teacher(self) -> dict:
        """Who produced the rows: ``{fingerprint, name}`` (empty for a format-1 cache)."""
        return self.meta.get("teacher", {})

    @property
    def build_seconds(self) -> float | None:
        """How long the run that built this cache spent computing it (the teacher's pass), whoever reads it."""
        return self.meta.get("build_seconds")

    def disk_bytes(self) -> dict[str, int]:
        """Bytes on disk per signal (its values and offsets files): what a cache of this task and size costs."""
        return {name: sum((self.folder / file).stat().st_size for file in pair) for name, pair in self._files.items()}

    def size_line(self) -> str:
        """One line: examples, megabytes on disk and per 1,000 examples, per kind of signal (``hidden.*`` summed,
        ``tokens.*`` too)."""
        kinds: dict[str, int] = {}
        for name, size in self.disk_bytes().items():
            kind = name.split(".")[0] + (".*" if "." in name else "")
            kinds[kind] = kinds.get(kind, 0) + size
        total, examples = sum(kinds.values()), max(len(self), 1)
        parts = ", ".join(f"{kind} {size / 1e6 * 1000 / examples:.1f}" for kind, size in kinds.items())
        return (f"teacher cache {self.folder.name}: {len(self):,} examples, {total / 1e6:.1f} MB on disk "
                f"({total / 1e6 * 1000 / examples:.1f} MB per 1,000 examples: {parts})")

    def _signal(self, signal: str):
        if signal not in self._values:
            raise SpeedyError(f"teacher cache {self.folder.name}: no signal '{signal}' (it holds: "
                              f"{', '.join(self.signals)}); build it with that signal")
        return self._values[signal], self._offsets[signal]

    @property
    def values(self) -> np.ndarray:
        """The ``logits`` rows, ``[rows, dim]`` (memory-mapped)."""
        return self._signal("logits")[0]

    @property
    def offsets(self) -> np.ndarray:
        """Where each example's ``logits`` rows start (``[examples + 1]``)."""
        return self._signal("logits")[1]

    def dim(self, signal: str = "logits") -> int:
        return int(self._signal(signal)[0].shape[1])

    def rows(self, indices, signal: str = "logits") -> tuple[torch.Tensor, list[int]]:
        """The rows of these examples, concatenated in the given order, and how many rows each has."""
        values, offsets = self._signal(signal)
        indices = [int(i) for i in indices]
        counts = [int(offsets[i + 1] - offsets[i]) for i in indices]
        parts = [values[offsets[i] : offsets[i + 1]] for i in indices]
        stacked = np.concatenate(parts, axis=0) if parts else np.zeros((0, values.shape[1]), np.float32)
        return torch.from_numpy(np.array(stacked, dtype=np.float32)), counts

    def example(self, index: int, signal: str = "logits") -> np.ndarray:
        """One example's rows, ``[rows, dim]``."""
        values, offsets = self._signal(signal)
        return np.array(values[offsets[index] : offsets[index + 1]], dtype=np.float32)

    @staticmethod
    def path_for(root: Path, key: str) -> Path:
        return Path(root) / key

    @classmethod
    def exists(cls, root: Path, key: str) -> bool:
        return (cls.path_for(root, key) / "meta.json").is_file()

    @classmethod
    def load_or_build(cls, root: Path, key: str, compute: "callable", meta: dict | None = None,
                      signals=("logits",), teacher: dict | None = None) -> "TeacherCache":
        """Open the cache under ``key`` if it holds every one of ``signals``, else build it with ``compute()`` (or
        add the signals it lacks).

        ``compute()`` returns ``{signal: per-example arrays}`` (each ``[rows_i, dim]``, in example order) for the
        requested signals, or just the per-example arrays of ``logits``. ``teacher`` (``{fingerprint, name}``)
        and ``meta`` are kept in ``meta.json``.
        """
        signals = tuple(check_signal_name(signal) for signal in signals)
        if not signals:
            raise SpeedyError("distill: a teacher cache needs at least one signal")
        folder = cls.path_for(root, key)
        root = Path(root)
        for leftover in root.glob(".tmp-*") if root.is_dir() else []:  # of earlier runs that were killed
            if is_leftover(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists():
            try:
                cache = cls(folder)
            except CacheMismatch as problem:
                say(f"{problem}: rebuilding it")
            else:
                missing = [signal for signal in signals if signal not in cache.signals]
                if cache.format == 1 and not missing:
                    say(f"teacher cache {folder.name}: format 1 (values.npy, from before named signals): read as "
                        f"signal 'logits'")
                    return cache
                if not missing:
                    return cache
                if cache.format == FORMAT:
                    say(f"teacher cache {folder.name}: adding signal(s) {', '.join(missing)} (a teacher pass)")
                    return cls._add_signals(cache, key, compute, missing)
                say(f"teacher cache {folder.name}: format 1 holds only 'logits': rebuilding it with "
                    f"{', '.join(signals)}")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}{owner_tag()}", dir=root))
        try:
            start = time.perf_counter()
            produced = _produced(compute(), signals)
            build_seconds = time.perf_counter() - start
            info, examples = _write_signals(tmp, produced)
            for name in info:
                info[name]["build_seconds"] = build_seconds
            core = {"format": FORMAT, "key": key, "examples": examples, "signals": info, "teacher": teacher or {},
                    "build_seconds": build_seconds}
            _write_meta(tmp / "meta.json", {**(meta or {}), **core})
            _install(tmp, folder, signals)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        cache = cls(folder)
        say(cache.size_line())
        return cache

    @classmethod
    def _add_signals(cls, cache: "TeacherCache", key: str, compute, missing: list[str]) -> "TeacherCache":
        """Write the ``missing`` signals beside the others: their files renamed in, then ``meta.json`` replaced
        (re-read just before, so signals another worker added meanwhile stay listed)."""
        folder = cache.folder
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}{owner_tag()}", dir=folder.parent))
        try:
            start = time.perf_counter()
            produced = _produced(compute(), missing)
            build_seconds = time.perf_counter() - start
            produced = {name: rows for name, rows in produced.items() if name not in cache.signals}
            info, examples = _write_signals(tmp, produced)
            if examples != len(cache):
                raise SpeedyError(f"teacher cache {folder.name}: the teacher pass gave {examples} examples, the cache "
                                  f"holds {len(cache)}")
            for name in info:
                info[name]["build_seconds"] = build_seconds
                for part in ("values", "offsets"):
                    os.replace(tmp / f"{name}.{part}.npy", folder / f"{name}.{part}.npy")
            current = json.loads((folder / "meta.json").read_text())
            current["signals"] = {**current.get("signals", {}), **info}
            _write_meta(tmp / "meta.json", current)
            os.replace(tmp / "meta.json", folder / "meta.json")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        cache = cls(folder)
        say(cache.size_line())
        return cache


def stored_dtype(signal: str):
    """Hidden states are stored in float16: half the disk and page cache of float32 (a 384-wide layer costs
    768 bytes a row), with errors (~1e-3 relative) far below what a student learns to match. Logits stay float32."""
    return np.float16 if is_state_signal(signal) else np.float32


def _produced(output, signals) -> dict[str, list[np.ndarray]]:
    """``compute()``'s output as ``{signal: [float32 array per example]}``; every one of ``signals`` must be there."""
    if not isinstance(output, Mapping):
        output = {"logits": output}
    produced = {check_signal_name(name): [np.asarray(rows, dtype=stored_dtype(name)) for rows in per_example]
                for name, per_example in output.items()}
    absent = [signal for signal in signals if signal not in produced]
    if absent:
        raise SpeedyError(f"distill: the teacher pass gave no signal {', '.join(absent)} (it gave: "
                          f"{', '.join(produced) or 'none'})")
    return produced


def _write_signals(folder: Path, produced: dict[str, list[np.ndarray]]) -> tuple[dict, int]:
    """Each signal's ``values``/``offsets`` pair into ``folder`` (synced); ``({signal: {dim, rows}}, examples)``."""
    info, examples = {}, None
    for name, per_example in produced.items():
        if examples is not None and len(per_example) != examples:
            raise SpeedyError(f"distill: the teacher pass gave {len(per_example)} examples of '{name}' and "
                              f"{examples} of '{next(iter(info))}'")
        examples = len(per_example)
        dim = next((rows.shape[1] for rows in per_example if rows.ndim == 2), 1)
        counts = np.array([len(rows) for rows in per_example], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = np.lib.format.open_memmap(folder / f"{name}.values.npy", mode="w+", dtype=stored_dtype(name),
                                           shape=(int(offsets[-1]), dim))
        for i, rows in enumerate(per_example):
            if len(rows):
                values[offsets[i] : offsets[i + 1]] = rows
        values.flush()
        del values
        np.save(folder / f"{name}.offsets.npy", offsets)
        for part in ("values", "offsets"):
            with open(folder / f"{name}.{part}.npy", "rb") as handle:
                os.fsync(handle.fileno())
        info[name] = {"dim": int(dim), "rows": int(offsets[-1])}
    return info, examples or 0


def _write_meta(path: Path, meta: dict) -> None:
    with open(path, "w") as handle:
        handle.write(json.dumps(meta, indent=1))
        handle.flush()
        os.fsync(handle.fileno())


def _install(tmp: Path, folder: Path, signals) -> None:
    """Rename the finished ``tmp`` into place; a broken cache there is moved aside (and removed) first."""
    try:
        os.replace(tmp, folder)
        return
    except OSError:
        pass
    try:  # another worker finished the same cache first: theirs is as good as ours
        if set(signals) <= set(TeacherCache(folder).signals):
            return
    except CacheMismatch:
        pass
    stale = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}{owner_tag()}stale-", dir=folder.parent))
    try:
        os.replace(folder, stale)  # an empty folder may be replaced by a rename
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
