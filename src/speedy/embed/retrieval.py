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
import numpy as np

from speedy.data.squad import read_squad
from speedy.errors import SpeedyError
# The exact search and the metrics live with the embedding task type (a lower layer), and are part of this
# module's interface.
from speedy.tasks.retrieval_metric import (MEASURES, _check_search, _padded, exact_search,  # noqa: F401
                                           retrieval_metrics, to_run)


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
