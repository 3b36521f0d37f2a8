"""Inference speed with the paper's protocol, and plain statistics beside it.

The paper times ``warmup`` runs that are thrown away, then ``runs`` measured ones, and drops outliers whose
modified Z-score ``0.6745 * (x - median) / MAD`` exceeds 0.75 in absolute value (Iglewicz and Hoaglin's
score, with the paper's threshold). On a GPU the device is synchronised before each clock read, or the
clock would measure only the kernel launch. Threads are set and reported.
"""

from __future__ import annotations

import time

import numpy as np
import torch

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


@torch.inference_mode()
def time_model(model, inputs: dict, warmup: int = 10, runs: int = 100, threads: int | None = None) -> dict:
    """Seconds per call of ``model(**inputs)``: the paper's filtered mean, the median and the spread."""
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    device = next(model.parameters()).device
    inputs = {name: value.to(device) for name, value in inputs.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(**inputs)
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(**inputs)
        sync()
        times.append(time.perf_counter() - start)
    kept = modified_z_filter(times)
    batch = int(next(iter(inputs.values())).shape[0])
    return {"seconds_filtered_mean": float(kept.mean()), "seconds_median": float(np.median(times)),
            "seconds_std": float(np.std(times)), "kept_runs": int(len(kept)), "runs": runs, "warmup": warmup,
            "inferences_per_second": float(batch / kept.mean()), "threads": torch.get_num_threads(),
            "device": device.type, "batch_size": batch, "length": int(inputs["input_ids"].shape[1])}
