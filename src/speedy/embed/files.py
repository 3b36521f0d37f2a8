"""``speedy embed``: text files in (one text a line), vectors out (``.npy``, or Parquet with the texts beside them).

A missing file, a line that is not UTF-8 or a file without any text is one line naming the file (and line); the
output is written to a temporary file and renamed, so a killed run leaves no half file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from speedy.embed.text import PREFIXES, with_prefix
from speedy.errors import SpeedyError, where


def read_lines(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        if not Path(path).is_file():
            raise SpeedyError(f"{path}: no such file")
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
                except UnicodeDecodeError:
                    raise SpeedyError(f"{where(path, number)}: not UTF-8 text") from None
                if line:
                    texts.append(line)
    if not texts:
        raise SpeedyError(f"{', '.join(str(f) for f in files)}: no text (one text a line)")
    return texts


def write_vectors(out: Path, vectors: np.ndarray, texts: list[str]) -> None:
    out = Path(out)
    if out.suffix not in (".npy", ".parquet"):
        raise SpeedyError(f"--out: {out.name}: write .npy or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".npy":
        with open(tmp, "wb") as handle:
            np.save(handle, vectors.astype(np.float32))
    else:
        try:
            import pyarrow as pa  # lazy: Parquet only
            import pyarrow.parquet as pq
        except ImportError:
            raise SpeedyError("--out: Parquet needs pyarrow, which is not installed: write .npy, or "
                              "pip install pyarrow") from None

        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1])
        pq.write_table(pa.table({"text": texts, "embedding": column}), tmp)
    os.replace(tmp, out)


def encoder_of(model_dir: Path, max_length: int = 256, batch_size: int = 64):
    """``texts -> unit vectors`` of a static student folder (torch-free) or a sentence-transformers folder."""
    model_dir = Path(model_dir)
    if (model_dir / "static.json").is_file():
        from speedy.embed.static import StaticEmbedder

        return StaticEmbedder.load(model_dir).encode
    if not (model_dir / "config.json").is_file():
        raise SpeedyError(f"model folder {model_dir}: neither a static student (static.json) nor an encoder "
                          f"(config.json)")
    try:  # lazy: a transformer student needs the training install (a static one does not)
        from sentence_transformers import SentenceTransformer

        from speedy.embed.encoder import encode, sentence_model
    except ImportError:
        raise SpeedyError(f"model folder {model_dir}: a transformer student needs the training install: pip install "
                          f"'speedy[train]' (a static student does not)") from None
    if (model_dir / "modules.json").is_file():

        model = SentenceTransformer(str(model_dir), device="cpu")
        model.max_seq_length = max_length
    else:
        model = sentence_model(model_dir, max_length)
    return lambda texts: encode(model, texts, batch_size=batch_size)


def saved_prefixes(model_dir: Path) -> dict | None:
    """The prefixes a model trained by a study keeps in its ``config.json`` (``speedy_task.prefixes``); None for
    any other folder (e5's are then used)."""
    try:
        task = json.loads((model_dir / "config.json").read_text("utf-8")).get("speedy_task") or {}
    except (OSError, ValueError, AttributeError):
        return None
    prefixes = task.get("prefixes") if isinstance(task, dict) else None
    return prefixes if isinstance(prefixes, dict) else None


def embed_files(model_dir: Path, files: list[Path], out: Path, kind: str, batch_size: int = 256,
                max_length: int = 256, progress=None) -> int:
    """Encode every line of ``files`` with ``kind``'s prefix; returns how many texts were written."""
    if kind not in (*PREFIXES, "none"):
        raise SpeedyError(f"--kind: '{kind}' (allowed: {', '.join(PREFIXES)}, none)")
    if Path(out).suffix not in (".npy", ".parquet"):
        raise SpeedyError(f"--out: {Path(out).name}: write .npy or .parquet")
    texts = read_lines(files)
    encode = encoder_of(model_dir, max_length)
    shown = with_prefix(texts, kind, saved_prefixes(Path(model_dir))) if kind != "none" else texts
    chunks = []
    for start in range(0, len(shown), batch_size):
        chunks.append(encode(shown[start : start + batch_size]))
        if progress is not None:
            progress(min(start + batch_size, len(shown)), len(shown))
    write_vectors(out, np.concatenate(chunks), texts)
    return len(texts)
