"""More text for KD by word replacement: TinyBERT's data augmentation (Jiao et al., 2020, "TinyBERT: Distilling
BERT for Natural Language Understanding", section 3.1), with a static model's neighbours for every word.

A student distilled on a few thousand texts matches its teacher far better on them than on new text of the same
kind, so what it lacks is inputs, not labels: the teacher labels any text. TinyBERT makes new inputs by replacing
words with similar ones (BERT's masked-LM guesses for one-piece words, GloVe neighbours for the others). Here the
similar words are the nearest ones by a token-vector table, such as a static student's
(:mod:`speedy.embed.static`), whose vectors are the teacher's states averaged over real contexts: close vectors are
words the teacher reads alike. Measured on SQuAD-es retrieval (README, eighteenth session): one replaced copy of
the training text moved the embedding students by +0.5 (2 layers) and -0.1 (4 layers) nDCG@10 at equal steps,
one seed each: no gain to count on there.

Only whole words that the tokenizer keeps as one token (in lowercase: so in a cased vocabulary most proper nouns
are left alone), that the texts use at least ``min_count`` times, and that are not among their ``skip_common``
most frequent words (articles, prepositions: replacing them breaks the sentence more than it varies it) are
replaced, each by one of its ``k`` nearest words of one token used ``min_count`` times (the frequent ones
included), drawn uniformly. Example::

    from speedy.embed.augment import augmented, word_neighbours
    from speedy.embed.static import StaticEmbedder

    table = StaticEmbedder.load("runs/static-student")
    neighbours = word_neighbours(texts, table.tokenizer, table.vectors)
    texts += augmented(texts, neighbours, copies=1, rate=0.3)
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np

from speedy.errors import SpeedyError

# a word: three or more letters (digits, underscores and shorter words are left as they are)
WORD = re.compile(r"[^\W\d_]{3,}")
CHUNK = 2048  # rows of the similarity matrix at a time: 2048 x words floats


def word_neighbours(texts: list[str], tokenizer, vectors: np.ndarray, k: int = 6, min_count: int = 3,
                    skip_common: int = 150) -> dict[str, list[str]]:
    """``{word: its k nearest words}`` (lowercase) for the replaceable words of ``texts``: words of one token of
    ``tokenizer`` (a ``tokenizers.Tokenizer``), used ``min_count`` times or more, by the cosine of their rows of
    ``vectors`` (``[vocab, dims]``). The ``skip_common`` most frequent words get no entry (they are never
    replaced) but can be another word's neighbour. A token that is special, unknown or has a zero row (how a static
    model marks special tokens) is no word's; two words of the same token (a tokenizer that strips accents) are one,
    the first seen. The k nearest come in no particular order: each is drawn with equal chance."""
    if k < 1 or min_count < 1 or skip_common < 0:
        raise SpeedyError(f"word_neighbours: k ({k}) and min_count ({min_count}) must be positive and skip_common "
                          f"({skip_common}) not negative")
    counts = Counter(word.lower() for text in texts for word in WORD.findall(text))
    special = set(tokenizer.get_added_tokens_decoder())  # the unknown token among them: never a word's one token
    unknown = getattr(tokenizer.model, "unk_token", None)
    if unknown is not None and tokenizer.token_to_id(unknown) is not None:
        special.add(tokenizer.token_to_id(unknown))
    words, ids, taken = [], [], set()
    for word, count in counts.items():  # first-seen order: the same texts give the same table
        if count < min_count:
            continue
        pieces = tokenizer.encode(word, add_special_tokens=False).ids
        if (len(pieces) == 1 and pieces[0] < len(vectors) and pieces[0] not in special and pieces[0] not in taken
                and np.any(vectors[pieces[0]] != 0)):
            words.append(word)
            ids.append(pieces[0])
            taken.add(pieces[0])
    if len(words) <= k:
        raise SpeedyError(f"word_neighbours: the texts have {len(words)} words of one token used {min_count} times "
                          f"or more; {k} neighbours each need more (give more text, or a smaller k)")
    table = np.asarray(vectors, dtype=np.float32)[np.asarray(ids)]
    table /= np.linalg.norm(table, axis=1, keepdims=True) + 1e-9
    # Not speedy's exact_search (best first): the k nearest in argpartition's order are the ones the measured runs
    # drew from, and the draw is uniform, so an order buys nothing.
    nearest = np.zeros((len(words), k), dtype=np.int64)
    for start in range(0, len(words), CHUNK):
        similarity = table[start : start + CHUNK] @ table.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, start + rows] = -1.0  # a word is not its own neighbour
        nearest[start : start + CHUNK] = np.argpartition(-similarity, k, axis=1)[:, :k]
    common = {word for word, _ in counts.most_common(skip_common)}
    return {word: [words[j] for j in nearest[i]] for i, word in enumerate(words) if word not in common}


def replace_words(text: str, neighbours: dict[str, list[str]], rate: float, rng: random.Random) -> str:
    """``text`` with each word that has neighbours replaced, with probability ``rate``, by one of them drawn with
    ``rng``, capitalised when the word's first letter was. A word in capitals gets a capitalised one, not one in
    capitals: rare, and left so that the benchmark writes the text its measured runs learnt from."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        choices = neighbours.get(word.lower())
        if choices is None or rng.random() >= rate:
            return word
        new = choices[rng.randrange(len(choices))]
        return new.capitalize() if word[0].isupper() else new

    return WORD.sub(swap, text)


def augmented(texts: list[str], neighbours: dict[str, list[str]], copies: int = 1, rate: float = 0.3,
              seed: int = 0) -> list[str]:
    """``copies`` new versions of ``texts`` (all of the first copy, then all of the second, ...), each word with
    neighbours replaced with probability ``rate``; one seeded draw for all of them. A copy in which no word was
    replaced is kept, so that every text weighs ``copies + 1`` in the training text."""
    if copies < 0 or not 0.0 <= rate <= 1.0:
        raise SpeedyError(f"augmented: copies ({copies}) must not be negative and rate ({rate}) must lie in [0, 1]")
    rng = random.Random(seed)
    return [replace_words(text, neighbours, rate, rng) for _ in range(copies) for text in texts]
