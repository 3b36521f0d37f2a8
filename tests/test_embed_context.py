"""Static token vectors from real text (speedy.embed.context): each token's average state in context, and a ridge
map for the tokens the text never uses."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from conftest import corpus, make_examples
from speedy.embed.context import context_sums, contextualise
from speedy.embed.sif import text_sif_weights
from speedy.embed.static import StaticEmbedder, distill_static, token_vectors
from speedy.errors import SpeedyError

TEXTS = ["El equipo ganó el partido ayer.", "¿Dónde está el niño?", "el delantero marcó un gol",
         "La ministra firmó el decreto hoy en el senado con el presidente."]


def test_sums_add_every_occurrences_state_text_by_text(bert_dir):
    sums, counts = context_sums(bert_dir, TEXTS, vocab=300, batch_size=3)  # padded batches of unequal lengths
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()
    want_sums, want_counts = np.zeros_like(sums), np.zeros_like(counts)
    for text in TEXTS:  # one at a time: no padding at all
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            states = model(input_ids=ids).last_hidden_state[0].double().numpy()
        np.add.at(want_sums, ids[0].numpy(), states)
        np.add.at(want_counts, ids[0].numpy(), 1)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-4, atol=1e-5)
    assert counts[tokenizer.cls_token_id] == len(TEXTS) and counts[tokenizer.pad_token_id] == 0
    assert counts[tokenizer.convert_tokens_to_ids("el")] >= 5  # "el" five times, "El" once more if not lowercased


def test_seen_tokens_get_their_mean_state_and_unseen_ones_the_fitted_map():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 6))
    vectors[:3] = 0  # special tokens
    mapping, bias = rng.normal(size=(6, 6)), rng.normal(size=6)
    counts = np.where(np.arange(200) < 120, rng.integers(1, 40, size=200), 0)
    states = vectors @ mapping + bias  # the average states follow an affine map of the token-alone vectors...
    states[:120] += rng.normal(scale=1e-3, size=(120, 6))  # ...up to noise
    sums = states * counts[:, None]
    out = contextualise(vectors, sums, counts)
    assert out.dtype == np.float32 and out.shape == vectors.shape
    seen = np.arange(3, 120)
    np.testing.assert_allclose(out[seen], sums[seen] / counts[seen, None], rtol=1e-5, atol=1e-5)  # exactly the mean
    np.testing.assert_allclose(out[120:], vectors[120:] @ mapping + bias, atol=0.02)  # the map, learnt from the seen
    np.testing.assert_array_equal(out[:3], 0)  # special tokens stay unknown


def test_bad_context_is_one_line_naming_it(bert_dir):
    vectors = np.ones((50, 8))
    with pytest.raises(SpeedyError, match="context_texts: they use 5 distinct tokens.*needs more than 8") as few:
        contextualise(vectors, np.ones((50, 8)), np.r_[np.ones(5, dtype=int), np.zeros(45, dtype=int)])
    with pytest.raises(SpeedyError, match="do not match") as mismatched:
        contextualise(vectors, np.ones((49, 8)), np.ones(49, dtype=int))
    with pytest.raises(SpeedyError, match="context_texts: no texts") as empty:
        context_sums(bert_dir, [], vocab=300)
    with pytest.raises(SpeedyError, match="batch_size must be positive"):
        context_sums(bert_dir, ["hola"], vocab=300, batch_size=0)
    assert all("\n" not in str(error.value) for error in (few, mismatched, empty))


def test_context_vectors_stand_closer_to_the_encoders_sentence_vectors_than_tokens_alone(bert_dir):
    """The point of the module: a static model whose vectors are average states in context reproduces the encoder's
    mean-pooled sentence vectors of new sentences better than one of tokens run alone."""
    vectors, tokenizer_json = token_vectors(bert_dir)
    alone = distill_static(bert_dir, dims=32, weighting="none", vectors=vectors, tokenizer_path=tokenizer_json)
    in_context = distill_static(bert_dir, dims=32, weighting="none", vectors=vectors, tokenizer_path=tokenizer_json,
                                context_texts=corpus())
    assert in_context.info["context"]["texts"] == len(corpus()) and in_context.info["context"]["tokens_seen"] > 32
    new = [text for _, text in make_examples(40, seed=7)]
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()
    inputs = tokenizer(new, padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    truth = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    def cosine(embedder):
        return float((embedder.encode(new) * truth).sum(1).mean())

    assert cosine(in_context) > cosine(alone) + 0.05
    # a seen token's row is its average state in the texts
    sums, counts = context_sums(bert_dir, corpus(), vocab=len(vectors))
    gol = tokenizer.convert_tokens_to_ids("gol")
    np.testing.assert_allclose(in_context.vectors[gol], sums[gol] / counts[gol], rtol=1e-4, atol=1e-5)
    assert isinstance(in_context.tokenizer, Tokenizer) and isinstance(in_context, StaticEmbedder)


def test_text_sif_weights_take_each_tokens_frequency_from_the_counts():
    # p = (count + 0.5) / (total + 0.5 * vocab): 2.5/4.5, 0.5/4.5, 1.5/4.5 for counts 2, 0, 1
    np.testing.assert_allclose(text_sif_weights(np.array([2, 0, 1]), coefficient=0.1),
                               [0.1 / (0.1 + 2.5 / 4.5), 0.1 / (0.1 + 0.5 / 4.5), 0.1 / (0.1 + 1.5 / 4.5)], rtol=1e-6)
    with pytest.raises(SpeedyError, match="not all zero"):
        text_sif_weights(np.zeros(4))


def test_sif_with_context_texts_weighs_tokens_by_their_frequency_there(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir)
    embedder = distill_static(bert_dir, dims=32, vectors=vectors, tokenizer_path=tokenizer_json,
                              context_texts=corpus())  # weighting "sif", the default
    _, counts = context_sums(bert_dir, corpus(), vocab=len(vectors))
    np.testing.assert_allclose(embedder.weights, text_sif_weights(counts), rtol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    common, rare = tokenizer.convert_tokens_to_ids(["el", "niño"])
    assert counts[common] > 50 * counts[rare] > 0 and embedder.weights[common] < embedder.weights[rare]
    assert embedder.info["context"]["sif"] == "token frequencies of the texts"
