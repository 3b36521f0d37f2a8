"""Extractive question answering, served without torch: the best span of the context (start logit + end logit,
at most ``max_answer_length`` tokens, inside the context) over the context's overlapping windows, which are cut
as training and evaluation cut them. ``best_span`` is the one span search of speedy (``speedy.tasks.qa`` uses it
too)."""

from __future__ import annotations

import numpy as np

from speedy.errors import SpeedyError
from speedy.runtime.base import RuntimeTask
from speedy.runtime.fields import InputError, InputField

MIN_CONTEXT = 8  # the fewest tokens of context a window may hold beside its question
MAX_ANSWER_LENGTH = 30  # tokens


def token_start(context: str, start: int, end: int) -> int:
    """A token's first non-space character (metaspace tokenizers include the space before a word)."""
    while start < end and context[start].isspace():
        start += 1
    return start


def plan_calls(question_tokens: list[int], specials: int, max_length: int, stride: int) -> tuple[dict, dict]:
    """Which questions fit beside some context (``{stride: [indices]}``: one call per overlap, so an answer never
    depends on the other questions of its batch), and an ``InputError`` for each one that fills the window."""
    errors, calls = {}, {}
    for i, tokens in enumerate(question_tokens):
        room = max_length - tokens - specials  # tokens of context that fit beside the question
        if room < MIN_CONTEXT:
            errors[i] = InputError(f"question: longer than the model's window ({max_length} tokens) allows: "
                                   f"{tokens} tokens, at most {tokens - (MIN_CONTEXT - room)}")
        else:
            calls.setdefault(min(stride, room // 2), []).append(i)
    return errors, calls


def best_span(sequence_ids, offsets, start_logits: np.ndarray, end_logits: np.ndarray, context: str,
              max_answer_length: int = MAX_ANSWER_LENGTH, top: int = 20) -> dict | None:
    """The best span of one window (``{"text", "start", "end", "score"}``, character offsets in ``context``), or
    None when the window holds no context. Candidates: the ``top`` best starts and ends inside the context."""
    context_positions = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context_positions:
        return None
    allowed = np.full(len(start_logits), False)
    allowed[context_positions] = True
    start_logits = np.where(allowed, start_logits[: len(allowed)], -np.inf)
    end_logits = np.where(allowed, end_logits[: len(allowed)], -np.inf)
    best = None
    for s in np.argsort(start_logits)[::-1][:top]:
        if not allowed[s]:
            break
        for e in np.argsort(end_logits)[::-1][:top]:
            if not allowed[e] or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best["score"]:
                char_start = token_start(context, offsets[s][0], offsets[s][1])
                char_end = offsets[e][1]
                best = {"text": context[char_start:char_end], "start": int(char_start), "end": int(char_end),
                        "score": score}
    return best


class QARuntime(RuntimeTask):
    type = "qa"
    route, route_help = "/answer", "Answer each question with a span of its context."
    inputs = {"question": InputField(), "context": InputField()}
    results = {"answer": str | None, "start": int | None, "end": int | None, "score": float | None}
    onnx_outputs = ("start_logits", "end_logits")
    fixed_labels = ("start", "end")

    def __init__(self, labels=None, info=None):
        super().__init__(list(self.fixed_labels), info)
        self.stride = self.info.get("stride", 64)
        self.max_windows = self.info.get("max_windows", 64)
        for name in ("stride", "max_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpeedyError(f"config.json: speedy_task.{name} must be a positive whole number, not {value!r}")
        self.max_answer_length = MAX_ANSWER_LENGTH

    @staticmethod
    def input_item(fields: dict):
        return fields["question"], fields["context"]

    @staticmethod
    def check_result(result: dict) -> dict:
        if result["answer"] is None:
            raise SpeedyError("predict: no answer span fits in the context")
        return result

    def too_many_windows(self, tokenizer, context: str, question: int, max_length: int, stride: int) -> bool:
        """Whether a context needs more than ``max_windows`` windows, found before the windows are made (a 10 MB
        context would make ~100k); a huge context is counted a slice at a time, never tokenized whole."""
        room = max_length - question - tokenizer.num_special_tokens_to_add(pair=True)
        budget = room + (self.max_windows - 1) * (room - stride)  # context tokens that fit in max_windows
        if len(context.encode("utf-8")) < budget:
            return False  # no tokenizer makes more tokens than UTF-8 bytes (+1 word mark): it fits
        count, size = 0, 4 * budget
        for start in range(0, len(context), size):
            count += tokenizer.count_tokens([context[start : start + size]])[0]
            if count > budget:
                return True
        return False

    def predict(self, runner, tokenizer, items, max_length):
        empty = {"answer": None, "start": None, "end": None, "score": None}
        questions = tokenizer.count_tokens([question for question, _ in items])
        errors, calls = plan_calls(questions, tokenizer.num_special_tokens_to_add(pair=True), max_length, self.stride)
        out = [errors.get(i, empty) for i in range(len(items))]
        for stride, rows in calls.items():
            for i in [i for i in rows if self.too_many_windows(tokenizer, items[i][1], questions[i], max_length,
                                                                stride)]:
                out[i] = InputError(f"context: longer than {self.max_windows} windows of {max_length} tokens; "
                                    f"shorten it")
                rows.remove(i)
            if not rows:
                continue
            chosen = [items[i] for i in rows]
            encodings = tokenizer.encode_batch(chosen, max_length=max_length, strategy="only_second", stride=stride)
            windows = [(k, window) for k, encoding in enumerate(encodings) for window in [encoding, *encoding.overflowing]]
            best = {}
            for (k, window), outputs in zip(windows, runner.run([window for _, window in windows])):
                span = best_span(window.sequence_ids, window.offsets, outputs["start_logits"],
                                 outputs["end_logits"], chosen[k][1], self.max_answer_length)
                if span is not None and (k not in best or span["score"] > best[k]["score"]):
                    best[k] = span
            for k, i in enumerate(rows):
                if answer := best.get(k):
                    out[i] = {"answer": answer["text"], "start": answer["start"], "end": answer["end"],
                              "score": answer["score"]}
        return out
