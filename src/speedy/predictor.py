"""One model in one engine, answering a batch of inputs of its task type: what ``speedy predict`` runs on one
input and what ``speedy serve``'s batcher runs on many."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset

from speedy.bench.engines import get_engine, load_engine
from speedy.errors import SpeedyError
from speedy.trained import check_model_folder

MIN_CONTEXT = 8  # QATask refuses a window with fewer tokens of context beside its question


class InputError(SpeedyError):
    """An input the model cannot take; the message starts with the field at fault (``question: ...``)."""


class Predictor:
    def __init__(self, model_dir: str | Path, engine: str = "onnx-int8", threads: int | None = None):
        needs_weights = get_engine(engine).needs_weights
        folder = check_model_folder(model_dir, need_weights=needs_weights)  # a broken folder: one line
        self.task, self.max_length, self.tokenizer = folder.task, folder.max_length, folder.tokenizer
        self.model = load_engine(model_dir, engine, threads)

    def _room(self, question: str) -> tuple[int, int]:
        """The question's tokens, and the tokens of context that fit beside it in one window."""
        tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        return tokens, self.max_length - tokens - self.tokenizer.num_special_tokens_to_add(pair=True)

    def run_batch(self, items: list) -> list:
        """Classification: ``(text, pair)`` items; tagging: word lists; QA: ``(question, context)`` items. Raises
        the ``InputError`` of the first input the model cannot take."""
        results = self.run_each(items)
        for result in results:
            if isinstance(result, InputError):
                raise result
        return results

    @torch.inference_mode()
    def run_each(self, items: list) -> list:
        """``run_batch``'s results, with an ``InputError`` in place of each input the model cannot take: one
        such input never fails the others (the server batches inputs of different requests together)."""
        if self.task.type == "tagging":
            sentences = [words for words in items if words]  # a text of only (Unicode) spaces has no word
            tags = iter(self.task.predict_words(self.model, self.tokenizer, sentences, self.max_length)
                        if sentences else [])
            return [{"words": words, "tags": next(tags) if words else []} for words in items]
        if self.task.type == "qa":
            # QATask overlaps a context's windows by an amount set by the longest question of the call: one call
            # per amount, so that an answer never depends on the other questions of its batch.
            empty = {"answer": None, "start": None, "end": None, "score": None}
            out, calls = [empty] * len(items), {}
            for i, (question, _) in enumerate(items):
                tokens, room = self._room(question)
                if room < MIN_CONTEXT:
                    out[i] = InputError(f"question: longer than the model's window ({self.max_length} tokens) "
                                        f"allows: {tokens} tokens, at most {tokens - (MIN_CONTEXT - room)}")
                else:
                    calls.setdefault(min(self.task.stride, room // 2), []).append(i)
            for rows in calls.values():
                data = Dataset.from_dict({"question": [items[i][0] for i in rows],
                                          "context": [items[i][1] for i in rows]})
                answers = self.task.predict_answers(self.model, self.tokenizer, data, self.max_length)
                for k, i in enumerate(rows):
                    if a := answers.get(k):
                        out[i] = {"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]}
            return out
        texts = [text for text, _ in items]
        pairs = [pair for _, pair in items]
        if any(p is None for p in pairs) and any(p is not None for p in pairs):  # mixed: one call per kind
            out = [None] * len(items)
            for want_pair in (False, True):
                chosen = [i for i, p in enumerate(pairs) if (p is not None) == want_pair]
                for i, result in zip(chosen, self.run_each([items[i] for i in chosen])):
                    out[i] = result
            return out
        inputs = self.tokenizer(texts, pairs if pairs[0] is not None else None, truncation=True,
                                max_length=self.max_length, padding=True, return_tensors="pt")
        probabilities = torch.softmax(self.model(**inputs).logits.float(), -1)
        results = []
        for row in probabilities:
            best = int(row.argmax())
            results.append({"label": self.task.labels[best], "score": float(row[best]),
                            "scores": {label: float(p) for label, p in zip(self.task.labels, row)}})
        return results
