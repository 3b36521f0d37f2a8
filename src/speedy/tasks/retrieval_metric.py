"""Retrieval metrics on embeddings: exact inner-product top-k search and the standard IR measures (nDCG@10,
MRR@10, recall@1, recall@10, computed by ``ir-measures``), torch-free and index-free, so that the embedding task
type scores its validation and test splits with them, and ``speedy.embed`` (BM25, HNSW, the benchmarks) builds
on them.

Every search returns ``(scores, indices)``, two ``[queries, k]`` arrays sorted best first (index ``-1`` where a
search found fewer than ``k`` passages); :func:`to_run` turns them into the ``{query id: {passage id: score}}``
run that :func:`retrieval_metrics` scores. Embeddings are expected L2-normalised, so the inner product is the
cosine.
"""

from __future__ import annotations

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from speedy.errors import SpeedyError

# The measures and the names they are reported under (fractions 0..1).
MEASURES = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@1": R @ 1, "recall@10": R @ 10}
CHUNK_ELEMENTS = 1 << 24  # exact search: at most this many scores (64 MB of float32) in memory at once


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
