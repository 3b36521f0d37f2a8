"""Retrieval evaluation: the SQuAD retrieval set, exact / HNSW / BM25 search, runs and IR metrics."""

import json
import math

import numpy as np
import pytest

from speedy.embed.retrieval import (bm25_search, exact_search, hnsw_search, recall_of_approximation,
                                    retrieval_metrics, squad_retrieval, to_run)
from speedy.errors import SpeedyError
from speedy.tasks import retrieval_metric


def normalised(rng, rows, dims):
    x = rng.normal(size=(rows, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- exact and approximate search


def test_exact_search_equals_a_brute_force_argsort(monkeypatch):
    rng = np.random.default_rng(0)
    queries, passages = normalised(rng, 37, 16), normalised(rng, 300, 16)
    monkeypatch.setattr(retrieval_metric, "CHUNK_ELEMENTS", 300 * 5)  # 5 queries a chunk: the chunking is exercised
    scores, indices = exact_search(queries, passages, k=10)
    full = queries.astype(np.float64) @ passages.T.astype(np.float64)
    want = np.argsort(-full, axis=1)[:, :10]
    assert scores.dtype == np.float32 and indices.shape == (37, 10)
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, axis=1), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_exact_search_with_fewer_passages_than_k_pads_the_rows():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    passages = np.array([[0.6, 0.8], [1.0, 0.0]])
    scores, indices = exact_search(queries, passages, k=3)
    # query 0: p1 (1.0) then p0 (0.6); query 1: p0 (0.8) then p1 (0.0); no third passage
    np.testing.assert_array_equal(indices, [[1, 0, -1], [0, 1, -1]])
    np.testing.assert_allclose(scores[:, :2], [[1.0, 0.6], [0.8, 0.0]], atol=1e-6)
    assert np.all(np.isneginf(scores[:, 2]))


@pytest.mark.parametrize("queries, passages, k", [
    (np.ones((2, 3)), np.ones((4, 5)), 2),  # widths differ
    (np.ones(3), np.ones((4, 3)), 2),       # not a matrix
    (np.ones((2, 3)), np.ones((4, 3)), 0),  # k
])
def test_bad_search_arguments_are_one_line_errors(queries, passages, k):
    with pytest.raises(SpeedyError) as error:
        exact_search(queries, passages, k)
    assert "\n" not in str(error.value)


def test_hnsw_finds_at_least_nine_tenths_of_the_exact_top_10():
    rng = np.random.default_rng(1)
    passages, queries = normalised(rng, 2000, 32), normalised(rng, 200, 32)
    _, exact = exact_search(queries, passages, k=10)
    scores, approx = hnsw_search(queries, passages, k=10)
    assert approx.shape == (200, 10) and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert recall_of_approximation(exact, approx, k=10) >= 0.9


def test_recall_of_approximation_by_hand():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    approx = np.array([[2, 9, 0], [5, 4, 3]])
    # top-2: query 0 wants {0, 1}, gets {2, 9}: 0 hits; query 1 wants {3, 4}, gets {5, 4}: 1 hit -> 1 / 4
    assert recall_of_approximation(exact, approx, k=2) == pytest.approx(0.25)
    # top-3: {0,1,2} vs {2,9,0}: 2 hits; {3,4,5} vs {5,4,3}: 3 hits -> 5 / 6
    assert recall_of_approximation(exact, approx, k=3) == pytest.approx(5 / 6)


# --- BM25


def test_bm25_ranks_the_passage_sharing_the_rare_words_first():
    passages = [
        "El equipo ganó el partido en el estadio.",
        "La ministra firmó el decreto sobre los glaciares patagónicos.",
        "El partido votó la ley en el congreso.",
        "El delantero marcó un gol en el estadio.",
    ]
    queries = ["¿Qué decreto sobre glaciares firmó la ministra?", "¿Quién marcó el gol?", "de la que el"]
    scores, indices = bm25_search(queries, passages, k=4)
    assert indices[0, 0] == 1 and indices[1, 0] == 3
    assert scores[0, 0] > scores[0, 1]
    # a query of stopwords only shares no word with any passage: nothing is found
    assert np.all(indices[2] == -1) and np.all(np.isneginf(scores[2]))


# --- runs and metrics


def test_to_run_maps_indices_to_ids_and_skips_missing_results():
    scores = np.array([[0.9, 0.5], [0.7, -np.inf]], dtype=np.float32)
    indices = np.array([[2, 0], [1, -1]])
    run = to_run(scores, indices, ["q1", "q2"], ["p0", "p1", "p2"])
    assert run == {"q1": {"p2": pytest.approx(0.9), "p0": pytest.approx(0.5)}, "q2": {"p1": pytest.approx(0.7)}}


def test_retrieval_metrics_by_hand():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    eleven = {f"x{i}": 20.0 - i for i in range(10)}
    run = {
        "q1": {"a": 3.0, "b": 2.0, "c": 1.0},  # gold at rank 1
        "q2": {"a": 3.0, "b": 2.0, "c": 1.0},  # gold at rank 2
        "q3": {**eleven, "c": 1.0},            # gold at rank 11: past every cutoff
    }
    metrics = retrieval_metrics(run, qrels)
    # one gold passage per query, so ideal DCG = 1:
    #   nDCG@10 = (1 + 1/log2(3) + 0) / 3;   MRR@10 = (1 + 1/2 + 0) / 3 = 0.5
    #   recall@1 = (1 + 0 + 0) / 3;          recall@10 = (1 + 1 + 0) / 3
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert metrics["mrr@10"] == pytest.approx(0.5)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)


def test_a_query_the_run_does_not_answer_counts_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    metrics = retrieval_metrics({"q1": {"a": 1.0}}, qrels)
    assert metrics == pytest.approx({"ndcg@10": 0.5, "mrr@10": 0.5, "recall@1": 0.5, "recall@10": 0.5})


def test_exact_search_end_to_end_on_planted_pairs():
    """Each query is a noisy copy of one passage: exact search must find it first, so every metric is 1."""
    rng = np.random.default_rng(2)
    passages = normalised(rng, 50, 24)
    queries = passages[:20] + 0.05 * rng.normal(size=(20, 24)).astype(np.float32)
    pids, qids = [f"p{i}" for i in range(50)], [f"q{i}" for i in range(20)]
    run = to_run(*exact_search(queries, passages, k=10), qids, pids)
    metrics = retrieval_metrics(run, {f"q{i}": {f"p{i}": 1} for i in range(20)})
    assert metrics == pytest.approx({"ndcg@10": 1.0, "mrr@10": 1.0, "recall@1": 1.0, "recall@10": 1.0})


# --- the SQuAD retrieval set

SHARED = "Madrid es la capital de España y su ciudad más poblada."


def squad_file(path):
    data = {"version": "1.1", "data": [
        {"title": "Madrid", "paragraphs": [
            {"context": SHARED, "qas": [
                {"id": "q1", "question": "¿Cuál es la capital de España?",
                 "answers": [{"text": "Madrid", "answer_start": 0}]}]},
            {"context": "El Prado es un museo de Madrid.", "qas": [
                {"id": "q2", "question": "¿Qué es el Prado?", "answers": [{"text": "un museo", "answer_start": 13}]},
                {"id": "q3", "question": "¿Dónde está el Prado?", "answers": []}]},
        ]},
        {"title": "España", "paragraphs": [
            {"context": "España tiene diecisiete comunidades autónomas.", "qas": [
                {"id": "q4", "question": "¿Cuántas comunidades tiene España?",
                 "answers": [{"text": "diecisiete", "answer_start": 13}]}]},
            {"context": SHARED, "qas": [  # the same paragraph again, in another article
                {"id": "q5", "question": "¿Cuál es la ciudad más poblada de España?",
                 "answers": [{"text": "Madrid", "answer_start": 0}]}]},
        ]},
    ]}
    path.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    return path


def test_squad_retrieval_dedupes_passages_and_maps_the_gold_ones(tmp_path):
    rs = squad_retrieval(squad_file(tmp_path / "tiny.json"))
    assert rs.passage_ids == ["p0", "p1", "p2"]
    assert rs.passages == [SHARED, "El Prado es un museo de Madrid.",
                           "España tiene diecisiete comunidades autónomas."]
    assert rs.query_ids == ["q1", "q2", "q3", "q4", "q5"]  # q3 has no answer: still a query
    assert rs.queries[0] == "¿Cuál es la capital de España?"
    assert rs.qrels == {"q1": {"p0": 1}, "q2": {"p1": 1}, "q3": {"p1": 1}, "q4": {"p2": 1}, "q5": {"p0": 1}}


def test_limit_questions_samples_queries_but_keeps_every_passage(tmp_path):
    path = squad_file(tmp_path / "tiny.json")
    full = squad_retrieval(path)
    small = squad_retrieval(path, limit_questions=2, seed=3)
    assert small.passages == full.passages and small.passage_ids == full.passage_ids
    assert len(small.query_ids) == 2 and set(small.query_ids) <= set(full.query_ids)
    assert small.qrels == {qid: full.qrels[qid] for qid in small.query_ids}
    assert [full.queries[full.query_ids.index(q)] for q in small.query_ids] == small.queries
    assert squad_retrieval(path, limit_questions=2, seed=3).query_ids == small.query_ids  # seeded
    samples = {tuple(squad_retrieval(path, limit_questions=2, seed=s).query_ids) for s in range(10)}
    assert len(samples) > 1  # the seed matters
    assert squad_retrieval(path, limit_questions=99).query_ids == full.query_ids


@pytest.mark.parametrize("text", ['{"data": [', '{"version": "1.1"}', '{"data": [{"paragraphs": [{"qas": 3}]}]}'])
def test_a_malformed_file_is_one_line_naming_it(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text, "utf-8")
    with pytest.raises(SpeedyError) as error:
        squad_retrieval(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_bad_question_limit_is_one_line_naming_the_file(tmp_path):
    path = squad_file(tmp_path / "tiny.json")
    with pytest.raises(SpeedyError, match="tiny.json.*limit_questions"):
        squad_retrieval(path, limit_questions=0)
