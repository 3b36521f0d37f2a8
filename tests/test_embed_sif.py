"""SIF's two steps for a static model (speedy.embed.sif): weights from token frequencies in text (tested with the
context texts in test_embed_context.py) and the common directions of the sentence vectors removed."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import corpus
from speedy.embed.sif import common_directions, remove_directions
from speedy.embed.static import StaticEmbedder, distill_static, token_vectors
from speedy.errors import SpeedyError


def test_the_first_common_direction_is_the_one_every_sentence_shares():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=16)
    shared /= np.linalg.norm(shared)
    sentences = 3.0 * shared + rng.normal(scale=0.3, size=(500, 16))
    directions = common_directions(sentences, 3)
    assert directions.shape == (3, 16)
    np.testing.assert_allclose(directions @ directions.T, np.eye(3), atol=1e-6)  # orthonormal
    assert abs(float(directions[0] @ shared)) > 0.99
    with pytest.raises(SpeedyError, match="17 asked of 500 sentence vectors of 16 dims"):
        common_directions(sentences, 17)


def test_removing_directions_from_the_tokens_removes_them_from_every_sentence(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    weights = np.linspace(0.5, 1.5, len(vectors)).astype(np.float32)
    before = StaticEmbedder(vectors, weights, tokenizer).encode(corpus())
    directions = common_directions(before, 2)
    after = StaticEmbedder(remove_directions(vectors, directions), weights, tokenizer).encode(corpus())
    projected = before - (before @ directions.T) @ directions  # the same, done to the sentence vectors
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    np.testing.assert_allclose(after, projected, atol=1e-5)
    assert np.abs(after @ directions.T).max() < 1e-5 and np.abs(before @ directions.T).max() > 0.5


def test_distill_static_removes_the_common_directions_of_the_texts_it_is_given(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir)
    kept = distill_static(bert_dir, dims=32, vectors=vectors, tokenizer_path=tokenizer_json, context_texts=corpus())
    removed = distill_static(bert_dir, dims=32, vectors=vectors, tokenizer_path=tokenizer_json,
                             context_texts=corpus(), remove_common=2)
    directions = common_directions(kept.encode(corpus()), 2)
    assert np.abs(removed.encode(corpus()) @ directions.T).max() < 1e-4
    assert removed.info["common_directions_removed"] == 2 and "common_directions_removed" not in kept.info
    with pytest.raises(SpeedyError, match="remove_common needs texts"):
        distill_static(bert_dir, dims=32, vectors=vectors, tokenizer_path=tokenizer_json, remove_common=1)


def test_removal_runs_before_pca_and_bad_counts_name_the_setting(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir)
    reduced = distill_static(bert_dir, dims=8, vectors=vectors, tokenizer_path=tokenizer_json, context_texts=corpus(),
                             remove_common=2)
    assert reduced.dims == 8 and reduced.info["pca"] and reduced.info["common_directions_removed"] == 2
    assert np.isfinite(reduced.encode(corpus())).all()
    for bad in (-1, 1.5, True):
        with pytest.raises(SpeedyError, match=f"remove_common must be a whole number >= 0, not {bad!r}"):
            distill_static(bert_dir, dims=8, vectors=vectors, tokenizer_path=tokenizer_json, remove_common=bad)
