"""Tagging (NER, POS), served without torch: one tag per word, words split on white space. Long sentences are
cut into windows of whole words exactly as training and evaluation cut them (``runtime.alignment``); a word's
tag is read at its first sub-token, in the window that owns it."""

from __future__ import annotations

from collections import Counter

from speedy.runtime.alignment import first_subtokens, word_windows
from speedy.runtime.base import RuntimeTask
from speedy.runtime.fields import InputField


class TaggingRuntime(RuntimeTask):
    type = "tagging"
    route, route_help = "/tag", "Tag each sentence: one tag per word (words are split on white space)."
    inputs = {"text": InputField("The sentence; words are split on white space.")}
    results = {"words": list[str], "tags": list[str]}

    def __init__(self, labels, info=None):
        super().__init__(labels, info)
        fallback = self.info.get("fallback")
        self.fallback = fallback if fallback in self.labels else ("O" if "O" in self.labels else self.labels[0])

    @staticmethod
    def input_item(fields: dict):
        return fields["text"].split()

    def windows(self, tokenizer, sentences: list[list[str]], whole: list, max_length: int) -> list:
        """``(sentence index, window, its encoding or None)``: a sentence that fits is one window and keeps its
        whole encoding; the windows of longer ones are encoded again (None here)."""
        budget = max(1, max_length - tokenizer.num_special_tokens_to_add())
        rows = []
        for i, (words, encoding) in enumerate(zip(sentences, whole)):
            counts = Counter(w for w in encoding.word_ids if w is not None)
            pieces = [counts.get(w, 0) for w in range(len(words))]  # a word with no piece still needs a place
            for window in word_windows(pieces, budget):
                same = window.start == 0 and window.end == len(words) and len(encoding.ids) <= max_length
                rows.append((i, window, encoding if same else None))
        return rows

    def predict_words(self, runner, tokenizer, sentences: list[list[str]], max_length: int) -> list[list[str]]:
        whole = tokenizer.encode_batch(sentences, words=True)
        rows = self.windows(tokenizer, sentences, whole, max_length)
        cut = [sentences[i][w.start : w.end] for i, w, encoding in rows if encoding is None]
        parts = iter(tokenizer.encode_batch(cut, words=True, max_length=max_length) if cut else [])
        rows = [(i, w, encoding if encoding is not None else next(parts)) for i, w, encoding in rows]
        out = [[self.fallback] * len(words) for words in sentences]
        for (i, window, encoding), outputs in zip(rows, runner.run([encoding for _, _, encoding in rows])):
            first = first_subtokens(encoding.word_ids)
            predicted = outputs["logits"].argmax(-1)
            for word in window.owned:
                position = first.get(word - window.start)
                if position is not None:  # else no piece of the word survived: the fallback tag
                    out[i][word] = self.labels[int(predicted[position])]
        return out

    def predict(self, runner, tokenizer, items, max_length):
        sentences = [words for words in items if words]  # a text of only (Unicode) spaces has no word
        tags = iter(self.predict_words(runner, tokenizer, sentences, max_length) if sentences else [])
        return [{"words": words, "tags": next(tags) if words else []} for words in items]
