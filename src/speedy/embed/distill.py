"""A student learns the teacher's sentence vectors of unlabelled text.

The teacher is frozen, so its vectors are computed once and cached (``teacher_vectors``: a ``.npy`` file keyed by
the teacher's files and the texts, written atomically). The student (a sentence-transformers model) is trained
with sentence-transformers' ``MSELoss`` against them: on unit vectors the squared error is ``2 (1 - cosine)``,
so it also maximises the cosine. Early stopping watches the same loss on held-out texts, and the best epoch is
kept. The result is a sentence-transformers folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from speedy.embed.encoder import encode
from speedy.errors import SpeedyError


def _fingerprint(folder: Path, texts: list[str], settings: str = "") -> str:
    digest = hashlib.sha256(settings.encode())
    for path in sorted(folder.glob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:24]


def _swap(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``: the old one is moved aside first, so ``out`` is never half
    written (at worst, between the two renames, it is briefly absent)."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def teacher_vectors(teacher, folder: str | Path, texts: list[str], cache_dir: str | Path,
                    batch_size: int = 64) -> np.ndarray:
    """The teacher's unit vectors of ``texts`` (prefixes included), from the cache when it has them."""
    cache = Path(cache_dir) / "teacher-vectors"
    path = cache / f"{_fingerprint(Path(folder), texts, f'max_length={teacher.max_seq_length}')}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    vectors = encode(teacher, texts, batch_size=batch_size, progress=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, vectors)
    os.replace(tmp, path)
    return vectors


def distill_student(student, texts: list[str], targets: np.ndarray, val_texts: list[str], val_targets: np.ndarray,
                    out: str | Path, epochs: int = 10, learning_rate: float = 1e-4, batch_size: int = 32,
                    patience: int = 3, seed: int = 42, freeze_embeddings: bool = False) -> dict:
    """Train ``student`` (a sentence-transformers model) to give ``targets`` for ``texts``; keep the epoch with the
    lowest loss on the held-out pair; save it to ``out`` (replaced atomically). ``freeze_embeddings``: keep the
    token embeddings as they are (students built from the teacher start with its own). Returns what happened."""
    from datasets import Dataset  # lazy: training only
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses
    from transformers import EarlyStoppingCallback

    if not texts or len(texts) != len(targets) or len(val_texts) != len(val_targets) or not val_texts:
        raise SpeedyError(f"embed: {len(texts)} texts with {len(targets)} target vectors and {len(val_texts)} "
                          f"held-out texts with {len(val_targets)}: each text needs its vector, and both sets texts")
    width = student.get_embedding_dimension()
    if width != targets.shape[1]:
        raise SpeedyError(f"embed: the student gives {width}-dimensional vectors, the teacher {targets.shape[1]}: "
                          "add a projection (sentence_model(..., dims=...))")
    if freeze_embeddings:  # the teacher's own token embeddings: Adam's update of a 250k-row table costs more than
        for name, parameter in student.named_parameters():  # the rest of a small student's step
            if "word_embeddings" in name:
                parameter.requires_grad_(False)
    out = Path(out)
    work = out.with_name(out.name + ".work")
    train = Dataset.from_dict({"text": texts, "label": np.asarray(targets, dtype=np.float32).tolist()})
    held_out = Dataset.from_dict({"text": val_texts, "label": np.asarray(val_targets, dtype=np.float32).tolist()})
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size, learning_rate=learning_rate, seed=seed,
        warmup_steps=0.1,  # below 1: a share of all steps (warmup_ratio is deprecated)
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=False, report_to=[], use_cpu=True, logging_strategy="epoch")
    trainer = SentenceTransformerTrainer(model=student, args=arguments, train_dataset=train, eval_dataset=held_out,
                                         loss=losses.MSELoss(student),
                                         callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)])
    # a killed run resumes from its checkpoints only when it was the same run (texts, targets, settings)
    signature = hashlib.sha256(json.dumps([texts, val_texts, epochs, learning_rate, batch_size, patience, seed,
                                           freeze_embeddings]).encode() + np.asarray(targets).tobytes()).hexdigest()
    if work.is_dir() and (work / "speedy_run.txt").is_file() and (work / "speedy_run.txt").read_text() != signature:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "speedy_run.txt").write_text(signature)
    resume = any(work.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=resume or None)
    history = [row for row in trainer.state.log_history if "eval_loss" in row]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save(str(tmp))
    summary = {"epochs_run": len(history), "best_eval_loss": min(r["eval_loss"] for r in history),
               "history": [{"epoch": r["epoch"], "eval_loss": r["eval_loss"]} for r in history]}
    (tmp / "speedy_embedding.json").write_text(json.dumps(summary, indent=1), "utf-8")
    _swap(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return summary
