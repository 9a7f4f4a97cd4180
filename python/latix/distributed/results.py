"""What sharded calls return and raise: flagged hit lists, columnar results, build
reports, shard errors; and the exact top-k merge of the shards' own lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from latix.collection import (
    BatchResults,
    Hit,
)
from latix.errors import (
    LatixError,
)

if TYPE_CHECKING:
    pass


class ShardUnavailableError(LatixError, OSError):
    """A shard actor could not answer (it died and did not come back within the retries).

    Attributes:
        shards: the shard numbers that did not answer.
        http_status: 503, the status :mod:`latix.serve` answers it with (the service is
            unavailable, not the request wrong).
    """

    http_status = 503

    def __init__(self, message: str, shards: Sequence[int]) -> None:
        super().__init__(message)
        self.shards = list(shards)


class ShardWriteError(LatixError):
    """A write failed on some shards after others had committed their part.

    Attributes:
        committed: shard numbers whose part of the write is durable.
        failed: shard number -> the exception it raised.
    """

    def __init__(self, message: str, committed: Sequence[int], failed: Mapping[int, Exception]):
        super().__init__(message)
        self.committed = list(committed)
        self.failed = dict(failed)


class ShardedHits(list[Hit]):
    """The hits of one query (a ``list`` of :class:`~latix.collection.Hit`, best first), with
    whether every shard answered.

    Attributes:
        partial: True when some shards did not answer (only with ``allow_partial=True``).
        missing_shards: the shard numbers that did not answer.
        retried_shards: the shard numbers whose call was sent again after their actor died.
    """

    partial: bool = False
    missing_shards: list[int]
    retried_shards: list[int]

    def __init__(
        self,
        hits: Iterable[Hit] = (),
        missing: Sequence[int] = (),
        retried: Sequence[int] = (),
    ) -> None:
        super().__init__(hits)
        self.missing_shards = sorted(missing)
        self.retried_shards = sorted(retried)
        self.partial = bool(self.missing_shards)


@dataclass
class ShardedBatchResults(BatchResults):
    """:class:`~latix.collection.BatchResults` of a sharded search, with whether every shard
    answered (``partial``, ``missing_shards``, ``retried_shards``: see :class:`ShardedHits`)."""

    partial: bool = False
    missing_shards: list[int] = field(default_factory=list)
    retried_shards: list[int] = field(default_factory=list)


@dataclass
class BuildReport:
    """What :func:`build` / :meth:`ShardedCollection.add_corpus` did.

    Attributes:
        n_indexed: records added in this run.
        n_already: records skipped because their shard already held their id (resume).
        n_duplicate: records skipped because their id appeared earlier in the corpus.
        n_empty: records skipped because their text is empty.
        n_metadata_dropped: metadata values dropped (unsupported type or mistyped).
        n_retried: batches sent again after their shard actor died.
        per_shard: records added per shard.
        seconds: wall time.
    """

    n_indexed: int = 0
    n_already: int = 0
    n_duplicate: int = 0
    n_empty: int = 0
    n_metadata_dropped: int = 0
    n_retried: int = 0
    per_shard: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _empty(n_q: int, k: int, include: Sequence[str]) -> ShardedBatchResults:
    return ShardedBatchResults(
        ids=np.full((n_q, k), "", dtype=object),
        scores=np.full((n_q, k), -np.inf, dtype=np.float32),
        texts=[[] for _ in range(n_q)] if "text" in include else None,
        metadata=[[] for _ in range(n_q)] if "metadata" in include else None,
        passages=np.full((n_q, k), -1, dtype=np.int32),
        spans=[[] for _ in range(n_q)],
        late_scores=np.full((n_q, k), np.nan, dtype=np.float32),
        keyword_scores=np.full((n_q, k), np.nan, dtype=np.float32),
    )


def _merge(
    parts: list[BatchResults], n_q: int, k: int, include: Sequence[str]
) -> ShardedBatchResults:
    """Exact top-``k`` merge of the shards' own top-``k`` lists (best score first; equal scores
    in shard order, then in the shard's own order).

    The shards' score rows are concatenated (shard-major) and one stable argsort of the
    negated scores gives that order for every query at once; only the ``k`` winners are then
    gathered (no Python object or sort key per candidate). One shard's answer is already its
    own merge and is passed on as it is."""
    if len(parts) == 1:
        p = parts[0]
        return ShardedBatchResults(
            ids=p.ids,
            scores=p.scores,
            texts=p.texts if "text" in include else None,
            metadata=p.metadata if "metadata" in include else None,
            passages=p.passages,
            spans=p.spans,
            late_scores=p.late_scores,
            keyword_scores=p.keyword_scores,
        )
    out = _empty(n_q, k, include)
    if not parts or n_q == 0:
        return out
    width = parts[0].scores.shape[1]  # every shard answers (n_q, k)
    real = np.concatenate([p.ids != "" for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    scores[~real] = -np.inf
    # Stable: ties keep the concatenation order (shard, then position in the shard's list).
    order = np.argsort(-scores, axis=1, kind="stable")
    n_hits = np.minimum(real.sum(axis=1), k).tolist()
    for q in range(n_q):
        n = n_hits[q]
        src = [(parts[o // width], o % width) for o in order[q, :n].tolist()]
        out.ids[q, :n] = [p.ids[q, j] for p, j in src]
        out.scores[q, :n] = [p.scores[q, j] for p, j in src]
        out.passages[q, :n] = [p.passages[q, j] for p, j in src]
        out.late_scores[q, :n] = [p.late_scores[q, j] for p, j in src]
        out.keyword_scores[q, :n] = [p.keyword_scores[q, j] for p, j in src]
        if out.texts is not None:
            out.texts[q] = [p.texts[q][j] for p, j in src if p.texts is not None]
        if out.metadata is not None:
            out.metadata[q] = [p.metadata[q][j] for p, j in src if p.metadata is not None]
        out.spans[q] = [p.spans[q][j] for p, j in src]
    return out
