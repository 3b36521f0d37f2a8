"""Inference speed with the paper's protocol, and plain statistics beside it.

The paper times ``warmup`` runs that are thrown away, then ``runs`` measured ones, and drops outliers whose
modified Z-score ``0.6745 * (x - median) / MAD`` exceeds 0.75 in absolute value (Iglewicz and Hoaglin's
score, with the paper's threshold). On a GPU the device is synchronised before each clock read, or the
clock would measure only the kernel launch. Threads are set and reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from speedy.data.readers import _read_lines
from speedy.errors import SpeedyError
from speedy.tasks.base import device_of

Z_THRESHOLD = 0.75


def modified_z_filter(times, threshold: float = Z_THRESHOLD) -> np.ndarray:
    """The values whose modified Z-score is within ``threshold``; all of them when the MAD is 0."""
    values = np.asarray(times, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return values
    score = 0.6745 * (values - median) / mad
    return values[np.abs(score) <= threshold]


def random_inputs(vocab_size: int, batch_size: int, length: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab_size), (batch_size, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pin_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads in PyTorch (all cores when None); returns the number in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed_runs(call, warmup: int, runs: int, sync=lambda: None) -> list[float]:
    """Seconds of each of ``runs`` calls after ``warmup`` untimed ones, synchronising before each clock read."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summarise(times, items_per_run: int) -> dict:
    """The paper's filtered mean beside the plain median and the spread (inter-quartile range, std)."""
    values = np.asarray(times, dtype=np.float64)
    kept = modified_z_filter(values)
    q1, q3 = np.percentile(values, [25, 75])
    return {"seconds_filtered_mean": float(kept.mean()), "seconds_median": float(np.median(values)),
            "seconds_iqr": float(q3 - q1), "seconds_std": float(values.std()), "kept_runs": int(len(kept)),
            "runs": int(len(values)), "inferences_per_second": float(items_per_run / kept.mean()),
            "inferences_per_second_median": float(items_per_run / np.median(values))}


@torch.inference_mode()
def time_model(model, inputs: dict, warmup: int = 10, runs: int = 100, threads: int | None = None) -> dict:
    """Seconds per call of ``model(**inputs)`` (a PyTorch model or an ONNX Runtime engine): the paper's
    filtered mean, the median and the spread."""
    threads = pin_threads(threads)
    model.eval()
    device = device_of(model)
    inputs = {name: value.to(device) for name, value in inputs.items()}
    times = timed_runs(lambda: model(**inputs), warmup, runs, _sync_for(device))
    batch = int(inputs["input_ids"].shape[0])
    return {**summarise(times, batch), "warmup": warmup, "threads": getattr(model, "threads", threads),
            "device": device.type, "batch_size": batch, "length": int(inputs["input_ids"].shape[1])}


def read_sentences(path) -> list[str]:
    """One sentence per line (blank lines skipped); an empty file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SpeedyError(f"{path}: no such file (one sentence per line expected)")
    sentences = [line.strip() for line in _read_lines(path) if line.strip()]  # non-UTF-8: names the line
    if not sentences:
        raise SpeedyError(f"{path}: no sentences in the file (it is empty): nothing to time")
    return sentences


def length_batches(tokenizer, sentences: list[str], batch_size: int, max_length: int) -> list[dict]:
    """Sentences tokenized, sorted by length and cut into batches padded only to their own longest sentence."""
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_length)
    order = sorted(range(len(sentences)), key=lambda i: len(encoded["input_ids"][i]))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        features = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i]}
                    for i in chosen]
        batches.append(dict(tokenizer.pad(features, return_tensors="pt")))
    return batches


@torch.inference_mode()
def time_sentences(model, tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 512,
                   repeats: int = 5, threads: int | None = None) -> dict:
    """Sentences per second over real sentences with dynamic padding, batched by length.

    Tokenizing is done once, outside the clock (it is the same for every engine); each of ``repeats`` timed
    passes runs every batch once, after one untimed pass.
    """
    threads = pin_threads(threads)
    model.eval()
    device = device_of(model)
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in
               length_batches(tokenizer, sentences, batch_size, max_length)]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)

    def one_pass():
        for batch in batches:
            model(**batch)

    times = timed_runs(one_pass, 1, repeats, _sync_for(device))
    summary = summarise(times, len(sentences))
    # The same two rates as time_model (the paper's filtered mean, and the median), under the same names, so no
    # table can label one as the other; sentences_per_second is the median rate.
    return {"inferences_per_second": summary["inferences_per_second"],
            "inferences_per_second_median": summary["inferences_per_second_median"],
            "sentences_per_second": summary["inferences_per_second_median"],
            "seconds_per_pass_median": summary["seconds_median"], "seconds_per_pass_iqr": summary["seconds_iqr"],
            "sentences": len(sentences), "batch_size": batch_size, "mean_tokens": real / len(sentences),
            "padding_fraction": 1 - real / padded, "repeats": repeats,
            "threads": getattr(model, "threads", threads), "device": device.type}


def matmul_peak_gflops(threads: int | None = None, size: int = 2048, runs: int = 10) -> float:
    """The machine's fp32 matrix-multiply rate (best of ``runs``), the bound a model's MACs are measured against."""
    pin_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    times = timed_runs(lambda: torch.mm(a, b), 3, runs)
    return 2 * size ** 3 / min(times) / 1e9
