"""Counting (parameters, MACs) and the speed protocol's statistics, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speedy.bench.macs import count_macs
from speedy.bench.size import count_parameters
from speedy.bench.speed import (length_batches, modified_z_filter, random_inputs, read_sentences, summarise,
                                time_sentences)
from speedy.errors import SpeedyError


def test_albert_base_n_macs_grow_linearly_in_n_while_parameters_stay(albert_dir):
    from transformers import AlbertModel

    sizes, macs = [], []
    for n in range(1, 7):
        model = AlbertModel.from_pretrained(albert_dir, num_hidden_layers=n)
        sizes.append(count_parameters(model)["parameters"])
        counted = count_macs(model, batch_size=2, length=24)
        assert counted["attention_calls"] == n  # the one shared layer, run n times, counted n times
        macs.append(counted["macs"])
    assert len(set(sizes)) == 1
    steps = np.diff(macs)
    assert steps[0] > 0 and all(step == steps[0] for step in steps)


def bert_hand_macs(b, t, h, i, layers, labels):
    per_layer = b * t * (4 * h * h + 2 * h * i) + 2 * b * t * t * h  # Q,K,V,O and the FFN; Q K^T and A V
    return layers * per_layer + b * h * h + b * h * labels  # pooler, classifier (first token only)


@pytest.mark.parametrize("batch, length", [(1, 16), (2, 10), (3, 37)])
def test_small_bert_macs_equal_the_formula_and_the_flop_counter(batch, length):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    h, i, layers, labels = 32, 64, 3, 3
    # eager attention: FlopCounterMode has no rule for the CPU SDPA kernel, so it would miss Q K^T and A V
    config = BertConfig(vocab_size=100, hidden_size=h, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=i, num_labels=labels, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    counted = count_macs(model, batch, length)
    assert counted["macs"] == bert_hand_macs(batch, length, h, i, layers, labels)
    assert counted["attention_macs"] == layers * 2 * batch * length * length * h
    assert counted["linear_macs"] == counted["macs"] - counted["attention_macs"]
    layer_norms = 2 * layers + 1  # embeddings, then after attention and after the FFN of every layer
    assert counted["thop_macs"] == counted["linear_macs"] + layer_norms * 4 * batch * length * h  # THOP's rule
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(**random_inputs(100, batch, length))
    assert flops.get_total_flops() / 2 == counted["macs"]


# The paper's figures are for a 3-label head (XNLI's): with 2 labels both come out smaller, by the hidden size.
def _beto():  # BETO cased: BERT-base with its 31,002-piece vocabulary
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=31002, num_labels=3))


def _albeto_tiny():  # ALBETO tiny: ALBERT, embeddings 128, hidden 312, 4 layers sharing one
    from transformers import AlbertConfig, AlbertForSequenceClassification

    return AlbertForSequenceClassification(AlbertConfig(
        vocab_size=31000, embedding_size=128, hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
        intermediate_size=1248, num_labels=3))


@pytest.mark.parametrize("build, paper", [(_beto, 43_526_457_600), (_albeto_tiny, 2_418_245_608)])
def test_thop_count_reproduces_the_papers_figures_at_length_512(build, paper):
    """The paper's CSV lists THOP 0.1.1's MACs at batch 1, length 512; THOP counts Linear and LayerNorm only."""
    assert count_macs(build().eval(), 1, 512)["thop_macs"] == paper


def test_attention_share_grows_with_length():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=512))
    short, long = count_macs(model, 1, 16), count_macs(model, 1, 512)
    assert short["attention_macs"] / short["macs"] < long["attention_macs"] / long["macs"]


def test_count_macs_refuses_a_model_without_attention():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = type("Config", (), {"vocab_size": 10})()
    with pytest.raises(ValueError, match="no attention module"):
        count_macs(model, 1, 4)


@pytest.mark.parametrize("times, kept", [
    ([1, 2, 3, 4, 100], [2, 3, 4]),  # median 3, MAD 1: scores -1.35, -0.67, 0, 0.67, 65.4
    ([10, 11, 12, 13, 14, 15], [11, 12, 13, 14]),  # median 12.5, MAD 1.5: |scores| 1.12, 0.67, 0.22
    ([5, 5, 5, 9], [5, 5, 5, 9]),  # MAD 0: the score is undefined, nothing is dropped
    ([2.0, 2.2, 2.1, 1.9, 2.05, 3.5], [2.0, 2.1, 2.05]),  # median 2.075, MAD 0.1: 2.2 and 1.9 score 0.84, 1.18
])
def test_modified_z_filter_on_hand_computed_cases(times, kept):
    assert sorted(modified_z_filter(times).tolist()) == pytest.approx(sorted(kept))


def test_summary_reports_the_papers_filtered_mean_beside_the_median():
    summary = summarise([1, 2, 3, 4, 100], items_per_run=2)
    assert summary["seconds_filtered_mean"] == pytest.approx(3.0)
    assert summary["seconds_median"] == pytest.approx(3.0)
    assert summary["inferences_per_second"] == pytest.approx(2 / 3)
    assert summary["kept_runs"] == 3 and summary["runs"] == 5
    assert summary["seconds_iqr"] == pytest.approx(2.0)


def test_real_sentences_are_batched_by_length_and_padded_per_batch(wordpiece_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(wordpiece_dir)
    sentences = ["Hola.", "El equipo ganó el partido ayer en el estadio con la portera.", "La ministra habló.",
                 "El gobierno aprobó la ley.", "Señor."]
    batches = length_batches(tokenizer, sentences, batch_size=2, max_length=64)
    assert sum(len(b["input_ids"]) for b in batches) == len(sentences)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[-1] > widths[0]
    for batch in batches:  # each batch is padded only to its own longest sentence
        assert int(batch["attention_mask"].sum(1).max()) == batch["input_ids"].shape[1]


def test_time_sentences_runs_every_sentence_once_per_pass(wordpiece_dir):
    from transformers import AutoTokenizer

    seen = []

    class Counting(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            seen.append(len(input_ids))

    result = time_sentences(Counting(), AutoTokenizer.from_pretrained(wordpiece_dir), ["Hola."] * 5 + ["Adiós."],
                            batch_size=4, repeats=3)
    assert sum(seen) == 6 * (1 + 3)  # one untimed pass, three timed
    assert result["sentences"] == 6 and result["sentences_per_second"] > 0


def test_time_sentences_names_the_filtered_mean_and_the_median_as_time_model_does(wordpiece_dir, monkeypatch):
    """The sentence workload once printed its median rate in the column of the paper's filtered mean."""
    from transformers import AutoTokenizer

    import speedy.bench.speed as speed

    # median 1.0 s, MAD 0.1 s: 5.0 and 1.2 are outliers (|z| > 0.75), so the filtered mean is (1 + 1 + 0.9) / 3
    monkeypatch.setattr(speed, "timed_runs", lambda *args, **kwargs: [1.0, 1.0, 1.2, 0.9, 5.0])
    result = time_sentences(torch.nn.Identity(), AutoTokenizer.from_pretrained(wordpiece_dir), ["Hola."] * 6,
                            batch_size=4, repeats=5)
    assert result["inferences_per_second"] == pytest.approx(6 / (2.9 / 3))
    assert result["inferences_per_second_median"] == pytest.approx(6.0)


def test_an_empty_sentence_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", "utf-8")
    with pytest.raises(SpeedyError, match=r"empty\.txt: no sentences"):
        read_sentences(empty)
    with pytest.raises(SpeedyError, match="no such file"):
        read_sentences(tmp_path / "missing.txt")


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    from speedy.report import pareto_front

    points = [(1.0, 90.0), (2.0, 85.0), (2.0, 80.0), (5.0, 70.0), (4.0, 60.0), (1.0, 89.0)]
    assert pareto_front(points) == [0, 1, 3]  # ordered by speed


@pytest.mark.parametrize("head", ["classification", "tagging", "qa"])
def test_the_shape_formula_equals_the_counted_macs(head):
    from transformers import AlbertConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, \
        AutoModelForTokenClassification

    from speedy.bench.macs import encoder_macs

    config = AlbertConfig(vocab_size=60, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=64, num_labels=2 if head == "qa" else 5)
    auto = {"classification": AutoModelForSequenceClassification, "tagging": AutoModelForTokenClassification,
            "qa": AutoModelForQuestionAnswering}[head]
    counted = count_macs(auto.from_config(config), batch_size=2, length=20)["macs"]
    assert encoder_macs(3, 32, 64, 16, 20, 2, head, outputs=5) == counted


def test_the_cpu_is_named_with_its_vector_instructions(monkeypatch):
    import speedy.bench.cpu as cpu

    class FakeInfo:
        def __init__(self, _path):
            pass

        def read_text(self):
            return ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8\nprocessor\t: 1\n")

    monkeypatch.setattr(cpu, "Path", FakeInfo)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 8)
    assert cpu.cpu_description() == "Intel(R) Xeon(R) Platinum 8480+, 8 cores; AVX2, AVX-512, AVX-512 VNNI, AMX-INT8"
