"""Extractive question answering (SQuAD v1.1 format: MLQA, SQAC, TAR, XQuAD; SQuAD-es).

* **Windows**: a long context is split into overlapping windows (``stride`` tokens of overlap, the question in
  every window); the answer is the best span over all windows (start logit + end logit, at most
  ``max_answer_length`` tokens, inside the context).
* **Metrics**: official SQuAD v1.1 F1 and exact match (:mod:`speedy.tasks.squad_metric`), as fractions here
  (reports show them times 100), with the normalisation named in ``normalization`` (``en``: the official one).
* **KD across tokenizers**: teacher and student distributions are compared on *units* of the context (words and
  single punctuation marks, found by the regex ``\\w+|[^\\w\\s]`` on the characters, so independent of any
  tokenizer): a unit's start logit is the one at its first sub-token, its end logit the one at its last. The
  teacher cache keeps one ``(start, end)`` row per unit of each context, taken from the teacher window where the
  unit has the most context (NaN if the teacher had no token starting in it). A student window is matched to
  the teacher by the units it covers (the character span), not by its order: KD compares the softmax over the
  window's fully covered units, for start and for end; question tokens, padding and special tokens never enter.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from speedy.data.squad import load_hub_squad, read_squad
from speedy.errors import SpeedyError, where
from speedy.runtime.qa import MIN_CONTEXT, QARuntime, best_span, plan_calls, token_start
from speedy.tasks.base import MAX, PAD_LOGIT, Task, device_of
from speedy.tasks.squad_metric import squad_scores

UNIT = re.compile(r"\w+|[^\w\s]")
UNIT_KEYS = ("unit_index", "unit_first", "unit_last", "unit_owned")


def context_units(context: str) -> list[tuple[int, int]]:
    """Character spans of the context's units (words and single punctuation marks)."""
    return [(m.start(), m.end()) for m in UNIT.finditer(context)]


def window_units(context: str, units, offsets, sequence_ids) -> tuple[list[int], list[int], list[int]]:
    """Units fully covered by one window, each with its first and last token position in the window."""
    starts = [u[0] for u in units]
    first, last = {}, {}
    span_start, span_end = None, None
    for position, (offset, sequence) in enumerate(zip(offsets, sequence_ids)):
        if sequence != 1 or offset is None or offset[1] <= offset[0]:
            continue
        s = token_start(context, offset[0], offset[1])
        if s >= offset[1]:
            continue
        span_start = s if span_start is None else span_start
        span_end = offset[1]
        u = bisect_right(starts, s) - 1
        if u < 0 or s >= units[u][1]:
            continue
        first.setdefault(u, position)
        last[u] = position
    if span_start is None:
        return [], [], []
    covered = [u for u in sorted(first) if units[u][0] >= span_start and units[u][1] <= span_end]
    return covered, [first[u] for u in covered], [last[u] for u in covered]


class QACollator(DataCollatorWithPadding):
    """Pads model inputs; pads the per-window unit lists with -1 (they are KD bookkeeping)."""

    def __call__(self, features):
        features = [dict(f) for f in features]  # the caller's features stay as they were
        extra = {k: [f.pop(k) for f in features] for k in UNIT_KEYS if k in features[0]}
        batch = super().__call__(features)
        for key, rows in extra.items():
            width = max(1, max(len(r) for r in rows))
            batch[key] = torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
        return batch


class QATask(Task):
    type = "qa"
    primary_metric = "f1"
    # SQuAD F1 of the spans decoded at each validation (validation_metrics): the loss picked the wrong epoch of a
    # 6-layer student (its lowest-loss epoch scored 52.40 F1, the epoch before it 54.31)
    selection_metric = "f1"
    metrics = {"f1": MAX, "exact_match": MAX, "window_start_accuracy": MAX, "window_end_accuracy": MAX,
               "window_span_accuracy": MAX}
    ordered_validation = True
    choices = {"normalization": ("normalisation", ("en", "es"))}
    fixed_labels = ("start", "end")
    head_architecture = "ForQuestionAnswering"
    per_token = True
    onnx_outputs = ("start_logits", "end_logits")
    pipeline_tag = "question-answering"
    runtime = QARuntime  # the route, its inputs and results, and prediction without torch
    route, route_help, inputs, results = runtime.route, runtime.route_help, runtime.inputs, runtime.results
    input_item, check_result = staticmethod(runtime.input_item), staticmethod(runtime.check_result)

    def __init__(self, labels=None, normalization: str = "en", stride: int = 64, max_answer_length: int = 30,
                 max_windows: int = 64):
        super().__init__(list(self.fixed_labels))
        self.normalization, self.stride, self.max_answer_length = normalization, stride, max_answer_length
        self.max_windows = max_windows  # what one example may cost: a 10 MB context would be ~100k windows

    def row_dim(self, signal: str = "logits", teacher=None) -> int:
        super().row_dim(signal, teacher)  # fails for a signal this task cannot give
        return 2  # (start logit, end logit) per unit

    @classmethod
    def from_settings(cls, labels, settings):
        given = {name: settings.get(name) for name in ("normalization", "stride", "max_windows")}
        return cls(**{name: value for name, value in given.items() if value is not None})

    def model_class(self):
        return AutoModelForQuestionAnswering

    @classmethod
    def read_file(cls, path, options, report=print):
        """SQuAD v1.1 JSON; answers whose ``answer_start`` misses their text are handled as ``bad_answers`` says."""
        return read_squad(path, require_answers=True, bad_answers=options.get("bad_answers", "fix"), report=report)

    @classmethod
    def load_hub(cls, name, config, split, columns):
        return load_hub_squad(name, config, split)

    def load_model(self, name_or_path: str, **kwargs):
        return AutoModelForQuestionAnswering.from_pretrained(name_or_path, **kwargs)

    def describe(self, max_length: int) -> dict:
        return super().describe(max_length) | {"normalization": self.normalization, "stride": self.stride,
                                               "max_windows": self.max_windows}

    def rows_per_example(self, dataset, signal: str = "logits", encoded=None) -> list[int]:
        return [len(context_units(c)) for c in dataset["context"]]  # one row per unit, whatever the signal

    # ------------------------------------------------------------------ encoding
    def _tokenize(self, dataset, tokenizer, max_length: int, source: str = ""):
        # The stride must leave room for new context in every window, whatever the longest question takes.
        questions = [len(ids) for ids in tokenizer(list(dataset["question"]), add_special_tokens=False)["input_ids"]]
        longest = max(questions)
        room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
        if room < MIN_CONTEXT:
            raise SpeedyError(f"tasks.max_length: {max_length} leaves {room} tokens of context beside the longest "
                              f"question ({longest} tokens); raise it")
        stride = min(self.stride, room // 2)
        self._check_windows(dataset, tokenizer, questions, max_length, stride, source)
        return tokenizer(list(dataset["question"]), list(dataset["context"]), truncation="only_second",
                         max_length=max_length, stride=stride, return_overflowing_tokens=True,
                         return_offsets_mapping=True)

    def _check_windows(self, dataset, tokenizer, questions, max_length: int, stride: int, source: str) -> None:
        """At most ``max_windows`` windows per example, checked before the windows are made (all of an example's
        windows, with their offsets, are held at once: a 10 MB context took more than 11 GB)."""
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        ids = list(dataset["id"]) if "id" in dataset.column_names else None
        for i, (context, question) in enumerate(zip(dataset["context"], questions)):
            room = max_length - question - specials
            budget = room + (self.max_windows - 1) * (room - stride)  # context tokens that fit in max_windows
            if len(context.encode("utf-8")) < budget:
                continue  # no tokenizer makes more tokens than UTF-8 bytes (+1 word mark): it fits, no need to count
            # Counted a slice at a time, stopping past the budget: a huge context is never tokenized whole.
            count, size = 0, 4 * budget
            for start in range(0, len(context), size):
                count += len(tokenizer(context[start : start + size], add_special_tokens=False)["input_ids"])
                if count > budget:
                    name = f"question id {ids[i]}" if ids else f"example {i + 1}"
                    raise SpeedyError(f"{source or 'qa'}: {name}: the context needs more than {self.max_windows} "
                                      f"windows of {max_length} tokens (more than {budget} tokens); raise "
                                      f"tasks.max_windows or shorten the context")

    def encode(self, dataset, tokenizer, max_length: int, with_index: bool = False, source: str = "") -> Dataset:
        if tokenizer.padding_side != "right":
            raise SpeedyError("qa: the tokenizer must pad on the right")
        encoded = self._tokenize(dataset, tokenizer, max_length, source)
        contexts = list(dataset["context"])
        answers = list(dataset["answers"]) if "answers" in dataset.column_names else None
        columns = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
        starts, ends, examples, unit_rows = [], [], [], {k: [] for k in UNIT_KEYS}
        units_of = {}
        for row, example in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence_ids = encoded.sequence_ids(row)
            offsets = encoded["offset_mapping"][row]
            start_position = end_position = 0  # the first token ([CLS]/<s>): no answer in this window
            if answers is not None and answers[example]["text"]:
                char_start = answers[example]["answer_start"][0]
                char_end = char_start + len(answers[example]["text"][0])
                context_positions = [i for i, s in enumerate(sequence_ids) if s == 1]
                if context_positions and offsets[context_positions[0]][0] <= char_start and \
                        offsets[context_positions[-1]][1] >= char_end:
                    start_position = next(i for i in context_positions if offsets[i][1] > char_start)
                    end_position = max(i for i in context_positions if offsets[i][0] < char_end)
            starts.append(start_position)
            ends.append(end_position)
            examples.append(example)
            if with_index:
                if example not in units_of:
                    units_of[example] = context_units(contexts[example])
                covered, first, last = window_units(contexts[example], units_of[example], offsets, sequence_ids)
                unit_rows["unit_index"].append(covered)
                unit_rows["unit_first"].append(first)
                unit_rows["unit_last"].append(last)
        columns["start_positions"], columns["end_positions"] = starts, ends
        if with_index:
            unit_rows["unit_owned"] = self._owners(examples, unit_rows["unit_index"], unit_rows["unit_first"],
                                                   unit_rows["unit_last"])
            columns.update(unit_rows)
            columns["example_index"] = examples
        return Dataset.from_dict(columns)

    @staticmethod
    def _owners(examples, unit_index, unit_first, unit_last) -> list[list[int]]:
        """1 where this window is the one in which the unit has the most context on both sides."""
        best = {}
        for row, (example, units, first, last) in enumerate(zip(examples, unit_index, unit_first, unit_last)):
            if not units:
                continue
            lo, hi = first[0], last[-1]
            for u, f, l in zip(units, first, last):
                margin = min(f - lo, hi - l)
                if (example, u) not in best or margin > best[(example, u)][1]:
                    best[(example, u)] = (row, margin)
        return [[int(best[(example, u)][0] == row) for u in units]
                for row, (example, units) in enumerate(zip(examples, unit_index))]

    def collator(self, tokenizer):
        return QACollator(tokenizer)

    # ------------------------------------------------------------------ metrics and prediction
    def compute_metrics(self, predictions, label_ids) -> dict:
        """Window-level agreement during training (the SQuAD scores need the post-processing of evaluate)."""
        start_logits, end_logits = predictions[:2] if isinstance(predictions, (tuple, list)) else predictions
        start_gold, end_gold = label_ids
        start = np.asarray(start_logits).argmax(-1) == np.asarray(start_gold)
        end = np.asarray(end_logits).argmax(-1) == np.asarray(end_gold)
        return {"window_start_accuracy": float(start.mean()), "window_end_accuracy": float(end.mean()),
                "window_span_accuracy": float((start & end).mean())}

    def validation_metrics(self, split, tokenizer, max_length: int, source: str = ""):
        """Window agreement plus the SQuAD F1 and exact match of each epoch: the best span of every question is
        decoded from its windows' logits (in the order ``encode`` made the windows, which the trainer keeps), as
        ``evaluate`` does on a saved model."""
        encoded = self._tokenize(split, tokenizer, max_length, source)
        contexts = list(split["context"])

        def metrics(predictions, label_ids) -> dict:
            start_logits, end_logits = predictions[:2] if isinstance(predictions, (tuple, list)) else predictions
            if len(start_logits) != len(encoded["input_ids"]):
                raise SpeedyError(f"{source or 'qa'}: validation gave {len(start_logits)} windows' logits for "
                                  f"{len(encoded['input_ids'])} windows")
            best: dict[int, dict] = {}
            for row in range(len(start_logits)):  # padding beyond a window's tokens is never inside its context
                self._best_span(encoded, row, np.asarray(start_logits[row]), np.asarray(end_logits[row]), contexts,
                                best)
            return {**self.compute_metrics(predictions, label_ids), **self._squad(best, split)}
        return metrics

    @torch.no_grad()
    def predict_answers(self, model, tokenizer, dataset, max_length: int, batch_size: int = 32,
                        source: str = "") -> dict[int, dict]:
        """The best answer per example: ``{index: {"text", "start", "end", "score"}}``."""
        model.eval()
        encoded = self._tokenize(dataset, tokenizer, max_length, source)
        contexts = list(dataset["context"])
        collate = DataCollatorWithPadding(tokenizer)
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in encoded]
        device = device_of(model)
        best: dict[int, dict] = {}
        for start in range(0, len(encoded["input_ids"]), batch_size):
            rows = range(start, min(start + batch_size, len(encoded["input_ids"])))
            batch = collate([{n: encoded[n][r] for n in names} for r in rows])
            outputs = model(**{k: v.to(device) for k, v in batch.items()})
            for b, row in enumerate(rows):
                self._best_span(encoded, row, outputs.start_logits[b].float().cpu().numpy(),
                                outputs.end_logits[b].float().cpu().numpy(), contexts, best)
        return best

    def _best_span(self, encoded, row, start_logits, end_logits, contexts, best) -> None:
        example = encoded["overflow_to_sample_mapping"][row]
        span = best_span(encoded.sequence_ids(row), encoded["offset_mapping"][row], start_logits, end_logits,
                         contexts[example], self.max_answer_length)
        if span is not None and (example not in best or span["score"] > best[example]["score"]):
            best[example] = span

    def predict_items(self, model, tokenizer, items, max_length):
        """Items: ``(question, context)``; a result: the best span (all ``None`` when no span fits)."""
        empty = {"answer": None, "start": None, "end": None, "score": None}
        tokens = [len(tokenizer(question, add_special_tokens=False)["input_ids"]) for question, _ in items]
        errors, calls = plan_calls(tokens, tokenizer.num_special_tokens_to_add(pair=True), max_length, self.stride)
        out = [errors.get(i, empty) for i in range(len(items))]
        for rows in calls.values():
            data = Dataset.from_dict({"question": [items[i][0] for i in rows], "context": [items[i][1] for i in rows]})
            answers = self.predict_answers(model, tokenizer, data, max_length)
            for k, i in enumerate(rows):
                if a := answers.get(k):
                    out[i] = {"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]}
        return out

    def predictions(self, model, tokenizer, dataset, max_length: int) -> list:
        """One ``(start, end)`` span per question (``None`` where no span fits)."""
        answers = self.predict_answers(model, tokenizer, dataset, max_length)
        return [(answers[i]["start"], answers[i]["end"]) if i in answers else None for i in range(len(dataset))]

    def evaluate(self, model, tokenizer, dataset, max_length: int, source: str = "") -> dict:
        return self._squad(self.predict_answers(model, tokenizer, dataset, max_length, source=source), dataset)

    def _squad(self, best: dict[int, dict], dataset) -> dict:
        """SQuAD F1 and exact match (as fractions) of the best span per example index against the gold answers."""
        ids = list(dataset["id"])
        predictions = {ids[i]: answer["text"] for i, answer in best.items()}
        golds = {qid: list(a["text"]) for qid, a in zip(ids, dataset["answers"])}
        scores = squad_scores(predictions, golds, self.normalization)
        return {"f1": scores["f1"] / 100, "exact_match": scores["exact_match"] / 100}

    # ------------------------------------------------------------------ distillation
    def unlabelled_rows(self, lines, columns):
        """QA transfer text: one JSON object a line, ``{"question": ..., "context": ...}`` (a question the user
        asks of a paragraph, no answer): the teacher's start and end distributions over its windows are the
        targets; there is no gold span (its positions are the first token, which the KD rows ignore)."""
        rows = []
        for path, number, text in lines:
            try:
                item = json.loads(text)
            except json.JSONDecodeError:
                item = None
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                     for k in ("question", "context")):
                raise SpeedyError(f"{where(path, number)}: QA transfer text is one JSON object a line with a "
                                  f"non-empty \"question\" and \"context\"")
            rows.append({"id": f"transfer:{number}:{len(rows)}", "title": str(item.get("title", "")),
                         "context": item["context"], "question": item["question"],
                         "answers": {"text": [], "answer_start": []}, "line": number})
        return rows

    def teacher_rows(self, outputs, batch, signal: str = "logits"):
        self.row_dim(signal)
        start = outputs.start_logits.detach().float().cpu().numpy()
        end = outputs.end_logits.detach().float().cpu().numpy()
        for row, example in enumerate(batch["example_index"].tolist()):
            units = batch["unit_index"][row].numpy()
            keep = (units >= 0) & (batch["unit_owned"][row].numpy() == 1)
            first = batch["unit_first"][row].numpy()[keep]
            last = batch["unit_last"][row].numpy()[keep]
            yield example, units[keep], np.stack([start[row][first], end[row][last]], axis=1)

    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits", student_signal: str | None = None):
        """Rows: one start and one end distribution per window, over the window's covered units (padded with a
        logit whose probability is exactly 0 in both, so padding never contributes)."""
        self.row_dim(signal)
        starts_s, ends_s, starts_t, ends_t, gold_s, gold_e = [], [], [], [], [], []
        for row, example in enumerate(extras["example_index"].tolist()):
            units = extras["unit_index"][row]
            valid = units >= 0
            units = units[valid].cpu()
            teacher = torch.from_numpy(cache.example(example, signal))[units]  # [k, 2]
            usable = ~torch.isnan(teacher).any(-1)
            first = extras["unit_first"][row][valid][usable.to(valid.device)]
            last = extras["unit_last"][row][valid][usable.to(valid.device)]
            teacher = teacher[usable]
            starts_s.append(outputs.start_logits[row, first])
            ends_s.append(outputs.end_logits[row, last])
            starts_t.append(teacher[:, 0])
            ends_t.append(teacher[:, 1])
            gold_s.append(_index_of(first, inputs["start_positions"][row]))
            gold_e.append(_index_of(last, inputs["end_positions"][row]))
        width = max(1, max(len(r) for r in starts_s))
        device = outputs.start_logits.device
        student = torch.stack([_pad(r, width) for r in starts_s + ends_s])
        teacher = torch.stack([_pad(r.to(device), width) for r in starts_t + ends_t])
        labels = torch.tensor(gold_s + gold_e, device=device)
        return student, teacher, labels


def _pad(row: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([row, row.new_full((width - len(row),), PAD_LOGIT)])


def _index_of(positions: torch.Tensor, gold: torch.Tensor) -> int:
    hits = (positions == gold).nonzero()
    return int(hits[0]) if len(hits) and int(gold) != 0 else -100
