"""The embedding teacher and its students, as sentence-transformers models (Transformer -> mean Pooling ->
Normalize): what multilingual-e5-small's authors prescribe, with the ``query: `` / ``passage: `` prefixes in the
texts themselves, so that every model, the static one included, sees the same strings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from speedy.embed.text import PREFIXES, with_prefix  # noqa: F401 - part of this module's interface
from speedy.errors import SpeedyError
from speedy.models.registry import resolve
from speedy.models.students import encoder_layers, prune_vocabulary, spread_layers, truncate_layers



def sentence_model(folder: str | Path, max_length: int = 256, dims: int | None = None):
    """A sentence-transformers model of an encoder folder: mean pooling over real tokens, then (``dims``, for a
    student narrower than its teacher) a learned linear projection, then L2 normalisation."""
    import torch  # lazy: training only (these import torch)
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    transformer = models.Transformer(str(folder), max_seq_length=max_length)
    width = transformer.get_embedding_dimension()
    modules = [transformer, models.Pooling(width, pooling_mode="mean")]
    if dims is not None and dims != width:
        modules.append(models.Dense(width, dims, activation_function=torch.nn.Identity()))
    return SentenceTransformer(modules=[*modules, models.Normalize()], device="cpu")


def teacher_folder(name: str = "multilingual-e5-small", cache_dir: Path | None = None) -> Path:
    """The teacher's encoder folder (a known name, a Hub id or a folder; e5 is converted offline once)."""
    return Path(resolve(name, cache_dir))


def build_student(teacher: str | Path, layers: int, out: str | Path, prune_texts: list[str] | None = None) -> Path:
    """A student encoder folder: the teacher's layers spread over ``layers`` (the last one kept), its vocabulary
    pruned to ``prune_texts`` when given. Written to ``out`` (atomically: a killed build leaves no folder)."""
    from transformers import AutoModel, AutoTokenizer  # lazy: as above

    out = Path(out)
    recipe = {"teacher": str(teacher), "layers": layers, "pruned_to": None if not prune_texts else
              hashlib.sha256("\n".join(prune_texts).encode()).hexdigest()}
    if (out / "config.json").is_file() and (out / "speedy_student.json").is_file() and \
            json.loads((out / "speedy_student.json").read_text("utf-8")) == recipe:
        return out  # built before from the same teacher, layers and text
    model, tokenizer = AutoModel.from_pretrained(str(teacher)), AutoTokenizer.from_pretrained(str(teacher))
    total = len(encoder_layers(model))
    if not 1 <= layers <= total:
        raise SpeedyError(f"embed: a student of {layers} layers from a teacher of {total}")
    truncate_layers(model, spread_layers(total, layers))
    if prune_texts:
        model, tokenizer = prune_vocabulary(model, tokenizer, prune_texts)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "speedy_student.json").write_text(json.dumps(recipe), "utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def encode(model, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """float32 unit vectors, one row per text (prefixes already in the texts)."""
    if not texts:
        raise SpeedyError("embed: no texts to encode")
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=progress)
    return np.asarray(vectors, dtype=np.float32)
