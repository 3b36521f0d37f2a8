"""Sequence classification of single texts and text pairs (MLDoc, PAWS-X, XNLI; the demo's verse genre).

KD distils the logits of the pooled output: one row per example.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from speedy.data.readers import FORMATS, load_hub_split, read_labelled_texts
from speedy.errors import SpeedyError, where
from speedy.runtime.classification import ClassificationRuntime
from speedy.tasks.base import MAX, Task, mean_over_tokens, sequence_dataset, signal_tensor


class ClassificationTask(Task):
    type = "classification"
    kd_signals = ("logits", "hidden")  # hidden: the mean of an example's token states (any tokenizer agrees)
    primary_metric = "accuracy"
    selection_metric = "accuracy"
    metrics = {"accuracy": MAX, "macro_f1": MAX}
    file_formats = FORMATS
    min_labels = 2
    builtin_data = ("rv1909-genre",)  # the demo's: a verse -> the genre of its book
    head_architecture = "ForSequenceClassification"
    pipeline_tag = "text-classification"
    runtime = ClassificationRuntime  # the route, its inputs and results, and prediction without torch
    route, route_help, inputs, results = runtime.route, runtime.route_help, runtime.inputs, runtime.results
    input_item = staticmethod(runtime.input_item)

    def model_class(self):
        return AutoModelForSequenceClassification

    @classmethod
    def read_file(cls, path, options, report=print):
        """TSV / CSV / JSONL with a text (and a second text, for pairs) and a label per row."""
        return read_labelled_texts(path, options.get("text", "text"), options.get("label", "label"),
                                   options.get("text_pair"), options.get("format"), options.get("columns"),
                                   options.get("keep"), options.get("label_map"))

    @classmethod
    def load_hub(cls, name, config, split, columns):
        return load_hub_split(name, config, split, columns["text"], columns["label"], columns.get("text_pair"))

    @staticmethod
    def gold_labels(split):
        return zip(split["label"], split["line"])

    def label_ids(self, dataset: Dataset, source: str = "") -> list[int]:
        ids = []
        for label, line in zip(dataset["label"], dataset["line"]):
            if label is None:  # transfer text: no gold label, the teacher's soft targets only
                ids.append(-100)
                continue
            if label not in self.label2id:
                raise SpeedyError(f"{where(source or 'data', line)}: label '{label}' is not in the label set "
                                  f"({', '.join(self.labels)})")
            ids.append(self.label2id[label])
        return ids

    def encode(self, dataset: Dataset, tokenizer, max_length: int, with_index: bool = False,
               source: str = "") -> Dataset:
        pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
        encoded = tokenizer(list(dataset["text"]), pairs, truncation=True, max_length=max_length)
        return sequence_dataset(encoded, self.label_ids(dataset, source), with_index)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, predictions, label_ids) -> dict:
        predicted = np.asarray(predictions).argmax(-1)
        return {"accuracy": float(accuracy_score(label_ids, predicted)),
                "macro_f1": float(f1_score(label_ids, predicted, average="macro", labels=list(range(len(self.labels))),
                                           zero_division=0))}

    def predict_items(self, model, tokenizer, items, max_length):
        """Items: ``(text, pair)``; a result: the best label, its probability and every label's."""
        texts = [text for text, _ in items]
        pairs = [pair for _, pair in items]
        if any(p is None for p in pairs) and any(p is not None for p in pairs):  # mixed: one call per kind
            out = [None] * len(items)
            for want_pair in (False, True):
                chosen = [i for i, p in enumerate(pairs) if (p is not None) == want_pair]
                for i, result in zip(chosen, self.predict_items(model, tokenizer, [items[i] for i in chosen],
                                                                max_length)):
                    out[i] = result
            return out
        inputs = tokenizer(texts, pairs if pairs[0] is not None else None, truncation=True, max_length=max_length,
                           padding=True, return_tensors="pt")
        probabilities = torch.softmax(model(**inputs).logits.float(), -1)
        results = []
        for row in probabilities:
            best = int(row.argmax())
            results.append({"label": self.labels[best], "score": float(row[best]),
                            "scores": {label: float(p) for label, p in zip(self.labels, row)}})
        return results

    def unlabelled_rows(self, lines, columns):
        if "text_pair" in columns:
            raise SpeedyError(f"{lines[0][0]}: transfer text for a text-pair task would need pairs, which plain "
                              f"lines are not (transfer_files: classification of single texts and tagging)")
        return [{"text": text, "label": None, "line": number} for _, number, text in lines]

    @staticmethod
    def example_rows(outputs, attention_mask, signal: str):
        """One row per example: the logits, or the mean of a hidden layer over the example's real tokens (the
        [CLS] state means different things to different tokenizers and pretraining; the mean is comparable)."""
        values = signal_tensor(outputs, signal)
        return values if signal == "logits" else mean_over_tokens(values, attention_mask)

    def teacher_rows(self, outputs, batch, signal: str = "logits"):
        self.row_dim(signal)  # fails for a signal this task cannot give
        rows = self.example_rows(outputs, batch["attention_mask"].to(outputs.logits.device), signal)
        rows = rows.detach().float().cpu().numpy()
        for example, row in zip(batch["example_index"].tolist(), rows):
            yield example, np.zeros(1, dtype=np.int64), row[None, :]

    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits", student_signal: str | None = None):
        self.row_dim(signal)
        student = self.example_rows(outputs, inputs["attention_mask"], student_signal or signal)
        teacher, _ = cache.rows(extras["example_index"].tolist(), signal)
        return student, teacher.to(student.device), inputs.get("labels")
