"""The static (model2vec-style) student: token vectors from a tiny encoder, PCA, weighting, encoding, save/load."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from speedy.embed.static import SentenceTargets, StaticEmbedder, distill_static, sif_weights, token_vectors, \
    tune_vectors, zipf_weights
from speedy.errors import SpeedyError

TEXTS = ["El equipo ganó el partido ayer.", "La ministra firmó el decreto hoy.", "¿Dónde está el niño?",
         "el delantero marcó un gol", "Señor, ten piedad."]


@pytest.fixture(scope="module")
def static(bert_dir):
    """The whole (215-token) vocabulary of the tiny BERT, reduced to 8 dimensions."""
    return distill_static(bert_dir, dims=8)


def test_token_vectors_are_the_encoders_output_at_the_tokens_position(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir, batch_size=16, max_tokens=40, pooling="token")
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    assert vectors.shape == (40, 32) and vectors.dtype == np.float32
    assert tokenizer_json.endswith("tokenizer.json")
    special = set(tokenizer.all_special_ids)
    assert special and all(i < 40 for i in special)
    for i in range(40):
        assert (np.all(vectors[i] == 0)) == (i in special)
    # an independent check for a few ids: [CLS] token [SEP] through the encoder by hand, the middle position
    model = AutoModel.from_pretrained(bert_dir).eval()
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    for i in (5, 17, 39):
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([[cls, i, sep]])).last_hidden_state[0, 1].numpy()
        np.testing.assert_allclose(vectors[i], hidden, rtol=1e-4, atol=1e-5)


def test_a_prefix_changes_the_context_but_not_the_pooled_position(bert_dir):
    plain, _ = token_vectors(bert_dir, max_tokens=20, pooling="token")
    prefixed, _ = token_vectors(bert_dir, max_tokens=20, prefix="el equipo", pooling="token")
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    prefix_ids = tokenizer("el equipo", add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    model = AutoModel.from_pretrained(bert_dir).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([[cls, *prefix_ids, 12, sep]])).last_hidden_state[0, -2].numpy()
    np.testing.assert_allclose(prefixed[12], hidden, rtol=1e-4, atol=1e-5)
    assert not np.allclose(prefixed[12], plain[12])


def test_distill_reduces_with_pca_and_weighs_by_rank(static, bert_dir):
    vocab = len(AutoTokenizer.from_pretrained(bert_dir))
    assert static.vectors.shape == (vocab, 8) and static.dims == 8
    used = np.any(static.vectors != 0, axis=1)
    # PCA's output: centred, uncorrelated components in decreasing order of variance
    reduced = static.vectors[used].astype(np.float64)
    np.testing.assert_allclose(reduced.mean(axis=0), 0, atol=1e-4)
    covariance = np.cov(reduced, rowvar=False)
    assert np.all(np.diff(np.diag(covariance)) <= 1e-6)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-3 * covariance.max())
    assert used.sum() == vocab - 5  # the five special tokens stay zero
    np.testing.assert_allclose(static.weights, sif_weights(vocab), rtol=1e-6)  # model2vec's weighting, the default
    assert static.info["pca"] is True and static.info["weighting"] == "sif" and static.info["pooling"] == "mean"


def test_no_pca_when_dims_reach_the_encoders_width_and_no_weighting(bert_dir):
    embedder = distill_static(bert_dir, dims=64, weighting="none", max_tokens=30)
    vectors, _ = token_vectors(bert_dir, max_tokens=30)
    np.testing.assert_array_equal(embedder.vectors, vectors)
    np.testing.assert_array_equal(embedder.weights, np.ones(30))
    assert embedder.info["pca"] is False


def test_sif_weights_match_hand_computed_values():
    # vocab 3: Zipf probabilities (1/2, 1/3, 1/4) / (13/12) = (6, 4, 3) / 13; a / (a + p) with a = 0.5
    np.testing.assert_allclose(sif_weights(3, coefficient=0.5), [6.5 / 12.5, 6.5 / 10.5, 6.5 / 9.5], rtol=1e-6)
    weights = sif_weights(250_000)
    assert weights[0] < 0.01 and weights[-1] > 0.99 and np.all(np.diff(weights) >= 0)  # float32 ties at the top


def test_zipf_weights_grow_with_the_id():
    np.testing.assert_allclose(zipf_weights(4), [0.0, np.log(2), np.log(3), np.log(4)], rtol=1e-6)


def test_mean_pooling_is_the_encoders_sentence_vector_of_the_token_alone(bert_dir):
    vectors, _ = token_vectors(bert_dir, batch_size=7, max_tokens=30)  # mean pooling, the default
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    model = AutoModel.from_pretrained(bert_dir).eval()
    for i in (6, 29):
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([[cls, i, sep]])).last_hidden_state[0].mean(0).numpy()
        np.testing.assert_allclose(vectors[i], hidden, rtol=1e-4, atol=1e-5)
    with pytest.raises(SpeedyError, match="unknown pooling 'max'"):
        token_vectors(bert_dir, max_tokens=3, pooling="max")


def _fit_from_hidden_truth(static, texts, held):
    """Targets made by a hidden 'teacher': the weighted means of other, random token vectors."""
    truth = np.random.default_rng(1).normal(size=static.vectors.shape).astype(np.float32)
    teacher = StaticEmbedder(truth, static.weights, static.tokenizer)
    return SentenceTargets(texts, teacher.encode(texts), held, teacher.encode(held), epochs=30, learning_rate=0.05,
                           batch_size=2, patience=5)


def test_tuning_moves_the_texts_tokens_towards_the_teachers_sentence_vectors(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    base = StaticEmbedder(vectors, zipf_weights(len(vectors)), tokenizer)
    held = ["el equipo marcó un gol", "La ministra ganó el partido."]
    fit = _fit_from_hidden_truth(base, TEXTS, held)
    tuned, summary = tune_vectors(vectors, base.weights, tokenizer, fit)
    before, after = summary["held_out_cosine"]
    assert after > before + 0.05 and summary["epochs_run"] >= 1 and summary["texts"] == len(TEXTS)
    used = {i for e in tokenizer.encode_batch(TEXTS, add_special_tokens=False) for i in e.ids}
    untouched = [i for i in range(len(vectors)) if i not in used]
    np.testing.assert_array_equal(tuned[untouched], vectors[untouched])  # only the texts' tokens move
    assert not np.allclose(tuned[sorted(used)], vectors[sorted(used)])
    again = StaticEmbedder(tuned, base.weights, tokenizer).encode(held)
    assert float((again * fit.val_targets).sum(1).mean()) == pytest.approx(after, abs=1e-4)
    # distill_static tunes before its PCA, and says so in the folder's settings
    embedder = distill_static(bert_dir, dims=8, weighting="zipf", vectors=vectors, tokenizer_path=tokenizer_json,
                              tune=fit)
    assert embedder.dims == 8 and embedder.info["tuned"]["held_out_cosine"] == [before, after]


def test_tuning_refuses_mismatched_targets(bert_dir):
    vectors, tokenizer_json = token_vectors(bert_dir, max_tokens=50)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    weights = zipf_weights(len(vectors))
    narrow = SentenceTargets(TEXTS, np.ones((len(TEXTS), 4)), TEXTS[:1], np.ones((1, 4)))
    with pytest.raises(SpeedyError, match="tune before reducing"):
        tune_vectors(vectors, weights, tokenizer, narrow)
    short = SentenceTargets(TEXTS, np.ones((2, 32)), TEXTS[:1], np.ones((1, 32)))
    with pytest.raises(SpeedyError, match="5 texts and 2 targets"):
        tune_vectors(vectors, weights, tokenizer, short)


@pytest.mark.parametrize("kwargs, message", [({"weighting": "idf"}, "weighting"), ({"dims": 0}, "dims"),
                                             ({"dims": 20, "max_tokens": 12}, "dims 20")])
def test_bad_settings_are_one_line_errors(bert_dir, kwargs, message):
    with pytest.raises(SpeedyError, match=message) as error:
        distill_static(bert_dir, **kwargs)
    assert "\n" not in str(error.value)


def test_encode_is_the_normalised_weighted_mean_of_the_tokens(static, bert_dir):
    out = static.encode(TEXTS)
    assert out.shape == (len(TEXTS), 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    tokenizer = Tokenizer.from_file(str(bert_dir / "tokenizer.json"))
    for text, row in zip(TEXTS, out):  # by hand, one token at a time
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        total = sum(static.weights[i] * static.vectors[i].astype(np.float64) for i in ids)
        np.testing.assert_allclose(row, total / np.linalg.norm(total), rtol=1e-4, atol=1e-6)


def test_texts_without_a_known_token_are_zero_rows(static):
    out = static.encode(["", "El equipo ganó.", "   ", "\u4e2d\u6587", "La ministra."])
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(norms, [0, 1, 0, 0, 1], atol=1e-5)  # '中文' is [UNK]: a special token, zero vector


def test_batches_do_not_change_the_vectors(static):
    texts = TEXTS + ["", "hoy"] + TEXTS[::-1]
    np.testing.assert_allclose(static.encode(texts, batch_size=3), static.encode(texts), rtol=1e-6, atol=1e-7)


def test_ids_past_a_limited_vocabulary_count_as_unknown(bert_dir):
    small = distill_static(bert_dir, dims=4, max_tokens=60)
    assert small.vectors.shape == (60, 4)
    out = small.encode(TEXTS)
    tokenizer = Tokenizer.from_file(str(bert_dir / "tokenizer.json"))
    for text, row in zip(TEXTS, out):
        known = [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i < 60]
        assert np.linalg.norm(row) == pytest.approx(1.0 if np.any(small.vectors[known]) else 0.0, abs=1e-5)


def test_save_and_load_give_the_same_encodings_from_half_the_bytes(static, tmp_path, bert_dir):
    folder = static.save(tmp_path / "static")
    assert sorted(p.name for p in folder.iterdir()) == ["static.json", "tokenizer.json", "vectors.npy",
                                                        "weights.npy"]
    settings = json.loads((folder / "static.json").read_text("utf-8"))
    assert settings["dims"] == 8 and settings["pca"] is True and settings["weighting"] == "sif"
    assert settings["source_model"] == bert_dir.name  # a local folder's name, not this machine's path
    assert np.load(folder / "vectors.npy").dtype == np.float16  # half of float32 on disk
    assert (folder / "vectors.npy").stat().st_size < static.vectors.nbytes * 0.5 + 256
    loaded = StaticEmbedder.load(folder)
    assert loaded.vectors.dtype == np.float32
    np.testing.assert_allclose(loaded.encode(TEXTS), static.encode(TEXTS), atol=2e-3)
    assert loaded.info == static.info


def test_loading_a_broken_folder_is_one_line_naming_it(static, tmp_path):
    with pytest.raises(SpeedyError, match="vectors.npy missing") as error:
        StaticEmbedder.load(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(error.value)
    folder = static.save(tmp_path / "broken")
    (folder / "vectors.npy").write_bytes(b"not numpy")
    with pytest.raises(SpeedyError) as error:
        StaticEmbedder.load(folder)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_loading_and_encoding_import_neither_torch_nor_transformers(static, tmp_path):
    folder = static.save(tmp_path / "static")
    code = (
        "import sys\n"
        "from speedy.embed.static import StaticEmbedder\n"
        f"vectors = StaticEmbedder.load({str(folder)!r}).encode(['El equipo ganó.', 'hoy'])\n"
        "assert vectors.shape == (2, 8), vectors.shape\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_sentencepiece_style_template_is_read_from_the_tokenizer(bert_unigram_dir):
    """XLM-R style: ``<s> token </s>``, as e5 has it."""
    vectors, _ = token_vectors(bert_unigram_dir, max_tokens=12, pooling="token")
    tokenizer = AutoTokenizer.from_pretrained(bert_unigram_dir)
    bos, eos = tokenizer.convert_tokens_to_ids(["<s>", "</s>"])
    model = AutoModel.from_pretrained(bert_unigram_dir).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([[bos, 9, eos]])).last_hidden_state[0, 1].numpy()
    np.testing.assert_allclose(vectors[9], hidden, rtol=1e-4, atol=1e-5)
    assert not np.any(vectors[[bos, eos]])
