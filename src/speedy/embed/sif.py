"""The two steps of SIF (Arora, Liang and Ma, 2017, "A Simple but Tough-to-Beat Baseline for Sentence Embeddings")
for a static model whose token frequencies and typical sentences are known from real text.

1. :func:`text_sif_weights`: each token weighs ``a / (a + p(token))``, ``p`` its frequency in the texts. Without
   text, :func:`speedy.embed.static.sif_weights` must take the id as a frequency rank, which for e5's vocabulary is
   a rank in multilingual text.
2. :func:`common_directions` and :func:`remove_directions`: the sentence vectors of a static model share a few
   directions that say little about any one sentence (the frequent words' and the style's); SIF removes the first
   principal direction of the sentence vectors, and :func:`speedy.embed.static.distill_static` the first k. A
   static sentence vector is a linear sum of token vectors, so removing a direction from every token vector removes
   it from every sentence vector: the model's tables change, its way of encoding does not.
"""

from __future__ import annotations

import numpy as np

from speedy.errors import SpeedyError

# SIF's a for frequencies counted in text: of 1e-4, 1e-3 and 3e-3, 1e-3 scored best (SQuAD-es validation, untuned)
TEXT_SIF_COEFFICIENT = 1e-3


def text_sif_weights(counts: np.ndarray, coefficient: float = TEXT_SIF_COEFFICIENT) -> np.ndarray:
    """SIF weights ``a / (a + p(token))`` (Arora et al., 2017) with ``p`` each token's frequency in the texts that
    gave ``counts`` (add-half smoothed, so an unseen token weighs about 1), where
    :func:`speedy.embed.static.sif_weights` must guess ``p`` from the id as a rank in the tokenizer's (here
    multilingual) training text."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() == 0:
        raise SpeedyError("text_sif_weights: counts must be one non-negative count per token, not all zero")
    frequency = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return (coefficient / (coefficient + frequency)).astype(np.float32)


def common_directions(sentence_vectors: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` right singular vectors of ``sentence_vectors`` (``[texts, dims]``, not centred, so the
    first is about their mean direction): ``[count, dims]``, orthonormal rows."""
    sentence_vectors = np.asarray(sentence_vectors, dtype=np.float64)
    if count < 0 or count > min(sentence_vectors.shape):
        raise SpeedyError(f"common directions: {count} asked of {sentence_vectors.shape[0]} sentence vectors of "
                          f"{sentence_vectors.shape[1]} dims")
    return np.linalg.svd(sentence_vectors, full_matrices=False)[2][:count]


def remove_directions(vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``vectors`` (``[vocab, dims]``) with their components along ``directions`` (orthonormal rows) removed."""
    vectors = np.asarray(vectors, dtype=np.float32)
    directions = np.asarray(directions, dtype=np.float32)
    return vectors - (vectors @ directions.T) @ directions
