"""Token tagging: POS (AnCora UD, UPOS) and NER (CoNLL-2002, BIO).

* **Labels** sit on the first sub-token of each word; the other sub-tokens are ignored (-100).
* **Long sentences** are cut into overlapping windows of whole words (:func:`~speedy.tasks.alignment.word_windows`);
  each word is predicted once, in the window where it has the most context, so every input word gets exactly
  one tag even when the sentence is longer than the model's maximum length.
* **Words with no sub-token** (a tokenizer may drop every character of a word) get the fallback tag ``O`` if the
  label set has it, else the most frequent training tag; they are counted in the metrics as any other word.
* **KD** compares teacher and student per word, at each word's first sub-token, matched by the word's index in
  its sentence; the teacher cache stores one row per word (NaN for words the teacher saw no piece of), so it does
  not depend on the student's tokenizer.
* **Metrics**: NER F1 is seqeval's entity-level F1 (BIO, default mode). POS "F1", as the paper reports it, is
  seqeval's F1 with every word a one-word entity of its tag: that equals token accuracy when every word gets a
  tag (which it does here); token accuracy and the macro-F1 over tags are reported beside it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from datasets import Dataset
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import f1_score
from transformers import AutoModelForTokenClassification

from speedy.data.readers import load_hub_tagging, read_tagged
from speedy.errors import SpeedyError, where
from speedy.runtime.alignment import first_subtokens, word_windows
from speedy.runtime.tagging import TaggingRuntime
from speedy.tasks.base import MAX, Task, device_of, signal_tensor

IGNORE = -100


class TaggingCollator:
    """Pads model inputs with the tokenizer; ``labels`` with -100 and ``word_index`` with -1."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features):
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features[0]]
        batch = self.tokenizer.pad([{n: f[n] for n in names} for f in features], return_tensors="pt")
        length = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"
        for name, fill in (("labels", IGNORE), ("word_index", -1)):
            if name in features[0]:
                rows = [([fill] * (length - len(f[name])) + list(f[name])) if left else
                        (list(f[name]) + [fill] * (length - len(f[name]))) for f in features]
                batch[name] = torch.tensor(rows, dtype=torch.long)
        if "example_index" in features[0]:
            batch["example_index"] = torch.tensor([f["example_index"] for f in features], dtype=torch.long)
        return batch


class TaggingTask(Task):
    type = "tagging"
    kd_signals = ("logits", "hidden")  # hidden: a layer's state at each word's first sub-token, as the logits
    primary_metric = "f1"  # seqeval's entity F1 (BIO), or per-word accuracy (POS: every word its own entity)
    selection_metric = "f1"
    metrics = {"f1": MAX, "accuracy": MAX, "macro_f1": MAX}  # macro_f1: POS only
    choices = {"scheme": ("tagging scheme", ("bio", "pos"))}
    file_formats = ("conll", "conllu")
    head_architecture = "ForTokenClassification"
    per_token = True
    pipeline_tag = "token-classification"
    runtime = TaggingRuntime  # the route, its inputs and results, and prediction without torch
    route, route_help, inputs, results = runtime.route, runtime.route_help, runtime.inputs, runtime.results
    input_item = staticmethod(runtime.input_item)

    def __init__(self, labels: list[str], scheme: str = "bio", fallback: str | None = None):
        super().__init__(labels)
        allowed = self.choices["scheme"][1]
        if scheme not in allowed:
            raise SpeedyError(f"tasks.scheme: unknown tagging scheme '{scheme}' (allowed: {', '.join(allowed)})")
        self.scheme = scheme
        self.fallback = fallback if fallback in self.label2id else ("O" if "O" in self.label2id else self.labels[0])

    @classmethod
    def from_settings(cls, labels, settings):
        return cls(labels, settings.get("scheme") or "bio", settings.get("fallback"))

    @classmethod
    def metric_names(cls, settings):
        return tuple(m for m in super().metric_names(settings) if m != "macro_f1" or settings.get("scheme") == "pos")

    def model_class(self):
        return AutoModelForTokenClassification

    def describe(self, max_length: int) -> dict:
        return super().describe(max_length) | {"scheme": self.scheme, "fallback": self.fallback}

    @classmethod
    def read_file(cls, path, options, report=print):
        """CoNLL (a word and its tag per line) or CoNLL-U (UPOS by default); ``tag_column`` picks the column."""
        return read_tagged(path, options.get("format"), options.get("tag_column"))

    @classmethod
    def load_hub(cls, name, config, split, columns):
        return load_hub_tagging(name, config, split, columns["hub_tokens"], columns["hub_tags"])

    @staticmethod
    def gold_labels(split):
        return ((tag, line) for tags, lines in zip(split["tags"], split["lines"]) for tag, line in zip(tags, lines))

    def rows_per_example(self, dataset, signal: str = "logits", encoded=None) -> list[int]:
        return [len(tokens) for tokens in dataset["tokens"]]  # one row per word, whatever the signal

    def prepare(self, train_split) -> None:
        """The fallback tag (for words no piece survives of): ``O``, else the most frequent training tag."""
        if "O" not in self.label2id:
            self.fallback = Counter(tag for tags in train_split["tags"] for tag in tags).most_common(1)[0][0]

    # ------------------------------------------------------------------ encoding
    def tag_ids(self, dataset, source: str = "") -> list[list[int]]:
        out = []
        for tags, lines in zip(dataset["tags"], dataset["lines"]):
            if tags is None:  # transfer text: no gold tags, the teacher's soft targets only
                out.append([IGNORE] * len(lines))
                continue
            ids = []
            for tag, line in zip(tags, lines):
                if tag not in self.label2id:
                    raise SpeedyError(f"{where(source or 'data', line)}: tag '{tag}' is not in the label set "
                                      f"({', '.join(self.labels)})")
                ids.append(self.label2id[tag])
            out.append(ids)
        return out

    def windows(self, tokenizer, sentences: list[list[str]], max_length: int, encoded=None):
        """``(sentence index, window)`` for every window of every sentence (``encoded``: the sentences already
        tokenized whole, if at hand; special tokens in it are ignored)."""
        budget = max(1, max_length - tokenizer.num_special_tokens_to_add())
        if encoded is None:
            encoded = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
        out = []
        for i in range(len(sentences)):
            counts = Counter(w for w in encoded.word_ids(i) if w is not None)
            # A word with no piece still needs a place in a window (it is owned, just never predicted).
            pieces = [counts.get(w, 0) for w in range(len(sentences[i]))]
            out += [(i, window) for window in word_windows(pieces, budget)]
        return out

    def encode(self, dataset, tokenizer, max_length: int, with_index: bool = False, source: str = "") -> Dataset:
        sentences = [list(tokens) for tokens in dataset["tokens"]]
        gold = self.tag_ids(dataset, source) if "tags" in dataset.column_names else None
        return Dataset.from_dict(self.encode_columns(sentences, gold, tokenizer, max_length, with_index))

    def encode_columns(self, sentences: list[list[str]], gold, tokenizer, max_length: int,
                       with_index: bool = False) -> dict:
        """The encoded windows as plain columns (prediction skips ``Dataset``, whose fingerprinting costs more
        than a small model's forward pass)."""
        # Tokenized once, whole: a sentence that fits is its own window and reuses this encoding; only the
        # windows of longer sentences are tokenized again.
        whole = tokenizer(sentences, is_split_into_words=True)
        windows = self.windows(tokenizer, sentences, max_length, encoded=whole)
        reuse = [w.start == 0 and w.end == len(sentences[i]) and len(whole["input_ids"][i]) <= max_length
                 for i, w in windows]
        cut = [sentences[i][w.start : w.end] for (i, w), same in zip(windows, reuse) if not same]
        parts = tokenizer(cut, is_split_into_words=True, truncation=True, max_length=max_length) if cut else None
        names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in whole]
        columns = {name: [] for name in names}
        word_ids, next_part = [], 0
        for (i, _), same in zip(windows, reuse):
            source, row = (whole, i) if same else (parts, next_part)
            next_part += 0 if same else 1
            for name in names:
                columns[name].append(source[name][row])
            word_ids.append(source.word_ids(row))
        labels, word_index, example_index = [], [], []
        for row, (i, window) in enumerate(windows):
            first = first_subtokens(word_ids[row])
            length = len(columns["input_ids"][row])
            row_labels, row_words = [IGNORE] * length, [-1] * length
            for word in window.owned:
                position = first.get(word - window.start)
                if position is None:
                    continue  # no piece of this word survived: it gets the fallback tag at prediction
                row_words[position] = word
                if gold is not None:
                    row_labels[position] = gold[i][word]
            labels.append(row_labels)
            word_index.append(row_words)
            example_index.append(i)
        columns["labels"] = labels
        if with_index:
            columns["word_index"] = word_index
            columns["example_index"] = example_index
        return columns

    def collator(self, tokenizer):
        return TaggingCollator(tokenizer)

    # ------------------------------------------------------------------ metrics
    def _entity_tags(self, tags: list[str]) -> list[str]:
        return tags if self.scheme == "bio" else [f"B-{tag}" for tag in tags]

    def score(self, gold: list[list[str]], predicted: list[list[str]]) -> dict:
        flat_gold = [t for s in gold for t in s]
        flat_pred = [t for s in predicted for t in s]
        metrics = {
            "f1": float(seqeval_f1([self._entity_tags(s) for s in gold], [self._entity_tags(s) for s in predicted],
                                   zero_division=0)),
            "accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred)])) if flat_gold else 0.0,
        }
        if self.scheme == "pos":
            metrics["macro_f1"] = float(f1_score(flat_gold, flat_pred, average="macro", labels=self.labels,
                                                 zero_division=0))
        return metrics

    def compute_metrics(self, predictions, label_ids) -> dict:
        """Window-level scores during training (each window's owned words as one sequence)."""
        predicted = np.asarray(predictions).argmax(-1)
        gold_rows, pred_rows = [], []
        for pred, gold in zip(predicted, np.asarray(label_ids)):
            keep = gold != IGNORE
            gold_rows.append([self.labels[i] for i in gold[keep]])
            pred_rows.append([self.labels[i] for i in pred[keep]])
        return self.score(gold_rows, pred_rows)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_words(self, model, tokenizer, sentences: list[list[str]], max_length: int,
                      batch_size: int = 32) -> list[list[str]]:
        """One tag per input word, for every sentence, whatever its length."""
        model.eval()
        columns = self.encode_columns([list(s) for s in sentences], None, tokenizer, max_length, with_index=True)
        encoded = [dict(zip(columns, values)) for values in zip(*columns.values())]
        out = [[self.fallback] * len(s) for s in sentences]
        collate = self.collator(tokenizer)
        device = device_of(model)
        for start in range(0, len(encoded), batch_size):
            batch = collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))])
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            predicted = model(**inputs).logits.argmax(-1).cpu()
            for row in range(predicted.shape[0]):
                positions = (batch["word_index"][row] >= 0).nonzero().squeeze(-1)
                sentence = int(batch["example_index"][row])
                for position in positions.tolist():
                    out[sentence][int(batch["word_index"][row, position])] = self.labels[int(predicted[row, position])]
        return out

    def predict_items(self, model, tokenizer, items, max_length):
        """Items: word lists; a result: the words and one tag per word."""
        sentences = [words for words in items if words]  # a text of only (Unicode) spaces has no word
        tags = iter(self.predict_words(model, tokenizer, sentences, max_length) if sentences else [])
        return [{"words": words, "tags": next(tags) if words else []} for words in items]

    def predictions(self, model, tokenizer, dataset, max_length: int) -> list:
        sentences = [list(tokens) for tokens in dataset["tokens"]]
        return [tag for tags in self.predict_words(model, tokenizer, sentences, max_length) for tag in tags]

    def evaluate(self, model, tokenizer, dataset, max_length: int, source: str = "") -> dict:
        self.tag_ids(dataset, source)  # unknown tags fail here, naming the file and line
        sentences = [list(tokens) for tokens in dataset["tokens"]]
        predicted = self.predict_words(model, tokenizer, sentences, max_length)
        return self.score([list(tags) for tags in dataset["tags"]], predicted)

    # ------------------------------------------------------------------ distillation
    def unlabelled_rows(self, lines, columns):
        """A line's words are its whitespace-separated pieces: the gold CoNLL files' own pre-tokenisation."""
        return [{"tokens": text.split(), "tags": None, "lines": [number] * len(text.split()), "line": number}
                for _, number, text in lines]

    def teacher_rows(self, outputs, batch, signal: str = "logits"):
        self.row_dim(signal)  # fails for a signal this task cannot give
        values = signal_tensor(outputs, signal).detach().float().cpu().numpy()
        word_index = batch["word_index"].cpu().numpy()
        for row, example in enumerate(batch["example_index"].tolist()):
            keep = word_index[row] >= 0
            yield example, word_index[row][keep], values[row][keep]

    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits", student_signal: str | None = None):
        self.row_dim(signal)
        logits, word_index = signal_tensor(outputs, student_signal or signal), extras["word_index"]
        students, teachers, labels = [], [], []
        for row, example in enumerate(extras["example_index"].tolist()):
            positions = (word_index[row] >= 0).nonzero().squeeze(-1)
            words = word_index[row, positions].cpu()
            teacher = torch.from_numpy(cache.example(example, signal))
            if len(words) and int(words.max()) >= teacher.shape[0]:
                raise SpeedyError(f"teacher cache {cache.folder}: example {example} has {teacher.shape[0]} words, "
                                  f"the student's batch refers to word {int(words.max())}")
            teacher = teacher[words]
            valid = ~torch.isnan(teacher).any(-1)  # words the teacher saw no piece of are left out
            students.append(logits[row, positions[valid.to(positions.device)]])
            teachers.append(teacher[valid])
            labels.append(inputs["labels"][row, positions[valid.to(positions.device)]])
        return torch.cat(students), torch.cat(teachers).to(logits.device), torch.cat(labels)
