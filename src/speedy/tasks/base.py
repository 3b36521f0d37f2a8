"""What every task type provides to the pipeline: encoding, the model head, the metric, and KD rows.

KD works on *rows*: a task decides what one distilled unit is (an example's logits for classification, a word
for tagging, a start/end distribution for QA). ``teacher_rows`` turns a teacher's batch output into one array
of rows per example (what the teacher cache stores, independent of the student's tokenizer) and
``student_rows`` gathers the student's matching rows, so the KD loss and the trainer are shared by all tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset


@dataclass
class TaskData:
    """A task's splits, where each came from (for error messages), and its label set."""

    name: str
    splits: dict[str, Dataset]
    sources: dict[str, str]
    labels: list[str]
    info: dict = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Every text of every split (for vocabulary pruning)."""
        out = []
        for split in self.splits.values():
            for column in ("text", "text_pair"):
                if column in split.column_names:
                    out += list(split[column])
        return out


class Task(ABC):
    type: str
    primary_metric: str

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}

    @abstractmethod
    def model_class(self):
        """The ``AutoModelFor...`` class of this task's head."""

    def load_model(self, name_or_path: str, **kwargs):
        return self.model_class().from_pretrained(
            name_or_path, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id=self.label2id, **kwargs)

    @abstractmethod
    def encode(self, dataset: Dataset, tokenizer, max_length: int, with_index: bool = False) -> Dataset:
        """Model inputs and ``labels``; with ``example_index`` (the row's position) when ``with_index``."""

    @abstractmethod
    def collator(self, tokenizer):
        """Pads a list of encoded examples into a batch."""

    @abstractmethod
    def compute_metrics(self, predictions: np.ndarray, label_ids: np.ndarray) -> dict:
        """Metrics from the model's logits and the gold label ids."""

    @abstractmethod
    def teacher_rows(self, outputs, batch) -> list[np.ndarray]:
        """One ``[rows, dim]`` array per example of the batch, from the teacher's outputs."""

    @abstractmethod
    def student_rows(self, outputs, inputs) -> torch.Tensor:
        """The student's rows matching ``teacher_rows``, concatenated over the batch in the same order."""

    def row_labels(self, inputs) -> torch.Tensor | None:
        """Gold labels of the rows (for the CE part of the KD loss)."""
        return inputs.get("labels")
