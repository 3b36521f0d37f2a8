"""Words <-> sub-tokens, for tagging and for distillation between models whose tokenizers differ.

Everything is keyed by the *word's index in its sentence*, never by a position in a tokenized sequence: a
teacher and a student split words differently (one piece or several, or none at all when a tokenizer drops a
word's characters), and cut long sentences differently, so positions never line up, while word indices do.

* :func:`first_subtokens` gives, for one encoded sequence, the position of each word's first sub-token.
* :func:`word_windows` cuts a sentence that does not fit into overlapping windows of whole words and gives each
  word exactly one *owner* window (the one where it has the most context on both sides); the word's tag is
  predicted (and distilled) only there, so every word gets one row and no word is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass


def first_subtokens(word_ids: list[int | None]) -> dict[int, int]:
    """``{word index: position of its first sub-token}`` from a fast tokenizer's ``word_ids()``.

    Words without any sub-token simply do not appear."""
    first = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


@dataclass(frozen=True)
class Window:
    start: int  # first word (inclusive)
    end: int  # last word (exclusive)
    owned: tuple[int, ...]  # the words whose rows this window gives


def word_windows(pieces_per_word: list[int], budget: int, stride: int | None = None) -> list[Window]:
    """Cover the words with windows of at most ``budget`` sub-tokens, each overlapping the previous one by about
    ``stride`` sub-tokens of context (default: a quarter of the budget).

    A word longer than the whole budget gets a window of its own (the model sees its first pieces; its first
    sub-token, the one that carries its tag, is always inside).
    """
    n = len(pieces_per_word)
    if n == 0:
        return []
    stride = budget // 4 if stride is None else stride
    spans = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and (used + pieces_per_word[end] <= budget or end == start):
            used += pieces_per_word[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            break
        # Step back over about ``stride`` sub-tokens of context, but always move forward by at least one word.
        back, context = end, 0
        while back - 1 > start + 0 and context + pieces_per_word[back - 1] <= stride:
            back -= 1
            context += pieces_per_word[back]
        start = max(back, start + 1)

    owner = {}
    for index, (lo, hi) in enumerate(spans):
        for word in range(lo, hi):
            margin = min(word - lo, hi - 1 - word)
            if word not in owner or margin > owner[word][1]:
                owner[word] = (index, margin)
    owned = [[] for _ in spans]
    for word in range(n):
        owned[owner[word][0]].append(word)
    return [Window(lo, hi, tuple(words)) for (lo, hi), words in zip(spans, owned)]
