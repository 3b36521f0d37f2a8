"""Semantic search evaluation: a retrieval set made from a SQuAD file, exact and approximate (HNSW) top-k search
over embeddings, BM25 as the lexical anchor, and the standard IR metrics.

A :class:`RetrievalSet` holds queries, passages and the gold pairs (``qrels``). Every search returns
``(scores, indices)``, two ``[queries, k]`` arrays sorted best first (index ``-1`` where a search found fewer than
``k`` passages); :func:`to_run` turns them into the ``{query id: {passage id: score}}`` run that
:func:`retrieval_metrics` scores with ``ir-measures`` (nDCG@10, MRR@10, recall@1, recall@10). Embeddings are
expected L2-normalised, so the inner product is the cosine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import bm25s
import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from speedy.data.squad import read_squad
from speedy.errors import SpeedyError

# The measures and the names they are reported under (fractions 0..1).
MEASURES = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@1": R @ 1, "recall@10": R @ 10}
CHUNK_ELEMENTS = 1 << 24  # exact search: at most this many scores (64 MB of float32) in memory at once


@dataclass
class RetrievalSet:
    """Queries and passages with their ids, and the gold passages of each query (``qrels[qid][pid] = 1``)."""

    queries: list[str]
    query_ids: list[str]
    passages: list[str]
    passage_ids: list[str]
    qrels: dict[str, dict[str, int]]


def squad_retrieval(path: str | Path, limit_questions: int | None = None, seed: int = 0) -> RetrievalSet:
    """A retrieval set from a SQuAD v1.1 JSON file: every distinct context is a passage (``p0``, ``p1``, ... in
    order of first appearance; exact text duplicates are one passage), every question a query whose one gold
    passage is its own context. ``limit_questions`` keeps that many questions (a seeded sample, in file order)
    but every passage. A malformed file is a one-line :class:`SpeedyError` naming it."""
    if limit_questions is not None and (isinstance(limit_questions, bool) or not isinstance(limit_questions, int)
                                        or limit_questions < 1):
        raise SpeedyError(f"{path}: limit_questions must be a positive whole number, not {limit_questions!r}")
    # Answers play no part in retrieval: questions without one are kept, misplaced ones are not reported.
    rows = read_squad(path, require_answers=False, bad_answers="keep", report=lambda message: None).to_dict()
    contexts, questions, ids = rows["context"], rows["question"], [str(qid) for qid in rows["id"]]
    passage_of: dict[str, str] = {}  # context text -> passage id
    for context in contexts:
        passage_of.setdefault(context, f"p{len(passage_of)}")
    keep = range(len(ids))
    if limit_questions is not None and limit_questions < len(ids):
        keep = sorted(random.Random(seed).sample(range(len(ids)), limit_questions))
    return RetrievalSet(queries=[questions[i] for i in keep], query_ids=[ids[i] for i in keep],
                        passages=list(passage_of), passage_ids=list(passage_of.values()),
                        qrels={ids[i]: {passage_of[contexts[i]]: 1} for i in keep})


def _check_search(queries: np.ndarray, passages: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices as C-contiguous float32 ``[n, dims]`` of the same width; ``k`` a positive whole number."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    passages = np.ascontiguousarray(passages, dtype=np.float32)
    if queries.ndim != 2 or passages.ndim != 2 or queries.shape[1] != passages.shape[1]:
        raise SpeedyError(f"search: queries {queries.shape} and passages {passages.shape} must be [n, dims] "
                          "matrices of the same width")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SpeedyError(f"search: k must be a positive whole number, not {k!r}")
    return queries, passages


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores``, best first (ties: the lower index first)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    picked = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -picked), axis=1)  # by score descending, then by index
    return np.take_along_axis(picked, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def _padded(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, k]`` results: columns past the passages found are score ``-inf`` and index ``-1``."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores.astype(np.float32), indices.astype(np.int64)
    rows = scores.shape[0]
    return (np.hstack([scores, np.full((rows, missing), -np.inf)]).astype(np.float32),
            np.hstack([indices, np.full((rows, missing), -1)]).astype(np.int64))


def exact_search(queries: np.ndarray, passages: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of every query over the passages: ``(scores, indices)``, float32 and int64
    ``[queries, k]``, best first. Queries go in chunks, so at most ``CHUNK_ELEMENTS`` scores are held at once."""
    queries, passages = _check_search(queries, passages, k)
    chunk = max(1, CHUNK_ELEMENTS // max(1, passages.shape[0]))
    found = min(k, passages.shape[0])
    scores = np.empty((queries.shape[0], found), dtype=np.float32)
    indices = np.empty((queries.shape[0], found), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk] @ passages.T
        scores[start : start + chunk], indices[start : start + chunk] = _top_k(block, k)
    return _padded(scores, indices, k)


def hnsw_search(queries: np.ndarray, passages: np.ndarray, k: int, m: int = 32,
                ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Approximate inner-product top-``k`` with a faiss HNSW graph (``m`` neighbours per node, ``ef_search``
    candidates per query, at least ``k``): ``(scores, indices)`` as :func:`exact_search` gives them."""
    try:  # lazy: faiss is needed for approximate search only, and a missing install is one line
        import faiss
    except ImportError:
        raise SpeedyError("hnsw_search needs faiss, which is not installed: pip install faiss-cpu") from None
    queries, passages = _check_search(queries, passages, k)
    index = faiss.IndexHNSWFlat(passages.shape[1], int(m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = max(int(ef_search), int(k))
    index.add(passages)
    scores, indices = index.search(queries, int(k))
    scores = np.where(indices < 0, -np.inf, scores)
    return scores.astype(np.float32), indices.astype(np.int64)


def bm25_search(queries: list[str], passages: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """BM25 (``bm25s``, its default Lucene variant) top-``k``: lowercased words of two or more letters, Spanish
    stopwords removed, no stemming. ``(scores, indices)`` as :func:`exact_search` gives them; only passages sharing a
    word with the query are found (the rest of the row is index ``-1``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SpeedyError(f"search: k must be a positive whole number, not {k!r}")
    if not passages:
        raise SpeedyError("bm25_search: no passages to search")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(passages), lower=True, stopwords="es", show_progress=False),
                    show_progress=False)
    # Words as strings, so bm25s maps them to the passages' vocabulary (words it has never seen are dropped).
    words = bm25s.tokenize(list(queries), lower=True, stopwords="es", return_ids=False, show_progress=False)
    found = min(int(k), len(passages))
    indices, scores = retriever.retrieve(words, k=found, show_progress=False, n_threads=1)
    scores, indices = np.asarray(scores, dtype=np.float32), np.asarray(indices, dtype=np.int64)
    unmatched = scores <= 0  # no query word in the passage (BM25's idf is positive): not found, not a tie at 0
    scores, indices = np.where(unmatched, -np.inf, scores), np.where(unmatched, -1, indices)
    return _padded(scores, indices, int(k))


def to_run(scores: np.ndarray, indices: np.ndarray, query_ids: list[str],
           passage_ids: list[str]) -> dict[str, dict[str, float]]:
    """A TREC-style run ``{query id: {passage id: score}}`` from search results (index ``-1`` skipped). The
    metrics rank by score; trec_eval breaks ties by passage id."""
    if len(scores) != len(query_ids) or np.shape(scores) != np.shape(indices):
        raise SpeedyError(f"to_run: {len(query_ids)} query ids for scores {np.shape(scores)} and indices "
                          f"{np.shape(indices)}")
    run = {}
    for qid, row_scores, row_indices in zip(query_ids, scores, indices):
        run[str(qid)] = {passage_ids[j]: float(s) for s, j in zip(row_scores, row_indices) if j >= 0}
    return run


def retrieval_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@1 and recall@10 of ``run`` (fractions 0..1, computed by ``ir-measures``), averaged
    over the queries of ``qrels``: a query the run does not answer counts 0."""
    if not qrels:
        raise SpeedyError("retrieval_metrics: no queries with gold passages (qrels is empty)")
    values = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {name: float(values.get(measure, 0.0)) for name, measure in MEASURES.items()}


def recall_of_approximation(exact_indices: np.ndarray, approx_indices: np.ndarray, k: int = 10) -> float:
    """The share of the exact top-``k`` passages (over all queries) that the approximate search also returns in
    its top ``k``."""
    exact = np.asarray(exact_indices)[:, :k]
    approx = np.asarray(approx_indices)[:, :k]
    if exact.shape[0] != approx.shape[0]:
        raise SpeedyError(f"recall_of_approximation: {exact.shape[0]} exact rows but {approx.shape[0]} approximate")
    hits = total = 0
    for want, got in zip(exact, approx):
        want = set(want[want >= 0].tolist())
        hits += len(want & set(got[got >= 0].tolist()))
        total += len(want)
    return hits / total if total else 1.0
