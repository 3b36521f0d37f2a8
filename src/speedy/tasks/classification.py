"""Sequence classification of single texts and text pairs (MLDoc, PAWS-X, XNLI; the demo's verse genre).

KD distils the logits of the pooled output: one row per example.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from speedy.errors import SpeedyError, where
from speedy.tasks.base import Task


class ClassificationTask(Task):
    type = "classification"
    primary_metric = "accuracy"
    selection_metric = "accuracy"

    def model_class(self):
        return AutoModelForSequenceClassification

    def label_ids(self, dataset: Dataset, source: str = "") -> list[int]:
        ids = []
        for label, line in zip(dataset["label"], dataset["line"]):
            if label not in self.label2id:
                raise SpeedyError(f"{where(source or 'data', line)}: label '{label}' is not in the label set "
                                  f"({', '.join(self.labels)})")
            ids.append(self.label2id[label])
        return ids

    def encode(self, dataset: Dataset, tokenizer, max_length: int, with_index: bool = False,
               source: str = "") -> Dataset:
        pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
        encoded = tokenizer(list(dataset["text"]), pairs, truncation=True, max_length=max_length)
        columns = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
        columns["labels"] = self.label_ids(dataset, source)
        if with_index:
            columns["example_index"] = list(range(len(dataset)))
        return Dataset.from_dict(columns)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, predictions, label_ids) -> dict:
        predicted = np.asarray(predictions).argmax(-1)
        return {"accuracy": float(accuracy_score(label_ids, predicted)),
                "macro_f1": float(f1_score(label_ids, predicted, average="macro", labels=list(range(len(self.labels))),
                                           zero_division=0))}

    def teacher_rows(self, outputs, batch, signal: str = "logits"):
        self.row_dim(signal)  # fails for a signal this task cannot give
        logits = outputs.logits.detach().float().cpu().numpy()
        for example, row in zip(batch["example_index"].tolist(), logits):
            yield example, np.zeros(1, dtype=np.int64), row[None, :]

    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits"):
        self.row_dim(signal)
        teacher, _ = cache.rows(extras["example_index"].tolist(), signal)
        return outputs.logits, teacher.to(outputs.logits.device), inputs.get("labels")
