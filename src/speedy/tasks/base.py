"""What every task type provides to the pipeline: encoding, the model head, the metric, and KD rows.

KD works on *rows*: a task decides what one distilled unit is (an example's logits for classification, a word
for tagging, a start/end distribution for QA). ``teacher_rows`` turns a teacher's batch output into rows placed
by their index within the example (what the teacher cache stores, independent of the student's tokenizer) and
``kd_rows`` pairs the student's rows with the cached teacher rows, so the KD loss and the trainer are shared.
``predict`` runs any engine's model over an encoded split in batches (what evaluation and the export checks score).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from speedy.errors import SpeedyError


def lower_is_better(metric: str) -> bool:
    """Losses fall as a model improves; every other metric speedy selects on (accuracy, F1, exact match) rises."""
    return metric == "loss" or metric.endswith("_loss")


def selection_score(val_metrics: dict, val_loss: float | None, metric: str) -> float:
    """A trial's validation ``metric``, signed so that higher is always better: a loss is negated. Grids, the
    TPE search and the report all keep the trial with the highest score, so none can keep the worst one."""
    if metric == "loss":
        return -float(val_loss if val_loss is not None else val_metrics["loss"])
    value = float(val_metrics[metric])
    return -value if lower_is_better(metric) else value


def device_of(model) -> torch.device:
    """Where a model's inputs must go (a PyTorch model's device; an ONNX Runtime engine says CPU)."""
    return getattr(model, "device", None) or torch.device("cpu")


# Pads KD rows of different widths: a logit whose probability underflows to exactly 0 in float32, and which the
# MSE loss recognises as padding (see speedy.distill.losses).
PAD_LOGIT = -1e4

# KD bookkeeping in batches (tagging: words; QA: context units), never passed to the model.
EXTRA_KEYS = ("example_index", "word_index", "unit_index", "unit_first", "unit_last", "unit_owned")


def signal_tensor(outputs, signal: str) -> torch.Tensor:
    """The model output a KD signal names: ``logits``, or ``hidden.<layer>`` (``[batch, tokens, width]``; layer 0
    is the embeddings, layer i the i-th layer's output; the model must run with ``output_hidden_states``)."""
    if signal == "logits":
        return outputs.logits
    kind, _, layer = signal.partition(".")
    if kind == "hidden" and layer.isdigit():
        states = getattr(outputs, "hidden_states", None)
        if states is None:
            raise SpeedyError(f"distill: signal '{signal}' needs the model run with output_hidden_states=True")
        if int(layer) >= len(states):
            raise SpeedyError(f"distill: signal '{signal}': the model has layers 0..{len(states) - 1} (0: embeddings)")
        return states[int(layer)]
    raise SpeedyError(f"distill: '{signal}' is not a KD signal (logits, hidden.<layer>)")


def needs_hidden_states(signals) -> bool:
    return any(str(signal).startswith("hidden.") for signal in signals)


class Task(ABC):
    type: ClassVar[str]
    # The KD signals its teacher_rows/kd_rows give: "logits" always; "hidden" = hidden.<layer> at the same units
    kd_signals: ClassVar[tuple[str, ...]] = ("logits",)
    primary_metric: ClassVar[str]  # the test metric reports compare (accuracy, F1)
    selection_metric: ClassVar[str]  # the validation metric that early stopping and the best checkpoint follow

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}

    def describe(self, max_length: int) -> dict:
        """What a saved model needs to be scored again: stored in its ``config.json`` as ``speedy_task``."""
        return {"type": self.type, "max_length": max_length, "scheme": getattr(self, "scheme", None)}

    def row_dim(self, signal: str = "logits", teacher=None) -> int:
        """Width of one KD row of ``signal`` (``logits``: one per class) from ``teacher`` (a later signal's width,
        a hidden state's, may be the teacher's). A signal this task's ``teacher_rows``/``kd_rows`` cannot give
        is an error."""
        if signal == "logits":
            return len(self.labels)
        kind, _, layer = signal.partition(".")
        if kind not in self.kd_signals or kind == "logits" or not layer.isdigit():
            raise SpeedyError(f"distill: a {self.type} task has no KD signal '{signal}' (it has: "
                              f"{', '.join(k if k == 'logits' else k + '.<layer>' for k in self.kd_signals)})")
        config = getattr(teacher, "config", None)
        if config is not None and int(layer) > config.num_hidden_layers:
            raise SpeedyError(f"distill: signal '{signal}': the teacher has layers 0..{config.num_hidden_layers} "
                              f"(0: embeddings)")
        return int(config.hidden_size) if config is not None else 0

    def unlabelled_rows(self, lines: list[tuple[str, int, str]], columns: list[str]) -> list[dict]:
        """Examples of the gold split's ``columns``, without gold labels, from lines of transfer text (``(file,
        line number, text)``): what the teacher labels for KD (see :mod:`speedy.data.transfer`)."""
        raise SpeedyError(f"{lines[0][0] if lines else 'transfer_files'}: a {self.type} task takes no transfer "
                          f"text (plain lines: classification of single texts and tagging)")

    @abstractmethod
    def model_class(self):
        """The ``AutoModelFor...`` class of this task's head."""

    def load_model(self, name_or_path: str, **kwargs):
        return self.model_class().from_pretrained(
            name_or_path, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id=self.label2id, **kwargs)

    def prepare(self, train_split) -> None:
        """Learn what the task needs from its training split before use (a no-op for most tasks)."""

    def rows_per_example(self, dataset, signal: str = "logits") -> list[int]:
        """How many KD rows of ``signal`` each example has (what the teacher cache stores per example)."""
        return [1] * len(dataset)

    @abstractmethod
    def encode(self, dataset: Dataset, tokenizer, max_length: int, with_index: bool = False, source: str = "") -> Dataset:
        """Model inputs and ``labels``; with the KD bookkeeping (``example_index``...) when ``with_index``.
        ``source`` names the file in error messages."""

    @abstractmethod
    def collator(self, tokenizer):
        """Pads a list of encoded examples into a batch."""

    @abstractmethod
    def compute_metrics(self, predictions: np.ndarray, label_ids: np.ndarray) -> dict:
        """Metrics from the model's logits and the gold label ids (the Trainer's validation)."""

    def evaluate(self, model, tokenizer, dataset, max_length: int, source: str = "") -> dict:
        """Test metrics of ``model`` on a split."""
        logits, labels = predict(model, tokenizer, self, self.encode(dataset, tokenizer, max_length, source=source))
        return self.compute_metrics(logits, labels)

    @abstractmethod
    def teacher_rows(self, outputs, batch, signal: str = "logits") -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
        """For each sequence of a teacher batch: ``(example index, row indices within the example, rows)`` of
        ``signal``."""

    @abstractmethod
    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits",
                student_signal: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The student's rows of ``student_signal`` (default: ``signal``; a hidden layer of the student may learn
        another layer of the teacher), the teacher's matching rows of ``signal`` from ``cache``, and the rows' gold
        labels (``None`` where the signal has no labels)."""


@torch.no_grad()
def predict(model, tokenizer, task: Task, encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and gold label ids for an encoded dataset, in order."""
    model.eval()
    loader = DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=task.collator(tokenizer))
    logits, labels = [], []
    for batch in loader:
        for name in EXTRA_KEYS:
            batch.pop(name, None)
        gold = batch.pop("labels")
        logits.append(model(**batch).logits.float().cpu().numpy())
        labels.append(gold.cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)
