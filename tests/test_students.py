"""Student builders: ALBERT base-n, truncated encoders, vocabulary pruning."""

import os

import pytest
import torch
from transformers import AlbertModel, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertModel

from conftest import corpus
from speedy.errors import SpeedyError
from speedy.models.students import albert_base_n, prune_vocabulary, spread_layers, truncate_layers

SENTENCES = ["El equipo ganó el partido ayer.", "La ministra aprobó la ley hoy."]


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_albert_base_n_keeps_parameters_and_equals_the_first_n_layers(albert_dir):
    tokenizer = AutoTokenizer.from_pretrained(albert_dir)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    full = AlbertModel.from_pretrained(albert_dir).eval()
    with torch.no_grad():
        hidden = full(**inputs, output_hidden_states=True).hidden_states
    counts = set()
    for n in (1, 2, 4, 6):
        student = albert_base_n(str(albert_dir), n, AlbertModel).eval()
        counts.add(_count(student))
        assert student.config.num_hidden_layers == n
        with torch.no_grad():
            out = student(**inputs).last_hidden_state
        torch.testing.assert_close(out, hidden[n], rtol=1e-5, atol=1e-5)
    assert counts == {_count(full)}  # weight sharing: the same parameters whatever n


def test_albert_base_n_refuses_other_architectures_and_bad_depths(albert_dir, bert_dir):
    with pytest.raises(SpeedyError, match="ALBERT"):
        albert_base_n(str(bert_dir), 2, AutoModel)
    with pytest.raises(SpeedyError, match="students.layers"):
        albert_base_n(str(albert_dir), 7, AlbertModel)


def test_truncated_encoder_runs_exactly_the_kept_layers(bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    inputs = tokenizer(SENTENCES[:1], return_tensors="pt")  # one sentence: no padding, so no mask is needed
    full = BertModel.from_pretrained(bert_dir).eval()
    student = truncate_layers(BertModel.from_pretrained(bert_dir), [0, 2]).eval()
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    # By hand: embeddings, then layers 0 and 2 of the full model.
    with torch.no_grad():
        x = full.embeddings(input_ids=inputs["input_ids"])
        for i in (0, 2):
            x = full.encoder.layer[i](x)
            x = x[0] if isinstance(x, tuple) else x
        out = student(**inputs).last_hidden_state
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert _count(student) < _count(full)


def test_truncated_student_saves_and_loads_as_an_ordinary_model(bert_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    truncate_layers(model, [1, 3]).save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 2
    torch.testing.assert_close(again.bert.encoder.layer[0].output.dense.weight, model.bert.encoder.layer[0].output.dense.weight)


def test_truncation_rejects_bad_layer_lists(bert_dir):
    for keep in ([], [2, 1], [0, 4]):
        with pytest.raises(SpeedyError, match="students.layers"):
            truncate_layers(BertModel.from_pretrained(bert_dir), keep)


def test_spread_layers():
    assert spread_layers(12, 4) == [2, 5, 8, 11]
    assert spread_layers(12, 12) == list(range(12))


@pytest.mark.parametrize("which", ["bert_dir", "bert_unigram_dir"])
def test_vocabulary_pruning_keeps_corpus_tokenization_and_outputs(which, request, tmp_path):
    folder = request.getfixturevalue(which)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    texts = SENTENCES + ["¿Dónde está el niño?"]
    before = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits_before = model(**before).logits
    pieces_before = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(texts)["input_ids"]]

    pruned_model, pruned_tokenizer = prune_vocabulary(model, tokenizer, texts)
    assert len(pruned_tokenizer) < len(tokenizer)
    assert pruned_model.config.vocab_size == len(pruned_tokenizer)
    pieces_after = [pruned_tokenizer.convert_ids_to_tokens(ids) for ids in pruned_tokenizer(texts)["input_ids"]]
    assert pieces_after == pieces_before
    after = pruned_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits_after = pruned_model(**after).logits
    torch.testing.assert_close(logits_after, logits_before, rtol=1e-5, atol=1e-5)

    # The pruned pair round-trips through save/load like any Hugging Face model.
    pruned_model.save_pretrained(tmp_path)
    pruned_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(texts)["input_ids"] == pruned_tokenizer(texts)["input_ids"]
    # Unseen words can still be spelled with the kept single characters instead of all becoming unknown.
    word = "toldo"  # not in ``texts``; spelled from characters the tiny vocabularies have
    assert tokenizer.unk_token_id not in tokenizer(word)["input_ids"]
    assert again.unk_token_id not in again(word)["input_ids"]


def test_pruning_a_realistic_corpus_shrinks_the_vocabulary(bert_unigram_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_unigram_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_unigram_dir, num_labels=2)
    _, pruned = prune_vocabulary(model, tokenizer, corpus()[:10])
    assert len(pruned) < len(tokenizer)


@pytest.mark.skipif(os.environ.get("SPEEDY_HUB_TESTS") != "1", reason="needs the Hugging Face Hub (SPEEDY_HUB_TESTS=1)")
def test_albeto_base_n_from_the_hub():
    full = AlbertModel.from_pretrained("dccuchile/albert-base-spanish")
    for n in (2, 4, 6, 8, 10):
        student = albert_base_n("dccuchile/albert-base-spanish", n, AlbertModel)
        assert student.config.num_hidden_layers == n and _count(student) == _count(full)


def test_vocabulary_pruning_sees_train_and_validation_never_test():
    """Pruning on the test split would let the test's words shape the student's vocabulary."""
    from datasets import Dataset

    from speedy.data.load import TaskData

    splits = {name: Dataset.from_dict({"text": [f"{name} palabra"], "label": [0]})
              for name in ("train", "validation", "test")}
    texts = TaskData("t", splits, {}, ["a"]).texts()
    assert texts == ["train palabra", "validation palabra"]


def test_a_trial_initialises_the_same_whether_or_not_its_base_was_converted_in_the_same_process(bert_dir,
                                                                                             monkeypatch):
    """Converting multilingual-e5-small on first use draws random numbers; the head's initialisation must not
    depend on it (the first run on a machine once trained a different teacher than every later one)."""
    import torch

    import speedy.build as build
    from speedy.config import ModelSpec
    from speedy.tasks import ClassificationTask

    task = ClassificationTask(["a", "b", "c"])
    spec = ModelSpec(name="t", base=str(bert_dir))

    def converting(name, cache_dir=None):  # what a first-time conversion does to the global generator
        torch.rand(1000)
        return str(bert_dir)

    torch.manual_seed(0)
    cached, _ = build.build_model(spec, task, [], seed=7)
    monkeypatch.setattr(build, "resolve", converting)
    torch.manual_seed(0)
    converted, _ = build.build_model(spec, task, [], seed=7)
    assert torch.equal(cached.classifier.weight, converted.classifier.weight)
