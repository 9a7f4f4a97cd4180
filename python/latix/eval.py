"""Retrieval evaluation: effectiveness (ir-measures) and per-query latency.

Metrics are computed by the ``ir-measures`` library (MacAvaney et al., ECIR 2022), which wraps
``pytrec_eval``: nDCG@10, Recall@100, MRR@10 (``RR@10``) and MAP (``AP`` over the retrieved depth).
Latency is measured per query, one query at a time, for encoding and for search separately.

The embedding cache that evaluation scripts and benchmarks share lives in :mod:`latix.cache`
(:class:`EmbeddingCache`, re-exported here: ``latix.eval.EmbeddingCache`` keeps working).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from latix.cache import EmbeddingCache, data_checksum
from latix.encoder import Encoder
from latix.errors import InvalidArgumentError

__all__ = [
    "EvalResult",
    "evaluate",
    "evaluate_collection",
    "score_run",
    "EmbeddingCache",
    "percentiles",
    "data_checksum",
]

#: Reported metric name -> ir-measures measure string.
METRICS = {"nDCG@10": "nDCG@10", "Recall@100": "R@100", "MRR@10": "RR@10", "MAP": "AP"}


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of a list of durations (milliseconds)."""
    if not ms:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    a = np.asarray(ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean())}


@dataclass
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        metrics: metric name (``nDCG@10``, ``Recall@100``, ``MRR@10``, ``MAP``) -> mean value.
        n_queries: queries evaluated (those with both text and judgements).
        n_queries_without_text: judged queries missing from the queries file (not evaluated).
        encode_ms: percentiles of per-query encoding time.
        search_ms: percentiles of per-query search time.
        depth: documents retrieved per query.
        run: query id -> {doc id -> score}.
    """

    metrics: dict[str, float]
    n_queries: int
    n_queries_without_text: int
    encode_ms: dict[str, float]
    search_ms: dict[str, float]
    depth: int
    run: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the run)."""
        return {
            "metrics": self.metrics,
            "n_queries": self.n_queries,
            "n_queries_without_text": self.n_queries_without_text,
            "latency_ms": {"encode": self.encode_ms, "search": self.search_ms},
            "depth": self.depth,
        }


def _judged_queries(
    qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str]
) -> tuple[list[str], int]:
    """The judged query ids that have a text, in qrels order, and how many judged ones have none,
    after checking that the ``eval`` extra (ir-measures) is installed: both evaluations fail
    before any encoding or search when it is missing or no judged query has a text."""
    from latix._optional import require

    require("eval", "ir_measures", purpose="evaluation metrics")
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise InvalidArgumentError("no judged query has a text: check that queries and qrels match")
    return qids, len(qrels) - len(qids)


def evaluate(
    index: Any,
    encoder: Encoder | None,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    depth: int = 1000,
    n_threads: int | None = None,
    query_vectors: Mapping[str, npt.NDArray[np.float32]] | None = None,
) -> EvalResult:
    """Search every judged query, one at a time, and score the ranking.

    Args:
        index: a ``latix.Index`` (anything with ``search(q, k=, n_threads=)``).
        encoder: encodes the queries (timed); may be None when ``query_vectors`` is given.
        queries: query id -> text.
        qrels: query id -> {doc id -> relevance}.
        depth: documents retrieved per query.
        n_threads: search threads.
        query_vectors: precomputed (n_tokens, dim) float32 query vectors, by id (then encoding
            time is not measured).

    Returns:
        An :class:`EvalResult`.

    Raises:
        InvalidArgumentError: no judged query has a text.
        MissingDependencyError: ir-measures (the ``eval`` extra) is missing (checked first).
    """
    qids, missing = _judged_queries(qrels, queries)
    if encoder is None and query_vectors is None:
        raise InvalidArgumentError("evaluate needs an encoder or query_vectors")
    enc_ms: list[float] = []
    search_ms: list[float] = []
    run: dict[str, dict[str, float]] = {}
    for qid in qids:
        if query_vectors is not None and qid in query_vectors:
            qv = query_vectors[qid]
        else:
            assert encoder is not None
            t0 = time.perf_counter()
            qv = encoder.encode_queries([queries[qid]])[0]
            enc_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        scores, ids = index.search(qv, k=depth, n_threads=n_threads)
        search_ms.append((time.perf_counter() - t0) * 1e3)
        run[qid] = {
            str(d): float(s)
            for s, d in zip(scores[0], ids[0], strict=False)
            if d != "" and np.isfinite(s)
        }
    metrics = score_run(run, qrels)
    return EvalResult(
        metrics, len(qids), missing, percentiles(enc_ms), percentiles(search_ms), depth, run
    )


def score_run(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """The metrics of :data:`METRICS` (ir-measures) of a run over the judged queries it holds.

    Args:
        run: query id -> {doc id -> score}.
        qrels: query id -> {doc id -> relevance}.

    Returns:
        metric name -> mean over the run's judged queries.
    """
    from latix._optional import require

    ir_measures = require("eval", "ir_measures", purpose="evaluation metrics")
    measures = [ir_measures.parse_measure(m) for m in METRICS.values()]
    qrels_plain = {q: dict(v) for q, v in qrels.items() if q in run}
    run_plain = {q: dict(v) for q, v in run.items()}
    agg = ir_measures.calc_aggregate(measures, qrels_plain, run_plain)
    by_str = {str(k): float(v) for k, v in agg.items()}
    return {name: by_str[m] for name, m in METRICS.items()}


def evaluate_collection(
    col: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    mode: str = "late",
    depth: int = 1000,
    where: Mapping[str, Any] | None = None,
    n_threads: int | None = None,
    query_vectors: Mapping[str, npt.NDArray[np.float32]] | None = None,
    **search_options: Any,
) -> EvalResult:
    """Search every judged query through a :class:`latix.Collection`, one at a time, in any
    mode, and score the ranking.

    Args:
        col: the collection.
        queries: query id -> text.
        qrels: query id -> {record id -> relevance}.
        mode: ``"late"``, ``"keyword"`` or ``"hybrid"``.
        depth: records retrieved per query.
        where: a metadata filter applied to every query.
        n_threads: search threads.
        query_vectors: precomputed query vectors by id (else the collection's model encodes
            each query, timed separately; keyword mode encodes nothing).
        **search_options: passed to :meth:`latix.Collection.search_batch` (``fusion``,
            ``alpha``, ``nprobe``, ...).

    Returns:
        An :class:`EvalResult` (``search_ms`` includes fetching texts and metadata).

    Raises:
        InvalidArgumentError: no judged query has a text.
        MissingDependencyError: ir-measures (the ``eval`` extra) is missing (checked first).
    """
    qids, missing = _judged_queries(qrels, queries)
    enc_ms: list[float] = []
    search_ms: list[float] = []
    run: dict[str, dict[str, float]] = {}
    for qid in qids:
        qv = None
        if mode != "keyword":
            if query_vectors is not None and qid in query_vectors:
                qv = [query_vectors[qid]]
            else:
                t0 = time.perf_counter()
                qv = col.encoder.encode_queries_packed([queries[qid]]).to_list()
                enc_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        res = col.search_batch(
            [queries[qid]],
            depth,
            where=where,
            mode=mode,
            query_vectors=qv,
            n_threads=n_threads,
            include=(),
            **search_options,
        )
        search_ms.append((time.perf_counter() - t0) * 1e3)
        n = res.n_hits(0)
        run[qid] = {str(res.ids[0, j]): float(res.scores[0, j]) for j in range(n)}
    metrics = score_run(run, qrels)
    return EvalResult(
        metrics, len(qids), missing, percentiles(enc_ms), percentiles(search_ms), depth, run
    )
