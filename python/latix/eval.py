"""Retrieval evaluation: effectiveness (ir-measures) and per-query latency, plus an embedding cache.

Metrics are computed by the ``ir-measures`` library (MacAvaney et al., ECIR 2022), which wraps
``pytrec_eval``: nDCG@10, Recall@100, MRR@10 (``RR@10``) and MAP (``AP`` over the retrieved depth).
Latency is measured per query, one query at a time, for encoding and for search separately.

The :class:`EmbeddingCache` stores document encodings keyed by model identity (hash of the model
files and config) and a checksum of the data, so benchmarks and evaluation scripts do not
re-encode a
collection on every run. Normal indexing does not use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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


def data_checksum(ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hex SHA-256 of a list of (id, text) pairs (length-prefixed, order-sensitive)."""
    if len(ids) != len(texts):
        raise InvalidArgumentError(f"{len(ids)} ids but {len(texts)} texts")
    h = hashlib.sha256()
    for i, t in zip(ids, texts, strict=False):
        for s in (i, t):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


class EmbeddingCache:
    """On-disk cache of encodings, keyed by model fingerprint, text kind and data checksum.

    Entries live under ``$LATIX_CACHE_DIR`` (default ``~/.cache/latix``) in
    ``embeddings/<model>-<kind>-<data>/`` as ``vectors.npy`` (float16 for documents, float32 for
    queries), ``offsets.npy`` and ``ids.json``; an entry is written to a temporary directory and
    renamed into place, so a reader never sees a partial entry.

    Args:
        root: cache directory (default: ``$LATIX_CACHE_DIR`` or ``~/.cache/latix``).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            root = os.environ.get("LATIX_CACHE_DIR") or Path.home() / ".cache" / "latix"
        self.root = Path(root)

    def entry_dir(
        self, encoder: Encoder, kind: str, ids: Sequence[str], texts: Sequence[str]
    ) -> Path:
        """Directory of the entry for these texts under this model."""
        key = f"{encoder.fingerprint[:20]}-{kind}-{data_checksum(ids, texts)[:20]}"
        return self.root / "embeddings" / key

    def get_or_compute(
        self,
        encoder: Encoder,
        ids: Sequence[str],
        texts: Sequence[str],
        kind: str = "document",
        *,
        chunk: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        """Encodings of ``texts``, from the cache or computed (and stored).

        Args:
            encoder: the model.
            ids: one id per text (part of the data checksum).
            texts: the texts.
            kind: ``"document"`` (stored as float16) or ``"query"`` (float32).
            chunk: texts encoded per call when computing.
            progress: called with the number of texts done after each chunk.

        Returns:
            (vectors (n_tokens, dim), offsets (n_texts + 1,) int64), in input order.
        """
        if kind not in ("document", "query"):
            raise InvalidArgumentError(f"kind must be 'document' or 'query', got {kind!r}")
        d = self.entry_dir(encoder, kind, ids, texts)
        if (d / "offsets.npy").is_file():
            return np.load(d / "vectors.npy", mmap_mode="r"), np.load(d / "offsets.npy")
        dtype = np.float16 if kind == "document" else np.float32
        parts: list[npt.NDArray[Any]] = []
        counts: list[int] = []
        for s in range(0, len(texts), chunk):
            batch = list(texts[s : s + chunk])
            enc = (
                encoder.encode_documents_packed(batch)
                if kind == "document"
                else encoder.encode_queries_packed(batch)
            )
            parts.append(enc.vectors.astype(dtype))
            counts.extend(np.diff(enc.offsets).tolist())
            if progress is not None:
                progress(len(batch))
        vectors = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype)
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        try:
            np.save(tmp / "vectors.npy", vectors)
            np.save(tmp / "offsets.npy", offsets)
            (tmp / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
            os.replace(tmp, d)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (d / "offsets.npy").is_file():
                raise
        return vectors, offsets
