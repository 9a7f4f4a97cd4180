"""Collections: records (id, text, metadata) in, hits with text and metadata out.

A :class:`Collection` is latix's main API. It keeps, in one directory::

    COLLECTION/collection.json   model, dimension, passage settings (written first as "creating",
                                 rewritten "ready" when the collection is complete)
    COLLECTION/vectors/          a latix.Index of token vectors, compressed by default
    COLLECTION/records.sqlite    texts, metadata and the FTS5 keyword index (latix.docstore)

**Searching.** ``mode="late"`` is MaxSim over the token vectors (candidate generation from codes
on a compressed index); ``mode="keyword"`` is BM25 from SQLite FTS5 (porter stemming);
``mode="hybrid"`` fuses both lists (normalised score combination or reciprocal-rank fusion; the
default was chosen on SciFact's train queries, see :data:`HYBRID_DEFAULTS`). A metadata filter
(``where=``, the language of :mod:`latix.filters`) applies to all three: keyword search joins it
in SQL; late search turns it into one bitmap of allowed documents per index segment, evaluated
with numpy over a columnar mirror of the segment's metadata (segments are immutable, so a
mirror never goes stale) and honoured inside candidate generation. When a filter leaves at most
:data:`EXHAUSTIVE_BELOW` documents, they are scored exhaustively instead (every token's codes),
which is both faster and exact at code level for small sets.

**Long documents.** Texts longer than the model's window are split at add time into overlapping
token windows (:class:`Passages`), each indexed as one document; a search returns each record
once, scored by its best passage, which is the passage shown and explained.

**Writes and durability.** :meth:`Collection.add`, :meth:`Collection.upsert` and
:meth:`Collection.delete` are durable when they return. Inside ``with collection.batch():`` they
are staged and committed together when the block exits (rolled back if it raises), which is
much faster for many small writes. One commit covers the index and the database: rows are
written first, tagged with the index generation that will publish them, and the index commit
decides (see :mod:`latix.docstore`); after a crash, the next writer brings the database back to
the last published generation.

**Async.** :meth:`Collection.asearch`, :meth:`~Collection.asearch_batch`, :meth:`~Collection.aget`,
:meth:`~Collection.aget_many`, :meth:`~Collection.acount`, :meth:`~Collection.astats` and the
writes :meth:`~Collection.aadd`, :meth:`~Collection.aupsert`, :meth:`~Collection.adelete` are
coroutines that run the blocking call in a thread (reads in the event loop's default executor or
the one given to :meth:`~Collection.set_executor`; writes in the handle's one writer thread, so
they queue in order and never occupy the readers' threads). The work releases the GIL, so an
``async def`` handler awaiting them does not stall its event loop, and concurrent awaits run on
all cores. Cancelling an awaiting task does not stop a call already running: a write then still
completes (durable when its thread returns).

**Threads and processes.** A handle may be shared by threads: searches, ``get`` and counts run
concurrently (the index and the encoder release the GIL; each thread reads SQLite through its
own connection); writes are serialised, and a batch holds the write lock for its whole block.
One process writes a collection at a time (the index's lock, taken at the first write; another
writer gets :class:`~latix.errors.IndexLockedError`); any number of processes read it, each
search seeing one committed state. After ``fork()`` a handle keeps working for reads in the
child, and refuses writes there (``IndexLockedError``): open the collection again in the child.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import os
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import numpy.typing as npt

from latix import filters as flt
from latix.docstore import DB_FILE, RecordStore, Row
from latix.errors import (
    AlreadyExistsError,
    CorruptedIndexError,
    IndexClosedError,
    IndexLockedError,
    InvalidArgumentError,
    LatixError,
    LatixIOError,
    NotFoundError,
    UnsupportedVersionError,
)
from latix.filters import FieldType
from latix.index import Compression, Index, _codec_bytes_of, _int_arg

if TYPE_CHECKING:
    from latix.corpus import Document
    from latix.encoder import Encoder

__all__ = [
    "Collection",
    "Record",
    "Hit",
    "TokenMatch",
    "BatchResults",
    "AddReport",
    "Passages",
    "PassageEncoder",
    "EncodedText",
    "IndexingReport",
    "index_corpus",
    "explain_hit",
    "HYBRID_DEFAULTS",
    "EXHAUSTIVE_BELOW",
    "PASSAGE_DEPTH_MAX",
]

META_FILE = "collection.json"
INDEX_DIR = "vectors"
_META_VERSION = 2
_CHUNK = 256  # records encoded and staged per step of an add
_MASK_SETS = 64  # (filter, generation) mask sets kept (they share the per-segment masks)

Mode = Literal["late", "keyword", "hybrid"]
CompressionArg = Compression | Literal["auto"] | None
FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float16]

#: Fusion used by ``mode="hybrid"`` unless the call says otherwise: min-max normalised scores
#: of both lists over their top ``depth``, combined as ``alpha * late + (1 - alpha) * keyword``
#: (a record missing from a list gets 0 from it). Chosen on SciFact's 809 *train* queries on
#: the compressed collection `latix index` builds (benches/bench_collection.py --only tune):
#: train nDCG@10 0.7399 at alpha 0.5 / depth 100 (0.7378 at alpha 0.7; late alone 0.7246,
#: BM25 alone 0.7021; reciprocal-rank fusion at best 0.7345, k 10). Depth 400 scored 0.7402:
#: within noise, for a 4x deeper late search.
HYBRID_DEFAULTS: dict[str, Any] = {"fusion": "convex", "alpha": 0.5, "rrf_k": 60, "depth": 100}

#: A filtered late search that allows at most this many live documents scores all of them
#: (centroid interaction over every token, the best refined from codes, then the exact re-rank
#: when vectors are kept) instead of generating candidates from the probed lists. Measured on
#: SciFact + 100k distractors, interleaved with unfiltered searches (benches/bench_collection.py,
#: bench-results/collection.md): exhaustive costs 0.8x / 1.2x / 1.5x an unfiltered search at
#: 105 / 1,052 / 2,103 allowed documents, probing 1.2x / 1.45x / 1.45x, and exhaustive finds
#: more of the exact top 10 at every size up to 3,000 (0.88 vs 0.82 at 1,052).
EXHAUSTIVE_BELOW = 2000

#: A late search first asks the index for ``k`` times the collection's passages per record,
#: capped at this factor; a list that still holds fewer than ``k`` records searches again 4x
#: deeper. SciFact (9,981 passages of 5,183 records, 1.93 per record), 809 *train* queries on
#: the compressed collection: asking 10 / 16 / 20 passages leaves 83 % / 6.9 % / 0.9 % of the
#: searches short of 10 records (1.83 index searches per search when the first depth was k),
#: and on a compressed index the refined list grows only from 16 to 20 documents.
PASSAGE_DEPTH_MAX = 4.0

#: Decoded record rows a handle keeps for the hits of later searches (by text and metadata
#: bytes, about): a row never changes once written, so a hit already shown is not read from
#: SQLite (nor its metadata and spans JSON decoded) again. SciFact's 5,183 records take ~9 MB.
ROW_CACHE_BYTES = 32 << 20


# ----------------------------------------------------------------------------------------------
# public value types


@dataclass(frozen=True)
class Record:
    """One record of a collection.

    Attributes:
        id: the record's id (non-empty str).
        text: its text.
        metadata: field -> value (str, int, float, bool or list of str).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"id", "text", "metadata"}``."""
        return {"id": self.id, "text": self.text, "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class TokenMatch:
    """Why a hit scored: for one query token, the document token that won its maximum.

    Attributes:
        query_token: the query token's text (or its vocabulary string for special tokens).
        text: the matched document text (the whole word around the winning sub-word token), or
            "" when the winner was a special token.
        start: character offset of the match in the record's text (-1 for a special token).
        end: end offset (exclusive).
        score: the similarity; the sum over query tokens is the late-interaction score.
    """

    query_token: str
    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: the record id.
        score: the mode's score (MaxSim for ``late``, BM25 for ``keyword``, the fused score for
            ``hybrid``), higher is better.
        text: the record's text.
        metadata: its metadata.
        passage: number of the best passage (0 for a record indexed as one passage).
        span: ``(start, end)`` character span of that passage in ``text``, or None when the
            record is one passage.
        late_score: the MaxSim score of the best passage (None when not computed or not among
            the late list's candidates).
        keyword_score: the BM25 score (None when not computed or not a keyword match).
        explanation: with ``explain=True``: per query token, the document token that won its
            maximum, best first; None otherwise (or when the collection has no model).
    """

    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    passage: int = 0
    span: tuple[int, int] | None = None
    late_score: float | None = None
    keyword_score: float | None = None
    explanation: list[TokenMatch] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (the explanation as a list of dicts)."""
        d = asdict(self)
        d["span"] = list(self.span) if self.span is not None else None
        return d


@dataclass
class BatchResults:
    """Columnar results of :meth:`Collection.search_batch`: row ``i`` answers query ``i``.

    Attributes:
        ids: ``(n_queries, k)`` object array of record ids, ``""`` where a query has fewer hits.
        scores: ``(n_queries, k)`` float32, best first, ``-inf`` padding.
        texts: per query, the texts of its hits (None when not requested).
        metadata: per query, the metadata dicts of its hits (None when not requested).
        passages: ``(n_queries, k)`` int32 best passage per hit (-1 padding).
        spans: per query, the best passage's span per hit (None for one-passage records).
        late_scores: ``(n_queries, k)`` float32 MaxSim score per hit (NaN when unknown).
        keyword_scores: ``(n_queries, k)`` float32 BM25 score per hit (NaN when unknown).
    """

    ids: npt.NDArray[np.object_]
    scores: npt.NDArray[np.float32]
    texts: list[list[str]] | None
    metadata: list[list[dict[str, Any]]] | None
    passages: npt.NDArray[np.int32]
    spans: list[list[tuple[int, int] | None]]
    late_scores: npt.NDArray[np.float32]
    keyword_scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def n_hits(self, i: int) -> int:
        """Number of real hits of query ``i``."""
        return int(np.count_nonzero(self.ids[i] != ""))

    def _columns(
        self, i: int
    ) -> tuple[int, list[Any], list[Any], list[Any], list[Any], list[Any], Any, Any, Any]:
        """Query ``i``'s real hits as whole Python lists (one ``tolist`` per column, not one
        numpy scalar per hit): n, ids, scores, passages, late and keyword scores, then texts and
        metadata (``None`` when not fetched) and spans as stored."""
        n = self.n_hits(i)
        return (
            n,
            self.ids[i, :n].tolist(),
            self.scores[i, :n].tolist(),
            self.passages[i, :n].tolist(),
            self.late_scores[i, :n].tolist(),
            self.keyword_scores[i, :n].tolist(),
            self.texts[i] if self.texts is not None else None,
            self.metadata[i] if self.metadata is not None else None,
            self.spans[i],
        )

    def hits(self, i: int) -> list[Hit]:
        """Query ``i``'s results as :class:`Hit` objects."""
        n, ids, scores, passages, late, kw, texts, metas, spans = self._columns(i)
        return [
            Hit(
                id=str(ids[j]),
                score=scores[j],
                text=texts[j] if texts is not None else "",
                metadata=metas[j] if metas is not None else {},
                passage=passages[j],
                span=spans[j],
                late_score=None if late[j] != late[j] else late[j],  # NaN: unknown
                keyword_score=None if kw[j] != kw[j] else kw[j],
            )
            for j in range(n)
        ]

    def hit_dicts(self, i: int) -> list[dict[str, Any]]:
        """Query ``i``'s results as JSON-ready dicts, equal to ``[h.to_dict() for h in
        self.hits(i)]`` but built directly from the columns (what a server answers: no
        :class:`Hit` objects, no ``dataclasses.asdict`` deep copy; about a third of the time)."""
        n, ids, scores, passages, late, kw, texts, metas, spans = self._columns(i)
        return [
            {
                "id": str(ids[j]),
                "score": scores[j],
                "text": texts[j] if texts is not None else "",
                "metadata": _copy_meta(metas[j]) if metas is not None else {},
                "passage": passages[j],
                "span": _span_list(spans[j]),
                "late_score": None if late[j] != late[j] else late[j],  # NaN: unknown
                "keyword_score": None if kw[j] != kw[j] else kw[j],
                "explanation": None,
            }
            for j in range(n)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"ids": [[...]], "scores": [[...]], ...}`` without the padding (each
        query's lists hold its real hits only)."""
        n = [self.n_hits(i) for i in range(len(self))]
        d: dict[str, Any] = {
            "ids": [[str(x) for x in self.ids[i, : n[i]]] for i in range(len(self))],
            "scores": [self.scores[i, : n[i]].tolist() for i in range(len(self))],
            "passages": [self.passages[i, : n[i]].tolist() for i in range(len(self))],
        }
        if self.texts is not None:
            d["texts"] = self.texts
        if self.metadata is not None:
            d["metadata"] = self.metadata
        return d


@dataclass
class AddReport:
    """What one :meth:`Collection.add` / :meth:`Collection.upsert` call did.

    Attributes:
        n_added: records written (new ids).
        n_replaced: records that replaced an existing version (upsert).
        n_empty: records skipped because their text is empty or blank (and no vectors given).
        n_passages: passages indexed (more than records when long texts were split).
        n_tokens: token vectors indexed.
        n_truncated: passages the model still cut at its maximum length.
        skipped: ids of the first skipped records.
    """

    n_added: int = 0
    n_replaced: int = 0
    n_empty: int = 0
    n_passages: int = 0
    n_tokens: int = 0
    n_truncated: int = 0
    skipped: list[str] = field(default_factory=list)

    def merge(self, other: AddReport) -> None:
        """Adds ``other``'s counts to this report."""
        self.n_added += other.n_added
        self.n_replaced += other.n_replaced
        self.n_empty += other.n_empty
        self.n_passages += other.n_passages
        self.n_tokens += other.n_tokens
        self.n_truncated += other.n_truncated
        self.skipped.extend(other.skipped[: max(0, 20 - len(self.skipped))])


@dataclass(frozen=True)
class Passages:
    """How long texts are split at add time.

    A text whose tokens exceed the model's window is cut into windows of ``max_tokens`` tokens
    that overlap by ``overlap`` tokens (window starts and ends are moved to word boundaries);
    each window is indexed as a passage of the record. Queries score a record by its best
    passage.

    Attributes:
        max_tokens: tokens per passage; None: the model's document window (its maximum length
            minus special tokens and markers; 254 for the default model).
        overlap: tokens shared by consecutive passages (default 64, a quarter of the default
            window): a sentence cut by one window boundary is whole in the neighbouring passage.
        max_passages: passages kept per record at most (the tail of longer texts is dropped and
            counted as truncated).
    """

    max_tokens: int | None = None
    overlap: int = 64
    max_passages: int = 4096

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 8
        ):
            raise InvalidArgumentError(f"max_tokens must be an int >= 8, got {self.max_tokens!r}")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise InvalidArgumentError(f"overlap must be an int >= 0, got {self.overlap!r}")
        if self.max_tokens is not None and self.overlap >= self.max_tokens:
            raise InvalidArgumentError(
                f"overlap ({self.overlap}) must be smaller than max_tokens ({self.max_tokens})"
            )
        if not isinstance(self.max_passages, int) or self.max_passages < 1:
            raise InvalidArgumentError(f"max_passages must be >= 1, got {self.max_passages!r}")


# ----------------------------------------------------------------------------------------------
# helpers


def _span_list(sp: tuple[int, int] | None) -> list[int] | None:
    return None if sp is None else list(sp)


def _copy_meta(m: dict[str, Any]) -> dict[str, Any]:
    # What dataclasses.asdict makes of a metadata dict (values are scalars or lists of str).
    return {k: list(v) if isinstance(v, list) else v for k, v in m.items()}


def _write_json_atomic(path: Path, obj: object) -> None:
    """``obj`` as JSON at ``path``: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _passage_key(rk: int, p: int) -> str:
    return str(rk) if p == 0 else f"{rk}.{p}"


def _parse_keys(keys: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Index ids ``"<rk>"`` / ``"<rk>.<p>"`` -> (rk, p) arrays."""
    rk = np.empty(len(keys), dtype=np.int64)
    pn = np.zeros(len(keys), dtype=np.int32)
    for i, s in enumerate(keys):
        a, dot, b = s.partition(".")
        try:
            rk[i] = int(a)
            if dot:
                pn[i] = int(b)
        except ValueError:
            raise CorruptedIndexError(
                f"index document {s!r} is not a collection key (<record>[.<passage>])"
            ) from None
    return rk, pn


def _pack(bits: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint64]:
    """(n,) bool -> ceil(n / 64) uint64 words, bit d % 64 of word d // 64 = bits[d]."""
    n = bits.shape[0]
    words = (n + 63) // 64
    b = np.packbits(bits, bitorder="little")
    buf = np.zeros(words * 8, dtype=np.uint8)
    buf[: b.shape[0]] = b
    return buf.view("<u8").astype(np.uint64, copy=False)


def _check_id(x: object, where: str) -> str:
    if not isinstance(x, str):
        raise InvalidArgumentError(f"{where}: id must be a str, got {type(x).__name__}")
    if not x:
        raise InvalidArgumentError(f"{where}: id is empty")
    try:
        b = x.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{where}: id {x!r:.40} is not valid Unicode") from None
    if len(b) > 65535:
        raise InvalidArgumentError(f"{where}: id is {len(b)} bytes long, at most 65535")
    return x


def _check_text(text: str, where: str) -> str:
    """``text`` if SQLite and the tokenizer can take it (valid Unicode), else
    InvalidArgumentError (a lone surrogate has no UTF-8 form: it used to escape as the
    tokenizer's TypeError or sqlite3's UnicodeEncodeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(
            f"{where} is not valid Unicode (lone surrogate at character {e.start})"
        ) from None
    return text


def _as_record(r: object, i: int) -> tuple[str, str, Mapping[str, Any] | None]:
    """``(id, text, metadata)`` of one input record of any accepted form."""
    where = f"records[{i}]"
    rid: object
    text: object
    meta: object
    if isinstance(r, Record):
        rid, text, meta = r.id, r.text, r.metadata
    elif isinstance(r, Mapping):
        rid = r.get("id", r.get("_id"))
        text = r.get("text", "")
        meta = r.get("metadata")
        unknown = set(r) - {"id", "_id", "text", "metadata"}
        if unknown:
            raise InvalidArgumentError(
                f"{where}: unknown keys {sorted(unknown)}; a record is "
                "{'id': ..., 'text': ..., 'metadata': {...}}"
            )
    elif isinstance(r, tuple) and len(r) in (2, 3):
        rid, text = r[0], r[1]
        meta = r[2] if len(r) == 3 else None
    elif hasattr(r, "id") and hasattr(r, "text"):  # latix.corpus.Document and look-alikes
        rid, text, meta = r.id, r.text, getattr(r, "metadata", None)
    else:
        raise InvalidArgumentError(
            f"{where} must be a latix.Record, a dict with 'id' and 'text', or an (id, text[, "
            f"metadata]) tuple; got {type(r).__name__}"
        )
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{where}: text must be a str, got {type(text).__name__}")
    _check_text(text, f"{where}: text")
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidArgumentError(f"{where}: metadata must be a dict, got {type(meta).__name__}")
    return _check_id(rid, where), text, meta


def _check_spans(sp: object, n_passages: int, text: str, rid: str) -> list[tuple[int, int]] | None:
    """One record's ``spans`` entry of an add with vectors, checked against its vectors and
    text: None, or ``n_passages`` increasing-start ``(start, end)`` spans inside the text."""
    if sp is None:
        return None
    if isinstance(sp, str | bytes) or not isinstance(sp, Sequence) or len(sp) != n_passages:
        raise InvalidArgumentError(
            f"record {rid!r}: spans must be None or one (start, end) per passage "
            f"({n_passages} vector arrays)"
        )
    out: list[tuple[int, int]] = []
    for s in sp:
        if (
            not isinstance(s, Sequence)
            or len(s) != 2
            or not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in s)
        ):
            raise InvalidArgumentError(f"record {rid!r}: a span must be (start, end) ints")
        a, b = int(s[0]), int(s[1])
        if not 0 <= a < b <= len(text) or (out and a < out[-1][0]):
            raise InvalidArgumentError(
                f"record {rid!r}: span ({a}, {b}) is not a passage of its {len(text)}-character "
                "text in order"
            )
        out.append((a, b))
    return out


def _chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def explain_hit(
    query: npt.NDArray[np.float32], doc: npt.NDArray[np.float32], doc_spans: npt.NDArray[np.int64]
) -> dict[int, tuple[int, int, float]]:
    """For each query token, the document token that won its maximum (late interaction's own
    explanation).

    Args:
        query: (n_q, dim) float32 query vectors.
        doc: (n_d, dim) float32 document vectors.
        doc_spans: (n_d, 2) int64 character spans of the document vectors (-1 for none).

    Returns:
        query token index -> (start, end, similarity) of its best document token; the sum of the
        similarities is the MaxSim score (up to the index's storage precision).
    """
    sims = query @ doc.T
    best = sims.argmax(axis=1)
    return {
        q: (int(doc_spans[j, 0]), int(doc_spans[j, 1]), float(sims[q, j]))
        for q, j in enumerate(best.tolist())
    }


def _word(text: str, a: int, b: int) -> tuple[int, int]:
    """Widen a sub-word token's span to its whole word (``##se`` of "parser" marks "parser")."""
    while a > 0 and text[a - 1].isalnum():
        a -= 1
    while b < len(text) and text[b].isalnum():
        b += 1
    return a, b


_EDGE = 16  # tokens a window edge may move to reach a word boundary


class _Splitter:
    """Cuts texts into overlapping token windows with the model's own tokenizer (offsets into
    the original text; no model run)."""

    def __init__(self, encoder: Encoder, cfg: Passages) -> None:
        from latix._optional import require

        Tokenizer = require(
            "model", "tokenizers", purpose="splitting texts into passages"
        ).Tokenizer
        tok = Tokenizer.from_file(str(encoder.tokenizer_path))
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        c = encoder.config
        n_special = len(tok.encode("a", add_special_tokens=True).ids) - len(
            tok.encode("a", add_special_tokens=False).ids
        )
        overhead = n_special + (1 if c.marker_mode == "token" else 0)
        if c.marker_mode == "prefix" and c.document_marker:
            overhead += len(tok.encode(str(c.document_marker), add_special_tokens=False).ids)
        native = max(8, c.document_max_length - overhead)
        self.window = min(cfg.max_tokens or native, native)
        self.overlap = min(cfg.overlap, self.window // 2)
        self.max_passages = cfg.max_passages

    def split(self, texts: Sequence[str]) -> list[tuple[list[tuple[int, int]] | None, bool]]:
        """Per text: (passage spans, or None when it fits one window; whether passages were
        dropped beyond ``max_passages``)."""
        out: list[tuple[list[tuple[int, int]] | None, bool]] = []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        w, step = self.window, self.window - self.overlap
        for e in encs:
            offs = e.offsets
            n = len(offs)
            if n <= w:
                out.append((None, False))
                continue
            spans: list[tuple[int, int]] = []
            s = 0
            while True:
                end = min(s + w, n)
                # Window edges on word boundaries: never start or end inside a word.
                # (Bounded: text without spaces, e.g. CJK or a long URL, has no boundaries.)
                a = s
                while a > 0 and offs[a][0] == offs[a - 1][1] and a > s - _EDGE:
                    a -= 1
                b = end
                while b < n and b > end - _EDGE and offs[b][0] == offs[b - 1][1]:
                    b -= 1
                spans.append((offs[a][0], offs[b - 1][1]))
                if end >= n or len(spans) == self.max_passages:
                    break
                s += step
            out.append((spans, end < n))
        return out


@dataclass(frozen=True)
class EncodedText:
    """One text as a collection's text add stores it (:class:`PassageEncoder`).

    Attributes:
        vectors: one ``(n_tokens, dim)`` float32 array per passage.
        spans: ``(start, end)`` character span of each passage in the text, or None when the
            text is one passage.
    """

    vectors: list[npt.NDArray[np.float32]]
    spans: list[tuple[int, int]] | None


class PassageEncoder:
    """Encodes texts exactly as :meth:`Collection.add` does for a text add: each text split
    into passages (:class:`Passages`, with the model's own tokenizer), every passage encoded,
    all passages of one call given to the encoder together.

    For encoding outside the writing process (e.g. on Ray Data workers): pass the results to
    ``Collection.add(records, vectors=[e.vectors ...], spans=[e.spans ...])``, which stores the
    rows the text add of the same records in one call stores.

    Args:
        encoder: the collection's model.
        passages: the collection's passage settings (:attr:`Collection.passages`); None: every
            text is one passage.
    """

    def __init__(self, encoder: Encoder, passages: Passages | None = Passages()) -> None:
        self.encoder = encoder
        self._splitter = None if passages is None else _Splitter(encoder, passages)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """The passages' vectors and spans of each text, in order."""
        return _encode_texts(self.encoder, self._splitter, texts)[0]


def _encode_texts(
    enc: Encoder, splitter: _Splitter | None, texts: Sequence[str]
) -> tuple[list[EncodedText], int]:
    """What a text add stores for ``texts`` (one encoder call), and the number of passages cut
    short (dropped beyond ``max_passages``, or cut at the model's length): the one
    implementation behind :meth:`Collection.add` and :class:`PassageEncoder`."""
    cuts = splitter.split(texts) if splitter is not None else [(None, False)] * len(texts)
    ptexts: list[str] = []
    owner: list[int] = []
    for j, (text, (sp, _)) in enumerate(zip(texts, cuts, strict=True)):
        for a, b in sp or [(0, len(text))]:
            ptexts.append(text[a:b] if sp else text)
            owner.append(j)
    vecs: list[list[Any]] = [[] for _ in texts]
    n_cut = sum(1 for _, dropped in cuts if dropped)
    if ptexts:
        packed = enc.encode_documents_packed(ptexts)
        n_cut += packed.n_truncated
        for j, v in zip(owner, packed.to_list(), strict=True):
            vecs[j].append(v)
    return [EncodedText(vecs[j], cuts[j][0]) for j in range(len(texts))], n_cut


@dataclass
class _Mirror:
    """Columnar metadata of one index segment: the record key of every document number, and
    one :class:`~latix.filters.Column` per field, built on first use."""

    file: str
    rks: npt.NDArray[np.int64]
    cols: dict[str, flt.Column] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# the collection


class Collection:
    """A collection directory: records (id, text, metadata) searched by late interaction,
    keywords or both, with metadata filters.

    Create one with :meth:`create`, open one with :meth:`open`. See the module documentation
    for the layout, the commit protocol and the thread/process model.

    Example::

        import latix

        col = latix.Collection.create("papers.latix")          # default model, compressed
        col.add([
            {"id": "p1", "text": "Metformin lowers blood glucose.", "metadata": {"year": 2021}},
            {"id": "p2", "text": "Glaciers are retreating.", "metadata": {"year": 2019}},
        ])                                                       # durable when it returns
        for hit in col.search("diabetes drug", k=5, where={"year": {"$gte": 2020}}):
            print(hit.id, hit.score, hit.metadata)
        with col.batch():                                        # many writes, one commit
            for r in records:
                col.add([r])
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        index: Index,
        store: RecordStore,
        encoder: Encoder | None,
        n_threads: int | None,
    ) -> None:
        self._path = path
        self._meta = meta
        self._index = index  # read handle: searches, segments
        self._store = store
        self._encoder = encoder
        self._n_threads = n_threads
        self._enc_lock = threading.Lock()
        self._splitter: _Splitter | None = None
        self._writer: Index | None = None
        self._pending: int | None = None  # generation the staged changes will publish
        self._dirty = False  # something is staged for it
        self._depth = 0
        self._wlock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._cache_lock = threading.Lock()
        self._mirrors: dict[str, _Mirror] = {}
        self._masks: OrderedDict[tuple[str, str], npt.NDArray[np.uint64]] = OrderedDict()
        self._mask_bytes = 0
        # (filter key, generation) -> the masks of every segment of that generation
        self._mask_sets: OrderedDict[tuple[str, int], dict[str, npt.NDArray[np.uint64]]] = (
            OrderedDict()
        )
        self._mask_set_bytes = 0
        self._ppr: tuple[int, float] | None = None  # (generation, passages per record)
        self._row_cache: OrderedDict[int, tuple[Row, int]] = OrderedDict()  # rk -> (row, bytes)
        self._row_cache_bytes = 0
        self._executor: Executor | None = None  # reads of the a* methods (None: loop default)
        self._apool: ThreadPoolExecutor | None = None  # the writer thread of aadd/aupsert/adelete
        _LIVE.add(self)

    # ------------------------------------------------------------------------------ lifecycle

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a collection (complete or interrupted while being created)."""
        return (Path(path) / META_FILE).is_file()

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = "default",
        encoder: Encoder | None = None,
        dim: int | None = None,
        compression: CompressionArg = "auto",
        dtype: Literal["float16", "float32"] = "float16",
        schema: Mapping[str, FieldType] | None = None,
        passages: Passages | None = Passages(),
        n_threads: int | None = None,
        codec: bytes | str | os.PathLike[str] | Index | Collection | Any = None,
    ) -> Collection:
        """Creates an empty collection directory.

        Args:
            path: the directory (must not exist, or be empty; a directory left by an interrupted
                create is recognised and created again).
            model: how to load the model that encodes texts: ``"default"`` (all-MiniLM-L6-v2
                as a token encoder, from PyPI), a latix model directory or a hub id. None: no
                model; records then come with pre-computed vectors (any multi-vector model of
                any dimension; give ``dim``).
            encoder: an already loaded :class:`~latix.encoder.Encoder` for ``model`` (saves
                loading it again; its fingerprint is recorded and checked on open).
            dim: vector dimension; required without a model, else checked against it.
            compression: ``"auto"`` (default): a compressed index (``latix.Compression()``:
                about 30 bytes per 384-d token) that searches exactly until it holds 65,536
                tokens, then trains its codec; None: a plain index of full vectors, searched
                exactly; or a :class:`~latix.index.Compression` of your own, handed to the
                index unchanged (every setting it has, a storage tier included). A tier,
                ``Compression(fidelity="balanced")``, raises the recall@10 of filtered and
                unfiltered searches alike (SciFact + 100k distractors: 0.844 -> 0.888
                unfiltered, 0.754 -> 0.807 with a filter keeping 0.1 %) at about 2.7x the
                bytes (bench-results/collection.md).
            dtype: storage precision of full vectors (``"float16"`` or ``"float32"``).
            schema: metadata field types to declare up front (field -> ``"str"``, ``"int"``,
                ``"float"``, ``"bool"`` or ``"list[str]"``); other fields get their type from
                the first record that uses them.
            passages: how long texts are split (None: not split, cut at the model's window).
            n_threads: encoder threads (default: onnxruntime's choice).
            codec: a compressed collection only: start with this trained codec instead of
                training one (what :meth:`latix.Index.create` takes as ``codec``: codec file
                bytes from :meth:`latix.Index.codec_bytes` or :func:`latix.train_codec`, a codec
                file path, a compressed Index, or another Collection, whose index's codec is
                used). Its first commit already encodes with it, whatever the size. Use it when
                the first documents added do not represent the rest: the codec otherwise
                trains once, on a sample of the first commit that holds 65,536 tokens, and
                later documents of another kind are encoded with it (SciFact + 100k
                distractors added SciFact first: squared reconstruction error 0.32 on
                distractor tokens against 0.14 on SciFact's; a codec trained on a uniform
                sample of both lifts the codes-only recall@10 of a 105-document filter from
                0.745 to 0.847, train queries, benches/codec_drift.py).

        Returns:
            The open collection (not yet holding the write lock).

        Raises:
            AlreadyExistsError: ``path`` holds a collection or other files.
            InvalidArgumentError: bad ``dim``, ``compression``, ``schema`` or a ``dim`` that
                differs from the model's; a ``codec`` with ``compression=None``, or one that
                does not fit (dimension, code bytes, centroids; see ``Index.create``).
            CorruptedIndexError: ``codec`` is not a valid codec file.
            ModelError: the model cannot be loaded.
        """
        p = Path(os.fspath(path))
        if compression == "auto":
            comp: Compression | None = Compression()
        elif compression is None or isinstance(compression, Compression):
            comp = compression
        else:
            raise InvalidArgumentError(
                f'compression must be "auto", None or a latix.Compression, got {compression!r}'
            )
        if passages is not None and not isinstance(passages, Passages):
            raise InvalidArgumentError(
                f"passages must be a latix.Passages or None, got {type(passages).__name__}"
            )
        if dtype not in ("float16", "float32"):
            raise InvalidArgumentError(f'dtype must be "float16" or "float32", got {dtype!r}')
        if schema is not None and not isinstance(schema, Mapping):
            raise InvalidArgumentError(
                f"schema must be a dict of field -> type, got {type(schema).__name__}"
            )
        if isinstance(codec, Collection):
            codec = codec.index
        if codec is not None and comp is None:
            raise InvalidArgumentError(
                "a codec is given to a compressed collection only (compression is None)"
            )
        # Read (and checked by the core) before the directory is touched.
        codec_b = None if codec is None else _codec_bytes_of(codec)
        decl: dict[str, FieldType] = {}
        for name, t in (schema or {}).items():
            if not isinstance(name, str) or not flt.NAME_RE.fullmatch(name):
                raise InvalidArgumentError(f"schema: bad field name {name!r}")
            if t not in flt.FIELD_TYPES:
                raise InvalidArgumentError(
                    f"schema[{name!r}] = {t!r}; types are {', '.join(flt.FIELD_TYPES)}"
                )
            decl[name] = t
        spec: str | None = None
        if model is not None or encoder is not None:
            spec = "default" if model is None else os.fspath(model)
            if spec != "default" and Path(spec).is_dir():
                spec = str(Path(spec).resolve())
            if encoder is None:
                from latix.encoder import Encoder

                encoder = Encoder.load(spec, n_threads=n_threads)
            if dim is not None and dim != encoder.dim:
                raise InvalidArgumentError(f"dim={dim} but the model gives {encoder.dim}-d vectors")
            dim = encoder.dim
        if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidArgumentError(
                f"dim must be a positive int (required without a model), got {dim!r}"
            )
        existed = p.exists()
        try:
            cls._prepare_dir(p)
        except OSError as e:
            if isinstance(e, LatixIOError | AlreadyExistsError):
                raise
            raise LatixIOError(f"cannot create the collection directory {p}: {e}") from None
        meta: dict[str, Any] = {
            "version": _META_VERSION,
            "state": "creating",
            "model": spec,
            "model_fingerprint": encoder.fingerprint if encoder is not None else None,
            "model_name": encoder.config.name if encoder is not None else None,
            "dim": dim,
            "compression": "auto"
            if compression == "auto"
            else ("none" if comp is None else "custom"),
            "passages": None if passages is None else asdict(passages),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # collection.json first, marked "creating": an interrupted create leaves a directory
        # that is recognisably latix's, which the next create (or `latix index`) starts over.
        store: RecordStore | None = None
        try:
            _write_json_atomic(p / META_FILE, meta)
            Index.create(
                p / INDEX_DIR, dim=dim, dtype=dtype, compression=comp, codec=codec_b
            ).close()
            store = RecordStore(p / DB_FILE)
            if decl:
                with store.writing() as con:
                    RecordStore.add_fields(con, decl, 0)
            meta["state"] = "ready"
            _write_json_atomic(p / META_FILE, meta)
            index = Index.open(p / INDEX_DIR)
        except Exception as e:
            # A create that fails (a setting the index refuses, a full disk) leaves nothing.
            if store is not None:
                store.close()
            try:
                _remove_collection_files(p)
                if not existed:
                    p.rmdir()
            except OSError:
                pass  # what is left is marked "creating": the next create starts it over
            if isinstance(e, OSError) and not isinstance(e, LatixError):
                raise LatixIOError(f"cannot create the collection at {p}: {e}") from None
            raise
        return cls(p, meta, index, store, encoder, n_threads)

    @staticmethod
    def _prepare_dir(p: Path) -> None:
        """Makes ``p`` an empty directory, removing what an interrupted create left there."""
        if p.exists():
            if not p.is_dir():
                raise AlreadyExistsError(f"{p} exists and is not a directory")
            names = {q.name for q in p.iterdir()}
            if META_FILE in names:
                meta = _read_meta(p)
                if meta.get("state") != "creating":
                    raise AlreadyExistsError(f"a collection already exists at {p}")
                _remove_collection_files(p)
            elif names - {META_FILE + ".tmp"}:
                raise AlreadyExistsError(
                    f"{p} is a non-empty directory that is not a latix collection"
                )
            else:
                _remove_collection_files(p)
        p.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        model: str | os.PathLike[str] | None = None,
        n_threads: int | None = None,
    ) -> Collection:
        """Opens an existing collection (for reading; the first write takes the write lock).

        Args:
            path: the collection directory.
            encoder: a loaded encoder to use (must be the collection's model).
            model: load this model instead of the recorded one (same fingerprint required; e.g.
                the same model directory moved elsewhere).
            n_threads: encoder threads.

        Raises:
            NotFoundError: ``path`` is not a collection, or its creation was interrupted.
            UnsupportedVersionError: written by an older or newer latix.
            CorruptedIndexError: a file is damaged.
            InvalidArgumentError: ``encoder``/``model`` is not the collection's model.
        """
        p = Path(os.fspath(path))
        meta = _read_meta(p)
        if meta.get("state") != "ready":
            raise NotFoundError(
                f"{p}: the collection's creation was interrupted; create it again "
                "(latix index resumes by starting over)"
            )
        index = Index.open(p / INDEX_DIR)
        store = RecordStore(p / DB_FILE)
        col = cls(p, meta, index, store, None, n_threads)
        if encoder is not None or model is not None:
            col._encoder = col._load_encoder(encoder, model)
        return col

    def close(self) -> None:
        """Closes the handle: releases the write lock, the index maps and the database
        connections. Idempotent. Raises InvalidArgumentError inside an open batch (exit the
        batch first: closing would drop its staged changes)."""
        pool = self._apool
        if pool is not None:  # queued async writes finish first (they need the write lock)
            self._apool = None
            pool.shutdown(wait=True)
        with self._wlock:
            if self._closed:
                return
            if self._depth > 0:
                raise InvalidArgumentError(
                    "close() inside `with collection.batch()`: exit the batch first"
                )
            self._closed = True
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._index.close()
            self._store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"Collection({str(self._path)!r}, closed)"
        return f"Collection({str(self._path)!r}, model={self._meta.get('model')!r})"

    # ------------------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The collection directory."""
        return self._path

    @property
    def dim(self) -> int:
        """Dimension of the token vectors."""
        return int(self._meta["dim"])

    @property
    def model(self) -> str | None:
        """How the model is loaded (``"default"``, a directory or hub id), or None."""
        m = self._meta.get("model")
        return None if m is None else str(m)

    @property
    def passages(self) -> Passages | None:
        """How long texts are split at add time (None: every text is one passage)."""
        cfg = self._meta.get("passages")
        return None if cfg is None else Passages(**cfg)

    @property
    def index(self) -> Index:
        """The vector index (read handle). Its document ids are record keys, not record ids."""
        self._check_open()
        return self._index

    @property
    def schema(self) -> dict[str, FieldType]:
        """Metadata field name -> type."""
        self._check_open()
        return self._store.fields()

    @property
    def encoder(self) -> Encoder:
        """The collection's model (loaded on first use).

        Raises:
            InvalidArgumentError: the collection was created without a model.
        """
        return self._get_encoder()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            raise IndexLockedError(
                f"this handle on {self._path} was opened by process {self._pid}; a forked child "
                "may read through it but not write: open the collection again in the child"
            )

    def _reset_locks_after_fork(self) -> None:
        # Locks another thread held at fork() stay held forever in the child: start fresh.
        self._enc_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._wlock = threading.RLock()
        self._apool = None  # the parent's writer thread does not exist here

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"the collection at {self._path} is closed")

    def _load_encoder(
        self, encoder: Encoder | None, model: str | os.PathLike[str] | None
    ) -> Encoder:
        spec = self._meta.get("model")
        if encoder is None:
            if model is None and spec is None:
                raise InvalidArgumentError(
                    f"{self._path} was created without a model: pass query/record vectors"
                )
            from latix.encoder import Encoder

            encoder = Encoder.load(
                model if model is not None else str(spec), n_threads=self._n_threads
            )
        fp = self._meta.get("model_fingerprint")
        if fp is not None and encoder.fingerprint != fp:
            raise InvalidArgumentError(
                f"model {model or spec} is not the model {self._path} was built with "
                "(fingerprints differ)"
            )
        if encoder.dim != self.dim:
            raise InvalidArgumentError(
                f"the encoder gives {encoder.dim}-d vectors, the collection holds {self.dim}-d"
            )
        return encoder

    def _get_encoder(self) -> Encoder:
        self._check_open()
        if self._encoder is None:
            with self._enc_lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder(None, None)
        return self._encoder

    def _get_splitter(self) -> _Splitter | None:
        cfg = self._meta.get("passages")
        if cfg is None:
            return None
        if self._splitter is None:
            enc = self._get_encoder()
            with self._enc_lock:
                if self._splitter is None:
                    self._splitter = _Splitter(enc, Passages(**cfg))
        return self._splitter

    # ------------------------------------------------------------------------------ writing

    def _writer_locked(self) -> tuple[Index, int]:
        """The writer index handle (taking the write lock and recovering the database on first
        use) and the generation staged changes will publish. Caller holds ``_wlock``."""
        self._check_open()
        self._check_fork()
        if self._writer is None:
            w = Index.open(self._path / INDEX_DIR, "w")
            try:
                self._store.recover(w.generation)
            except BaseException:
                w.close()
                raise
            self._writer = w
        if self._pending is None:
            self._pending = self._writer.generation + 1
        return self._writer, self._pending

    @contextmanager
    def batch(self) -> Iterator[Collection]:
        """Groups writes into one commit: ``add``/``upsert``/``delete`` calls inside the block
        are staged and become durable and visible together when it exits; if the block raises,
        they are rolled back. The thread inside the block holds the write lock (other threads'
        writes wait; searches do not). A batch inside a batch joins it.

        Yields:
            This collection.
        """
        self._check_fork()
        with self._wlock:
            self._check_open()
            self._depth += 1
            try:
                yield self
            except BaseException:
                if self._depth == 1:
                    self._rollback_locked()
                raise
            else:
                if self._depth == 1:
                    self._commit_locked()
            finally:
                self._depth -= 1

    def recover(self) -> None:
        """Takes the write lock now and brings the database in line with the index's last
        commit (what the first write does anyway): rows a crashed writer staged for a
        generation the index never published are removed, deletions it never published are
        undone, and rows whose deletion was published are removed.

        Raises:
            IndexLockedError: another process or handle is the writer.
        """
        self._check_fork()
        with self._wlock:
            self._writer_locked()
            if not self._dirty:
                self._pending = None

    def commit(self) -> None:
        """Makes staged changes durable and visible now (inside a batch: what it staged so far;
        the batch goes on). Outside a batch there is nothing staged: a no-op."""
        with self._wlock:
            self._check_open()
            self._commit_locked()

    def rollback(self) -> None:
        """Drops the changes staged since the last commit (inside a batch)."""
        with self._wlock:
            self._check_open()
            self._rollback_locked()

    def _commit_locked(self) -> None:
        w, gen = self._writer, self._pending
        if w is None or gen is None:
            return
        if not self._dirty:
            self._pending = None
            return
        try:
            w.commit()
        except BaseException:
            if w.generation >= gen:  # published despite the error (e.g. the last fsync)
                self._pending = None
                self._dirty = False
                self._finish(gen)
            # else the index kept what it staged, and the rows stay tagged for `gen`: a later
            # commit() publishes both, a rollback() drops both.
            raise
        published = w.generation
        self._pending = None
        self._dirty = False
        if published >= gen:
            self._finish(gen)
        else:  # nothing reached the index: nothing may stay tagged for that generation
            self._store.rollback(published)

    def _finish(self, gen: int) -> None:
        try:
            self._store.finish(gen)
        except Exception:  # noqa: BLE001 - the commit happened; leftovers are invisible
            pass  # and removed by the next commit or recovery

    def _rollback_locked(self) -> None:
        w, gen = self._writer, self._pending
        if w is None or gen is None:
            return
        self._pending = None
        self._dirty = False
        committed = w.generation
        # The index has no "unstage": closing its writer handle drops what it staged.
        self._writer = None
        w.close()
        self._store.rollback(committed)

    def add(
        self,
        records: Iterable[Any],
        *,
        vectors: Sequence[FloatArray | Sequence[FloatArray]] | None = None,
        spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
        progress: Callable[[int, int], None] | bool | None = None,
    ) -> AddReport:
        """Adds records; durable when it returns (unless inside :meth:`batch`).

        Texts are encoded with the collection's model (long texts split into passages), or
        ``vectors`` are stored as given. Records with an empty or blank text (and no vectors)
        are skipped and counted, not fatal. On any error nothing of this call is kept.

        Args:
            records: :class:`Record` objects, dicts ``{"id", "text", "metadata"}``, or
                ``(id, text[, metadata])`` tuples; any iterable (streamed in chunks, so a
                generator of millions of records is fine).
            vectors: pre-computed token vectors, one per record: a ``(n_tokens, dim)``
                float32/float16 array, or a list of them (one per passage). ``records`` must
                then be a sequence of the same length.
            spans: with ``vectors`` only: per record, the ``(start, end)`` character span in
                its text of each passage's vectors (one span per array), or None for a record
                that is one passage; what :class:`PassageEncoder` returns with the vectors, so
                that vectors encoded elsewhere are stored as a text add stores them (hits then
                carry the passage's span, and explanations use that passage). Without it,
                records added with vectors have no spans.
            progress: ``True`` for a progress bar on stderr, or a callable receiving
                ``(records done, total or -1)`` after each chunk.

        Returns:
            An :class:`AddReport`.

        Raises:
            AlreadyExistsError: an id is already in the collection (use :meth:`upsert`).
            InvalidArgumentError: a malformed record, a duplicate id within the call, bad
                vectors (shape, dtype, NaN), spans that do not match the vectors or the text.
            MetadataError: a bad metadata field or a value of the wrong type for its field.
            IndexLockedError: another process (or handle) is writing the collection.
        """
        return self._write(records, vectors, False, progress, spans)

    def upsert(
        self,
        records: Iterable[Any],
        *,
        vectors: Sequence[FloatArray | Sequence[FloatArray]] | None = None,
        spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
        progress: Callable[[int, int], None] | bool | None = None,
    ) -> AddReport:
        """Adds records, replacing those whose id exists (text, metadata and vectors).

        Same arguments, result and errors as :meth:`add` (no AlreadyExistsError).
        """
        return self._write(records, vectors, True, progress, spans)

    def _write(
        self,
        records: Iterable[Any],
        vectors: Sequence[Any] | None,
        replace: bool,
        progress: Callable[[int, int], None] | bool | None,
        spans: Sequence[Any] | None = None,
    ) -> AddReport:
        if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
            raise InvalidArgumentError(
                f"records must be a list (or iterable) of records, got {type(records).__name__}"
            )
        total = len(records) if isinstance(records, Sequence) else -1
        if vectors is not None:
            if not isinstance(records, Sequence) or not isinstance(vectors, Sequence):
                raise InvalidArgumentError("with vectors, records and vectors must be sequences")
            if len(vectors) != len(records):
                raise InvalidArgumentError(
                    f"{len(records)} records but {len(vectors)} vectors; they must match"
                )
        if spans is not None:
            if vectors is None:
                raise InvalidArgumentError("spans are given with vectors only")
            if not isinstance(spans, Sequence) or len(spans) != len(vectors):
                raise InvalidArgumentError("spans must be a sequence with one entry per record")
        bar = None
        cb: Callable[[int, int], None] | None = None
        if progress is True:
            import sys

            from latix._optional import require

            tqdm = require("model", "tqdm", purpose="the progress bar").tqdm
            bar = tqdm(total=total if total >= 0 else None, unit="rec", file=sys.stderr)
            cb = None
        elif callable(progress):
            cb = progress
        rep = AddReport()
        try:
            with self.batch():
                w, gen = self._writer_locked()
                seen: set[str] = set()
                old: list[tuple[int, int]] = []  # (rk, n_passages) of replaced versions
                undo = _Undo()
                done = 0
                pairs: Iterable[tuple[Any, Any]] = (
                    zip(
                        records,
                        zip(
                            vectors,
                            spans if spans is not None else [None] * len(vectors),
                            strict=True,
                        ),
                        strict=True,
                    )
                    if vectors is not None
                    else ((r, None) for r in records)
                )
                try:
                    for chunk in _chunks(enumerate(pairs), _CHUNK):
                        self._stage(
                            chunk, vectors is not None, w, gen, replace, seen, old, rep, undo
                        )
                        done += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        if cb is not None:
                            cb(done, total)
                    if old:
                        # Replaced versions leave the index last: the one step of a call that
                        # could not be undone is taken when nothing else can fail.
                        w.delete([_passage_key(rk, p) for rk, n in old for p in range(n)])
                except BaseException:
                    if self._depth > 1:  # inside the caller's batch: keep its other changes
                        self._undo(undo, w, gen)
                    raise  # else the batch of this call rolls everything back
        finally:
            if bar is not None:
                bar.close()
        return rep

    def _stage(
        self,
        chunk: list[tuple[int, tuple[Any, Any]]],
        with_vectors: bool,
        w: Index,
        gen: int,
        replace: bool,
        seen: set[str],
        old: list[tuple[int, int]],
        rep: AddReport,
        undo: _Undo,
    ) -> None:
        """Encodes and stages one chunk of a write call (caller holds the write lock)."""
        schema = self._store.fields()
        schema.update(undo.fields)
        items: list[tuple[str, str, str | None, Any]] = []
        new_fields: dict[str, FieldType] = {}
        for i, (rec, vec) in chunk:
            rid, text, meta = _as_record(rec, i)
            if rid in seen:
                raise InvalidArgumentError(f"records[{i}]: id {rid!r} appears twice in the call")
            seen.add(rid)
            if not with_vectors and not text.strip():
                rep.n_empty += 1
                if len(rep.skipped) < 20:
                    rep.skipped.append(rid)
                continue
            if text and "\x00" in text:
                raise InvalidArgumentError(f"records[{i}]: text contains a NUL character")
            stored, new = flt.normalize_metadata(meta, {**schema, **new_fields}, f"records[{i}]")
            new_fields.update(new)
            mj = json.dumps(stored, ensure_ascii=False, allow_nan=False) if stored else None
            items.append((rid, text, mj, vec))
        if not items:
            return
        # Passages and their vectors (the slow part: the model runs here, outside SQLite).
        spans_of: list[list[tuple[int, int]] | None] = []
        vecs_of: list[list[Any]] = []
        if with_vectors:
            for rid, text, _, (vec, sp) in items:
                vs = list(vec) if isinstance(vec, list | tuple) else [vec]
                if not vs:
                    raise InvalidArgumentError(f"record {rid!r}: an empty list of vectors")
                spans_of.append(_check_spans(sp, len(vs), text, rid))
                vecs_of.append(vs)
        else:
            enc = self._get_encoder()
            encoded, n_cut = _encode_texts(enc, self._get_splitter(), [t for _, t, _, _ in items])
            rep.n_truncated += n_cut
            spans_of = [e.spans for e in encoded]
            vecs_of = [e.vectors for e in encoded]
        ids = [rid for rid, _, _, _ in items]
        keys: list[str] = []
        flat: list[Any] = []
        try:
            with self._store.writing() as con:
                head = RecordStore.head(con, ids)
                if head and not replace:
                    some = ", ".join(repr(x) for x in list(head)[:5])
                    raise AlreadyExistsError(
                        f"ids already in the collection (use upsert to replace): {some}"
                        + (f" ... ({len(head)} in all)" if len(head) > 5 else "")
                    )
                rk0 = RecordStore.next_key(con)
                rows = []
                for j, (rid, text, mj, _) in enumerate(items):
                    rk = rk0 + j
                    vs = vecs_of[j]
                    sp = spans_of[j]
                    n_tok = sum(int(v.shape[0]) if hasattr(v, "shape") else 0 for v in vs)
                    rows.append((rk, rid, text, mj, json.dumps(sp) if sp else None, len(vs), n_tok))
                    for p, v in enumerate(vs):
                        keys.append(_passage_key(rk, p))
                        flat.append(v)
                    rep.n_passages += len(vs)
                    rep.n_tokens += n_tok
                if head:
                    RecordStore.mark_deleted(con, [rk for rk, _ in head.values()], gen)
                RecordStore.insert(con, rows, gen)
                if new_fields:
                    RecordStore.add_fields(con, new_fields, gen)
                self._dirty = True
                w.add(keys, flat)  # inside the SQLite transaction: a refused add rolls it back
                undo.keys.extend(keys)
        except BaseException:
            if keys and len(undo.keys) >= len(keys) and undo.keys[-len(keys) :] == keys:
                # The index staged them but SQLite did not commit: unstage them.
                del undo.keys[-len(keys) :]
                try:
                    w.delete(keys)
                except Exception:  # noqa: BLE001 - reported by the original error; the batch
                    undo.broken = True  # is then rolled back whole
            raise
        undo.rks.extend(range(rk0, rk0 + len(items)))
        undo.fields.update(new_fields)
        undo.marked.extend(rk for rk, _ in head.values())
        old.extend(head.values())
        rep.n_replaced += len(head)
        rep.n_added += len(items) - len(head)

    def _undo(self, undo: _Undo, w: Index, gen: int) -> None:
        """Removes what one failed write call staged (the rest of a batch stays staged)."""
        try:
            if undo.broken:
                raise InvalidArgumentError("cannot undo partially")
            if undo.keys:
                w.delete(undo.keys)
            with self._store.writing() as con:
                for i in range(0, len(undo.rks), 900):
                    chunk = undo.rks[i : i + 900]
                    marks = ",".join("?" * len(chunk))
                    con.execute(
                        f"DELETE FROM records WHERE gen = ? AND rk IN ({marks})", [gen, *chunk]
                    )
                for i in range(0, len(undo.marked), 900):
                    chunk = undo.marked[i : i + 900]
                    con.execute(
                        f"UPDATE records SET dgen = NULL WHERE dgen = ? AND rk IN "
                        f"({','.join('?' * len(chunk))})",
                        [gen, *chunk],
                    )
                for name in undo.fields:
                    con.execute("DELETE FROM fields WHERE name = ? AND gen = ?", (name, gen))
        except BaseException:
            # Could not take back only this call: drop everything staged since the last commit.
            self._rollback_locked()

    def delete(
        self, ids: Iterable[str] | None = None, *, where: Mapping[str, Any] | None = None
    ) -> int:
        """Deletes records by id or by filter; durable when it returns (unless in a batch).

        Args:
            ids: record ids (each must exist).
            where: a filter (see :mod:`latix.filters`): deletes every record it matches.

        Returns:
            The number of records deleted.

        Raises:
            NotFoundError: some ``ids`` are not in the collection (nothing is deleted).
            FilterError: a malformed filter.
            InvalidArgumentError: neither or both of ``ids`` and ``where``.
        """
        if (ids is None) == (where is None):
            raise InvalidArgumentError("pass ids or where (exactly one)")
        with self.batch():
            w, gen = self._writer_locked()
            if where is not None:
                node = flt.parse(where, self._store.fields())
                with self._store.writing() as con:
                    sql, params = flt.to_sql(node)
                    rows = con.execute(
                        f"SELECT id, rk, n_passages FROM records WHERE dgen IS NULL AND {sql}",
                        params,
                    ).fetchall()
                    found = {i: (int(rk), int(n)) for i, rk, n in rows}
            else:
                if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
                    raise InvalidArgumentError(
                        f"ids must be a list of str, got {type(ids).__name__}"
                    )
                assert ids is not None
                want = [_check_id(x, f"ids[{i}]") for i, x in enumerate(ids)]
                if len(set(want)) != len(want):
                    raise InvalidArgumentError("ids contains duplicates")
                with self._store.writing() as con:
                    found = RecordStore.head(con, want)
                missing = [x for x in want if x not in found]
                if missing:
                    some = ", ".join(repr(x) for x in missing[:5])
                    raise NotFoundError(
                        f"ids not in the collection (nothing deleted): {some}"
                        + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
                    )
            if not found:
                return 0
            keys = [_passage_key(rk, p) for rk, n in found.values() for p in range(n)]
            with self._store.writing() as con:
                self._dirty = True
                RecordStore.mark_deleted(con, [rk for rk, _ in found.values()], gen)
                w.delete(keys)
            return len(found)

    def compact(self, retrain: bool = False) -> None:
        """Rewrites the index into one segment (reclaims deleted documents' space; faster
        searches after many small commits). ``retrain`` retrains a compressed index's codec.
        Commits staged changes first.

        Raises:
            InvalidArgumentError: ``retrain`` is not a bool, or True on a plain (uncompressed)
                collection; checked before anything is committed.
        """
        if not isinstance(retrain, bool):
            raise InvalidArgumentError(f"retrain must be a bool, got {type(retrain).__name__}")
        with self._wlock:
            self._check_open()
            if retrain and self._index.compression is None:
                raise InvalidArgumentError(
                    "retrain applies to compressed collections only (this one stores plain vectors)"
                )
            w, _ = self._writer_locked()
            self._commit_locked()
            self._pending = None
            w.compact(retrain=retrain)

    # ------------------------------------------------------------------------------ reading

    def _generation(self) -> int:
        return self._index.generation

    def __len__(self) -> int:
        """Number of committed records."""
        self._check_open()
        return self._store.count(self._generation())

    def __contains__(self, id: object) -> bool:
        """Whether a committed record has this id."""
        if not isinstance(id, str):
            return False
        self._check_open()
        return bool(self._store.get([id], self._generation()))

    def get(self, id: str) -> Record:
        """The committed record with this id.

        Raises:
            NotFoundError: no such record.
        """
        self._check_open()
        _check_id(id, "get")
        rows = self._store.get([id], self._generation())
        if id not in rows:
            raise NotFoundError(f"no record with id {id!r}")
        r = rows[id]
        return Record(r.id, r.text, r.metadata)

    def get_many(self, ids: Sequence[str]) -> list[Record | None]:
        """The committed records with these ids (None for ids not found), in order.

        Raises:
            InvalidArgumentError: ``ids`` is not a sequence of str (a single str included: it
                would be read as one id per character).
        """
        self._check_open()
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise InvalidArgumentError(f"ids must be a list of str, got {type(ids).__name__}")
        want = [_check_id(x, f"ids[{i}]") for i, x in enumerate(ids)]
        rows = self._store.get(want, self._generation())
        return [
            Record(rows[x].id, rows[x].text, rows[x].metadata) if x in rows else None for x in want
        ]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the committed records (matching ``where``), in insertion order."""
        self._check_open()
        node = None if where is None else flt.parse(where, self._store.fields())
        return self._store.ids(self._generation(), node)

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of committed records (matching ``where``)."""
        self._check_open()
        node = None if where is None else flt.parse(where, self._store.fields())
        return self._store.count(self._generation(), node)

    # ------------------------------------------------------------------------------ search

    @overload
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        explain: bool = False,
        query_vectors: FloatArray | None = None,
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
    ) -> list[Hit]: ...

    @overload
    def search(
        self,
        query: Sequence[str] | None = None,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        explain: bool = False,
        query_vectors: FloatArray | Sequence[FloatArray] | None = None,
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
    ) -> list[Hit] | list[list[Hit]]: ...

    def search(
        self,
        query: str | Sequence[str] | None = None,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        explain: bool = False,
        query_vectors: FloatArray | Sequence[FloatArray] | None = None,
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Searches the committed records.

        Args:
            query: a query text, or a list of them (then one list of hits per query).
            k: hits per query (>= 1).
            where: a metadata filter (:mod:`latix.filters`), applied in every mode.
            mode: ``"late"`` (MaxSim over token vectors), ``"keyword"`` (BM25) or ``"hybrid"``
                (both, fused: :data:`HYBRID_DEFAULTS`).
            explain: attach to each hit the document token that won each query token's maximum
                (needs the model; computed from the best passage's text).
            query_vectors: pre-computed query token vectors instead of encoding ``query``: one
                ``(n_tokens, dim)`` float32 array, or a list (hybrid then also needs ``query``).
            n_threads: search threads.
            fusion: hybrid only: ``"convex"`` or ``"rrf"`` (default from HYBRID_DEFAULTS).
            alpha: hybrid convex fusion: weight of the late score in [0, 1].
            nprobe: (an int >= 1) compressed index: lists probed per query token, at most its
                codec's centroids (see latix.Index.search).
            refine: (an int >= 0) compressed index: candidates re-scored with all their codes.
            rerank: (a bool) compressed index: re-rank exactly from kept vectors, or from a
                fidelity tier's data (True without either is an error).

                The three are depths of the approximate search of a trained compressed index.
                They are checked whatever the collection (an invalid value is always an
                error) and have no effect where search is exact and exhaustive, which is
                already what they approximate: a plain collection (``compression=None``), a
                compressed one before its codec is trained (``"auto"`` below 65,536 tokens;
                ``nprobe``'s upper bound is checked once it is trained), and keyword mode.

        Returns:
            For one query, its hits best first; for a list of queries, a list of such lists.

        Raises:
            InvalidArgumentError: bad arguments (e.g. keyword mode without a query text, a
                ``nprobe``, ``refine`` or ``rerank`` of the wrong type or range).
            FilterError: a malformed filter, unknown field or mistyped value.
        """
        single, qs, qv = _as_query_lists(query, query_vectors)
        res = self.search_batch(
            qs,
            k,
            where=where,
            mode=mode,
            query_vectors=qv,
            n_threads=n_threads,
            fusion=fusion,
            alpha=alpha,
            nprobe=nprobe,
            refine=refine,
            rerank=rerank,
        )
        out = [res.hits(i) for i in range(len(res))]
        if explain:
            if self._meta.get("model") is None and self._encoder is None:
                pass  # no model: explanations stay None
            elif qs is not None:
                out = [self._explain(qs[i], hs) for i, hs in enumerate(out)]
        return out[0] if single else out

    def search_batch(
        self,
        queries: Sequence[str] | None = None,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        query_vectors: Sequence[FloatArray] | None = None,
        include: Sequence[Literal["text", "metadata"]] = ("text", "metadata"),
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
    ) -> BatchResults:
        """:meth:`search` for many queries, answered in columnar form (arrays of ids and scores
        plus lists of texts and metadata), which is what a server returning JSON or a batch job
        wants.

        Args:
            queries: query texts (None when ``query_vectors`` are given for late mode).
            k: hits per query.
            where: a metadata filter.
            mode: ``"late"``, ``"keyword"`` or ``"hybrid"``.
            query_vectors: per query a ``(n_tokens, dim)`` float32 array.
            include: which of ``"text"`` and ``"metadata"`` to fetch for the hits.
            n_threads: search threads.
            fusion: hybrid fusion, ``"convex"`` or ``"rrf"``.
            alpha: hybrid convex weight of the late score.
            nprobe: compressed index option (checked always; see :meth:`search`).
            refine: compressed index option (checked always).
            rerank: compressed index option (checked always).

        Returns:
            A :class:`BatchResults`.

        Raises:
            InvalidArgumentError, FilterError: as :meth:`search`.
        """
        self._check_open()
        k, queries = _check_batch_args(mode, k, queries, query_vectors, include)
        opts = _search_options(nprobe, refine, rerank)
        schema = None if where is None else self._store.fields()
        node = None if where is None or schema is None else flt.parse(where, schema)
        wkey = None if where is None else flt.cache_key(where)
        n_q = len(queries) if queries is not None else len(query_vectors or [])
        hp = _hybrid_params(fusion, alpha)
        lists: list[list[tuple[int, float, int, float, float]]] = []  # (rk, score, p, ls, ks)
        for _attempt in range(5):
            # Generation and live passages from one snapshot (one look at CURRENT, not two).
            gen, n_passages = self._index.generation_and_len()
            late: list[list[tuple[int, float, int]]] | None = None
            kw: list[list[tuple[int, float]]] | None = None
            depth = max(k, int(hp["depth"])) if mode == "hybrid" else k
            if mode in ("late", "hybrid"):
                qv: list[Any]
                if query_vectors is not None:
                    qv = list(query_vectors)
                else:
                    assert queries is not None
                    qv = self._get_encoder().encode_queries_packed(queries).to_list()
                late = self._late(
                    qv, depth, node, wkey, n_threads, opts, gen, n_passages, schema=schema
                )
            if mode in ("keyword", "hybrid"):
                assert queries is not None
                kw = [self._store.keyword(_fts_query(q), depth, gen, node) for q in queries]
            lists = []
            for i in range(n_q):
                if mode == "late":
                    assert late is not None
                    lists.append([(rk, s, p, s, float("nan")) for rk, s, p in late[i]])
                elif mode == "keyword":
                    assert kw is not None
                    lists.append([(rk, s, 0, float("nan"), s) for rk, s in kw[i][:k]])
                else:
                    assert late is not None and kw is not None
                    lists.append(_fuse(late[i], kw[i], k, hp))
            rks = sorted({t[0] for lst in lists for t in lst})
            rows = self._rows(rks) if rks else {}
            if len(rows) == len(rks):
                break
            # A record was deleted (and its row removed) between the search and this read:
            # search again on the newer committed state.
        else:
            lists = [[t for t in lst if t[0] in rows] for lst in lists]
        ids = np.full((n_q, k), "", dtype=object)
        scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        passages = np.full((n_q, k), -1, dtype=np.int32)
        lscores = np.full((n_q, k), np.nan, dtype=np.float32)
        kscores = np.full((n_q, k), np.nan, dtype=np.float32)
        texts: list[list[str]] | None = [] if "text" in include else None
        metas: list[list[dict[str, Any]]] | None = [] if "metadata" in include else None
        spans: list[list[tuple[int, int] | None]] = []
        for i, lst in enumerate(lists):
            top = lst[:k]
            n = len(top)
            rs = [rows[t[0]] for t in top]
            if n:  # one row assignment per column (not one numpy element write per value)
                ids[i, :n] = [r.id for r in rs]
                scores[i, :n] = [t[1] for t in top]
                passages[i, :n] = [t[2] for t in top]
                lscores[i, :n] = [t[3] for t in top]
                kscores[i, :n] = [t[4] for t in top]
            if texts is not None:
                texts.append([r.text for r in rs])
            if metas is not None:  # copies: the rows are the handle's cache
                metas.append([_copy_meta(r.metadata) for r in rs])
            spans.append(
                [
                    r.spans[t[2]] if r.spans is not None and t[2] < len(r.spans) else None
                    for r, t in zip(rs, top, strict=True)
                ]
            )
        return BatchResults(ids, scores, texts, metas, passages, spans, lscores, kscores)

    def _rows(self, rks: Sequence[int]) -> dict[int, Row]:
        """Rows of the record keys ``rks`` (those that exist), from the handle's cache of
        decoded rows (:data:`ROW_CACHE_BYTES`), the others in one SQLite read. A row never
        changes once written (each stored version has its own key, never reused), so a cached
        row is the stored one; a row removed since (its record deleted by a later commit)
        still answers the search of the generation that held it. Callers must not modify the
        rows' metadata dicts (they are shared with later searches)."""
        out: dict[int, Row] = {}
        missing: list[int] = []
        with self._cache_lock:
            cache = self._row_cache
            for rk in rks:
                hit = cache.get(rk)
                if hit is None:
                    missing.append(rk)
                else:
                    cache.move_to_end(rk)
                    out[rk] = hit[0]
        if missing:
            got = self._store.by_key(missing)
            out.update(got)
            with self._cache_lock:
                for rk, r in got.items():
                    if rk in self._row_cache:
                        continue
                    nb = 200 + 2 * len(r.text) + 64 * len(r.metadata)  # about (str and dict)
                    self._row_cache[rk] = (r, nb)
                    self._row_cache_bytes += nb
                while self._row_cache and self._row_cache_bytes > ROW_CACHE_BYTES:
                    _, (_, nb) = self._row_cache.popitem(last=False)
                    self._row_cache_bytes -= nb
        return out

    def _late(
        self,
        qv: list[Any],
        k: int,
        node: flt.Node | None,
        wkey: str | None,
        n_threads: int | None,
        opts: dict[str, Any],
        gen: int,
        n_docs: int,
        *,
        schema: dict[str, FieldType] | None = None,
    ) -> list[list[tuple[int, float, int]]]:
        """Late-interaction top ``k`` records per query: (rk, best passage score, passage).

        The index returns passages; a record's passages can fill its top ``k``, so the first
        depth asks for ``k`` times the collection's passages per record (at most
        :data:`PASSAGE_DEPTH_MAX` times ``k``) and only a list that still holds fewer than ``k``
        records searches again, 4x deeper. ``gen`` and ``n_docs`` (live passages) are those
        of one snapshot (:meth:`Index.generation_and_len`).
        """
        kp = self._first_depth(k, n_docs, gen)
        while True:
            kk = max(1, min(kp, max(n_docs, 1)))
            scores, ids = self._index_search(qv, kk, node, wkey, n_threads, opts, gen, schema)
            out: list[list[tuple[int, float, int]]] = []
            short = False
            for i in range(len(qv)):
                best: dict[int, tuple[float, int]] = {}
                full = True
                for s, key in zip(scores[i].tolist(), ids[i].tolist(), strict=True):
                    if key == "":
                        full = False
                        break
                    a, dot, b = key.partition(".")
                    rk = int(a)
                    if rk not in best:  # hits come best first: the first is the best passage
                        best[rk] = (float(s), int(b) if dot else 0)
                lst = [(rk, s, p) for rk, (s, p) in best.items()]
                if len(lst) < k and full and kk < n_docs:
                    short = True  # passages of the same records filled the list: look deeper
                out.append(lst[:k])
            if not short:
                return out
            kp = kk * 4

    def _first_depth(self, k: int, n_passages: int, gen: int) -> int:
        """Passages to ask the index for to fill ``k`` records at the first try (see
        :meth:`_late`): ``ceil(k * passages per record)``, from the committed totals of
        generation ``gen`` (cached: one SQLite count per generation)."""
        cached = self._ppr
        if cached is None or cached[0] != gen:
            n_rec = self._store.count(gen)
            ppr = n_passages / n_rec if n_rec > 0 else 1.0
            cached = (gen, min(max(ppr, 1.0), PASSAGE_DEPTH_MAX))
            self._ppr = cached
        return max(k, math.ceil(k * cached[1]))

    def _index_search(
        self,
        qv: list[Any],
        k: int,
        node: flt.Node | None,
        wkey: str | None,
        n_threads: int | None,
        opts: dict[str, Any],
        gen: int,
        schema: dict[str, FieldType] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]]:
        ix = self._index
        # Checked by _search_options; on a plain index exact search is what they approximate
        # (the index itself refuses them), so they have nothing left to do.
        kw = opts if ix.compression is not None else {}
        if node is None:
            return ix.search(qv, k=k, n_threads=n_threads, **kw)
        # The masks of a filter at one generation are those of its segments: kept per
        # (filter, generation), a repeated filter skips listing segments and per-segment lookups.
        set_key = None if wkey is None else (wkey, gen)
        for attempt in range(20):
            masks = None
            if set_key is not None and attempt == 0:
                with self._cache_lock:
                    masks = self._mask_sets.get(set_key)
                    if masks is not None:
                        self._mask_sets.move_to_end(set_key)
            if masks is None:
                try:
                    masks = self._build_masks(node, wkey, schema if attempt == 0 else None)
                except NotFoundError:  # a compaction replaced a segment while masks were built
                    continue
                if set_key is not None and attempt == 0:
                    nb = sum(m.nbytes for m in masks.values())
                    with self._cache_lock:
                        old = self._mask_sets.pop(set_key, None)
                        if old is not None:
                            self._mask_set_bytes -= sum(m.nbytes for m in old.values())
                        self._mask_sets[set_key] = masks
                        self._mask_set_bytes += nb
                        # Bounded like the per-segment masks (whose arrays they mostly share).
                        while self._mask_sets and (
                            len(self._mask_sets) > _MASK_SETS or self._mask_set_bytes > 64 << 20
                        ):
                            _, gone = self._mask_sets.popitem(last=False)
                            self._mask_set_bytes -= sum(m.nbytes for m in gone.values())
            res = ix.search_masked(
                qv, masks, k=k, n_threads=n_threads, exhaustive_below=EXHAUSTIVE_BELOW, **kw
            )
            if res is not None:
                return res
        raise LatixConcurrencyError(
            "the index changed 20 times during one filtered search; try again"
        )

    # ------------------------------------------------------------------------------ async

    def set_executor(self, executor: Executor | None) -> None:
        """Chooses the executor the async reads (:meth:`asearch` and friends) run in.

        Args:
            executor: e.g. a ``ThreadPoolExecutor`` sized to the cores; None (the default): the
                running event loop's default executor.
        """
        self._executor = executor

    async def _in_thread(self, write: bool, fn: Callable[..., Any], /, *a: Any, **kw: Any) -> Any:
        self._check_open()
        loop = asyncio.get_running_loop()
        ex: Executor | None = self._executor
        if write:
            with self._cache_lock:
                if self._apool is None:
                    self._apool = ThreadPoolExecutor(1, thread_name_prefix="latix-writer")
                ex = self._apool
        return await loop.run_in_executor(ex, functools.partial(fn, *a, **kw))

    async def asearch(
        self,
        query: str | Sequence[str] | None = None,
        k: int = 10,
        **options: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """:meth:`search` as a coroutine: runs in a thread (see :meth:`set_executor`), so the
        event loop keeps serving while the GIL-free encoding and search run.

        Args:
            query: a query text or a list of them.
            k: hits per query.
            **options: the keyword arguments of :meth:`search` (``where``, ``mode``, ...).

        Returns:
            What :meth:`search` returns.
        """
        res: list[Hit] | list[list[Hit]] = await self._in_thread(
            False, self.search, query, k, **options
        )
        return res

    async def asearch_batch(
        self, queries: Sequence[str] | None = None, k: int = 10, **options: Any
    ) -> BatchResults:
        """:meth:`search_batch` as a coroutine (in a thread, like :meth:`asearch`)."""
        res: BatchResults = await self._in_thread(False, self.search_batch, queries, k, **options)
        return res

    async def aget(self, id: str) -> Record:
        """:meth:`get` as a coroutine."""
        res: Record = await self._in_thread(False, self.get, id)
        return res

    async def aget_many(self, ids: Sequence[str]) -> list[Record | None]:
        """:meth:`get_many` as a coroutine."""
        res: list[Record | None] = await self._in_thread(False, self.get_many, ids)
        return res

    async def acount(self, where: Mapping[str, Any] | None = None) -> int:
        """:meth:`count` as a coroutine."""
        res: int = await self._in_thread(False, self.count, where)
        return res

    async def astats(self) -> dict[str, Any]:
        """:meth:`stats` as a coroutine."""
        res: dict[str, Any] = await self._in_thread(False, self.stats)
        return res

    async def aadd(self, records: Iterable[Any], **options: Any) -> AddReport:
        """:meth:`add` as a coroutine, run by the handle's one writer thread (async writes
        queue in call order); durable when it returns. ``options``: those of :meth:`add`."""
        res: AddReport = await self._in_thread(True, self.add, records, **options)
        return res

    async def aupsert(self, records: Iterable[Any], **options: Any) -> AddReport:
        """:meth:`upsert` as a coroutine, run by the writer thread like :meth:`aadd`."""
        res: AddReport = await self._in_thread(True, self.upsert, records, **options)
        return res

    async def adelete(
        self, ids: Iterable[str] | None = None, *, where: Mapping[str, Any] | None = None
    ) -> int:
        """:meth:`delete` as a coroutine, run by the writer thread like :meth:`aadd`."""
        res: int = await self._in_thread(True, self.delete, ids, where=where)
        return res

    # ------------------------------------------------------------------------------ masks

    def _mirror(self, file: str) -> _Mirror:
        with self._cache_lock:
            m = self._mirrors.get(file)
        if m is None:
            keys = self._index.segment_ids(file)
            rks, _ = _parse_keys(keys)
            m = _Mirror(file, rks)
            with self._cache_lock:
                self._mirrors[file] = m
        return m

    def _column(self, m: _Mirror, name: str, ftype: FieldType) -> flt.Column:
        col = m.cols.get(name)
        if col is not None and col.ftype == ftype:
            return col
        raw: list[Any]
        if m.rks.shape[0] == 0:
            raw = []
        else:
            rows = self._store.column(name, ftype, int(m.rks.min()), int(m.rks.max()))
            if rows:
                rk = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                order = np.argsort(rk, kind="stable")
                rk = rk[order]
                vals = [rows[i][1] for i in order.tolist()]
                pos = np.searchsorted(rk, m.rks)
                pos_c = np.minimum(pos, len(rk) - 1)
                found = rk[pos_c] == m.rks
                raw = [
                    vals[j] if ok else None
                    for j, ok in zip(pos_c.tolist(), found.tolist(), strict=True)
                ]
            else:
                raw = [None] * int(m.rks.shape[0])
        col = flt.Column.build(ftype, raw)
        with self._cache_lock:
            m.cols[name] = col
        return col

    def _build_masks(
        self, node: flt.Node, wkey: str | None, schema: dict[str, FieldType] | None = None
    ) -> dict[str, npt.NDArray[np.uint64]]:
        if schema is None:
            schema = self._store.fields()
        out: dict[str, npt.NDArray[np.uint64]] = {}
        names = flt.field_names(node)
        live: set[str] = set()
        for file, n_docs, _ in self._index.segments():
            live.add(file)
            ck = (wkey or "", file)
            with self._cache_lock:
                mask = self._masks.get(ck) if wkey is not None else None
            if mask is None:
                m = self._mirror(file)
                cols = {f: self._column(m, f, schema[f]) for f in names if f in schema}
                mask = _pack(flt.evaluate(node, cols, n_docs))
                if wkey is not None:
                    with self._cache_lock:
                        self._masks[ck] = mask
                        self._mask_bytes += mask.nbytes
                        while self._mask_bytes > 64 << 20 and self._masks:
                            _, old = self._masks.popitem(last=False)
                            self._mask_bytes -= old.nbytes
            else:
                with self._cache_lock:
                    self._masks.move_to_end(ck)
            out[file] = mask
        with self._cache_lock:  # mirrors of segments compaction removed
            for f in [f for f in self._mirrors if f not in live]:
                del self._mirrors[f]
        return out

    # ------------------------------------------------------------------------------ explain

    def _explain(self, query: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        enc = self._get_encoder()
        qenc, qspans = enc.encode_with_spans([query], "query")
        qv = qenc[0]
        qtoks = enc.tokens(query, "query")
        qtext = [
            query[a:b] if a >= 0 else t
            for (a, b), t in zip(qspans[0].tolist(), qtoks, strict=False)
        ]
        ptexts = []
        offs = []
        for h in hits:
            a, b = h.span if h.span is not None else (0, len(h.text))
            ptexts.append(h.text[a:b] if h.text else " ")
            offs.append(a)
        denc, dspans = enc.encode_with_spans([t if t.strip() else "." for t in ptexts], "document")
        out = []
        for i, h in enumerate(hits):
            m = explain_hit(qv, denc[i], dspans[i])
            matches = []
            for q, (a, b, s) in sorted(m.items(), key=lambda kv: -kv[1][2]):
                if a >= 0:
                    wa, wb = _word(h.text, a + offs[i], b + offs[i])
                    matches.append(TokenMatch(qtext[q], h.text[wa:wb], wa, wb, s))
                else:
                    matches.append(TokenMatch(qtext[q], "", -1, -1, s))
            out.append(dataclasses.replace(h, explanation=matches))
        return out

    # ------------------------------------------------------------------------------ upkeep

    def stats(self) -> dict[str, Any]:
        """Figures of the committed state: records, passages, tokens, bytes, codec, model.

        Returns:
            A JSON-ready dict: ``n_records``, ``n_passages``, ``n_tokens`` (token vectors
            indexed, before pooling), ``bytes_on_disk`` (index + database),
            ``bytes_per_token``, ``index_bytes_per_token``, ``index`` (the index's own stats;
            its ``merge_failures`` and ``merge_error`` are those of this collection's writer),
            ``model``, ``model_name``, ``dim``, ``compression``, ``passages``, ``fields``.
        """
        self._check_open()
        gen = self._generation()
        n, p, t = self._store.totals(gen)
        ist = self._index.stats()
        w = self._writer
        if w is not None and not w.closed:  # merges run, and fail, on the writer's handle
            wst = w.stats()
            ist["merge_failures"], ist["merge_error"] = wst["merge_failures"], wst["merge_error"]
        db = sum(f.stat().st_size for f in self._path.glob(DB_FILE + "*") if f.is_file())
        ib = int(ist["bytes_on_disk"])  # type: ignore[call-overload]
        return {
            "n_records": n,
            "n_passages": p,
            "n_tokens": t,
            "bytes_on_disk": ib + db,
            "bytes_per_token": (ib + db) / t if t else None,
            "index_bytes_per_token": ib / t if t else None,
            "database_bytes": db,
            "index": ist,
            "generation": gen,
            "model": self._meta.get("model"),
            "model_name": self._meta.get("model_name"),
            "dim": self.dim,
            "compression": self._meta.get("compression"),
            "passages": self._meta.get("passages"),
            "fields": self._store.fields(),
        }

    def verify(self) -> None:
        """Checks that the index, the database and the keyword index are intact and describe
        the same records: every checksum of the index, SQLite's integrity check, FTS5's
        integrity check, and that the index holds exactly the passages of the committed records.

        Raises:
            CorruptedIndexError: naming what differs.
        """
        self._check_open()
        self._index.verify()
        self._store.check()
        for _ in range(10):
            gen = self._generation()
            want = {_passage_key(rk, p) for rk, n in self._store.keys(gen) for p in range(n)}
            have = set(self._index.ids())
            if self._generation() == gen:
                break
        if want != have:
            extra = sorted(have - want)[:5]
            missing = sorted(want - have)[:5]
            raise CorruptedIndexError(
                f"{self._path}: the index and the records differ: {len(have - want)} index "
                f"documents without a record (e.g. {extra}), {len(want - have)} record passages "
                f"without vectors (e.g. {missing})"
            )


_LIVE: weakref.WeakSet[Collection] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for c in list(_LIVE):
        c._reset_locks_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LatixConcurrencyError(InvalidArgumentError):
    """A filtered search kept meeting a newer index state (commits faster than it ran)."""


@dataclass
class _Undo:
    """What one write call staged, to take it back if the call fails."""

    keys: list[str] = field(default_factory=list)
    rks: list[int] = field(default_factory=list)
    marked: list[int] = field(default_factory=list)
    fields: dict[str, FieldType] = field(default_factory=dict)
    broken: bool = False


def _read_meta(p: Path) -> dict[str, Any]:
    mp = p / META_FILE
    if not mp.is_file():
        raise NotFoundError(
            f"{p} is not a latix collection (no {META_FILE}); build one with "
            "`latix index CORPUS --out DIR` or latix.Collection.create"
        )
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptedIndexError(f"{mp}: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise CorruptedIndexError(f"{mp}: not a JSON object")
    v = meta.get("version", 0)
    if v != _META_VERSION:
        newer = isinstance(v, int) and v > _META_VERSION
        raise UnsupportedVersionError(
            f"{p} was written by {'a newer' if newer else 'an older'} latix (collection format "
            f"{v}, this latix reads {_META_VERSION}); rebuild it (latix index ... --restart)"
        )
    return meta


def _remove_collection_files(p: Path) -> None:
    """Removes what latix writes in a collection directory (nothing else)."""
    for name in (META_FILE, META_FILE + ".tmp", "docstore.sqlite"):
        try:
            (p / name).unlink()
        except FileNotFoundError:
            pass
    for f in p.glob(DB_FILE + "*"):
        f.unlink()
    if (p / INDEX_DIR).is_dir():
        shutil.rmtree(p / INDEX_DIR)


def remove_collection(path: str | os.PathLike[str]) -> None:
    """Deletes a collection directory (refuses a directory that is not one).

    Raises:
        AlreadyExistsError: ``path`` exists and is not a latix collection.
    """
    p = Path(path)
    if not p.exists():
        return
    if not Collection.exists(p):
        raise AlreadyExistsError(f"refusing to delete {p}: it is not a latix collection")
    _remove_collection_files(p)
    if p.is_dir() and not any(p.iterdir()):
        p.rmdir()


_FTS_WORD = None


def _as_query_lists(
    query: str | Sequence[str] | None,
    query_vectors: FloatArray | Sequence[FloatArray] | None,
) -> tuple[bool, list[str] | None, list[Any] | None]:
    """``search``'s one-or-many arguments as ``search_batch``'s lists: (whether a single query
    was given, the query texts or None, the per-query vectors or None)."""
    one_matrix = isinstance(query_vectors, np.ndarray) and query_vectors.ndim == 2
    single = isinstance(query, str) or (query is None and one_matrix)
    qs = None if query is None else ([query] if isinstance(query, str) else list(query))
    qv: list[Any] | None
    if query_vectors is None:
        qv = None
    elif one_matrix:
        qv = [query_vectors]
    else:
        qv = list(query_vectors)
    return single, qs, qv


def _check_batch_args(
    mode: str,
    k: Any,
    queries: Iterable[str] | None,
    query_vectors: Sequence[Any] | None,
    include: Iterable[str],
) -> tuple[int, list[str] | None]:
    """Checks a batch search's arguments (Collection.search_batch and the sharded handle's).

    Returns:
        ``k`` as an int and ``queries`` as a list (None when not given).

    Raises:
        InvalidArgumentError: a bad mode, ``k``, query text or ``include`` name; texts missing
            where the mode needs them; texts and vectors of different counts.
    """
    if mode not in ("late", "keyword", "hybrid"):
        raise InvalidArgumentError(f'mode must be "late", "keyword" or "hybrid", got {mode!r}')
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 or k > 100_000:
        raise InvalidArgumentError(f"k must be an int in 1..100000, got {k!r}")
    texts: list[str] | None = None
    if queries is not None:
        if isinstance(queries, str):
            raise InvalidArgumentError("queries must be a list of str, got a single str")
        texts = list(queries)
        for i, q in enumerate(texts):
            if not isinstance(q, str) or not q.strip():
                raise InvalidArgumentError(f"queries[{i}] must be a non-empty str")
            _check_text(q, f"queries[{i}]")
    if mode != "late" and texts is None:
        raise InvalidArgumentError(f'mode "{mode}" needs query texts')
    if texts is None and query_vectors is None:
        raise InvalidArgumentError("pass queries (texts) or query_vectors")
    if texts is not None and query_vectors is not None and len(texts) != len(query_vectors):
        raise InvalidArgumentError(f"{len(texts)} queries but {len(query_vectors)} query vectors")
    for name in include:
        if name not in ("text", "metadata"):
            raise InvalidArgumentError(f'include may name "text" and "metadata", not {name!r}')
    return int(k), texts


def _search_options(nprobe: object, refine: object, rerank: object) -> dict[str, Any]:
    """The compressed-search options given (None ones left out), checked whatever the index kind
    and the mode: an invalid value is an error even where the options have no effect (a plain
    collection, a compressed one before training, keyword mode), so that a typo never waits
    for the index to grow to surface. Their upper bounds (``nprobe`` at most the codec's
    centroids) and ``rerank=True`` without kept vectors or a tier are the index's checks.

    Raises:
        InvalidArgumentError: ``nprobe`` not an int >= 1, ``refine`` not an int >= 0, ``rerank``
            not a bool.
    """
    opts: dict[str, Any] = {}
    if nprobe is not None:
        opts["nprobe"] = _int_arg("nprobe", nprobe, 1)
    if refine is not None:
        opts["refine"] = _int_arg("refine", refine, 0)
    if rerank is not None:
        if not isinstance(rerank, bool | np.bool_):
            raise InvalidArgumentError(
                f"rerank must be a bool or None, got {type(rerank).__name__}"
            )
        opts["rerank"] = bool(rerank)
    return opts


def _hybrid_params(fusion: str | None, alpha: float | None) -> dict[str, Any]:
    """:data:`HYBRID_DEFAULTS` with the caller's ``fusion`` / ``alpha`` checked and applied."""
    hp = dict(HYBRID_DEFAULTS)
    if fusion is not None:
        if fusion not in ("convex", "rrf"):
            raise InvalidArgumentError(f'fusion must be "convex" or "rrf", got {fusion!r}')
        hp["fusion"] = fusion
    if alpha is not None:
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float | np.floating | np.integer)
            or not 0.0 <= float(alpha) <= 1.0
        ):
            raise InvalidArgumentError(f"alpha must be a number in [0, 1], got {alpha!r}")
        hp["alpha"] = float(alpha)
    return hp


def _fts_query(text: str) -> str:
    """An FTS5 query matching any word of ``text`` (each word a quoted string: the user's text
    never reaches FTS5's query syntax)."""
    import re

    global _FTS_WORD
    if _FTS_WORD is None:
        _FTS_WORD = re.compile(r"\w+", re.UNICODE)
    words = _FTS_WORD.findall(text)
    if not words:
        return '""'
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(words))


def _fuse(
    late: list[tuple[int, float, int]],
    kw: list[tuple[int, float]],
    k: int,
    hp: Mapping[str, Any],
) -> list[tuple[int, float, int, float, float]]:
    """Hybrid fusion of a late list and a keyword list (both best first).

    ``convex``: each list's scores min-max normalised over the list, combined as
    ``alpha * late + (1 - alpha) * keyword`` (0 for a record absent from a list). ``rrf``:
    ``sum 1 / (rrf_k + rank)`` (Cormack et al., SIGIR 2009).
    """
    lpos = {rk: (s, p) for rk, s, p in late}
    kpos = {rk: s for rk, s in kw}
    cands = list(dict.fromkeys([rk for rk, _, _ in late] + [rk for rk, _ in kw]))
    fused: dict[int, float] = {}
    if hp["fusion"] == "rrf":
        c = float(hp["rrf_k"])
        for r, (rk, _, _) in enumerate(late):
            fused[rk] = fused.get(rk, 0.0) + 1.0 / (c + r + 1)
        for r, (rk, _) in enumerate(kw):
            fused[rk] = fused.get(rk, 0.0) + 1.0 / (c + r + 1)
    else:
        # Min-max over each list's top `depth` (clamped at 0 below it): a record's fused score
        # does not depend on how many hits the caller asked for.
        a = float(hp["alpha"])
        d = int(hp["depth"])

        def rng(vals: list[float]) -> tuple[float, float]:
            if not vals:
                return 0.0, 0.0
            top = vals[:d]
            return min(top), max(top) - min(top)

        ll, lr = rng([s for _, s, _ in late])
        kl, kr = rng([s for _, s in kw])
        for rk in cands:
            v = 0.0
            if rk in lpos:
                v += a * (max(0.0, (lpos[rk][0] - ll) / lr) if lr > 0 else 1.0)
            if rk in kpos:
                v += (1 - a) * (max(0.0, (kpos[rk] - kl) / kr) if kr > 0 else 1.0)
            fused[rk] = v
    order = sorted(cands, key=lambda rk: -fused[rk])[:k]
    nan = float("nan")
    return [
        (
            rk,
            fused[rk],
            lpos[rk][1] if rk in lpos else 0,
            lpos[rk][0] if rk in lpos else nan,
            kpos.get(rk, nan),
        )
        for rk in order
    ]


# ----------------------------------------------------------------------------------------------
# indexing a corpus (what `latix index` runs)


@dataclass
class IndexingReport:
    """What :func:`index_corpus` did.

    Attributes:
        n_indexed: records added in this run.
        n_already: records skipped because their id was already in the collection (resume).
        n_duplicate: records skipped because their id appeared earlier in the corpus.
        n_empty: records skipped because their text is empty.
        n_truncated: passages cut at the model's maximum length.
        n_passages: passages indexed.
        n_tokens: token vectors added in this run.
        n_metadata_dropped: metadata values dropped (unsupported type, or type differing from
            the field's).
        seconds: wall time of this run.
        messages: notes for the user.
    """

    n_indexed: int = 0
    n_already: int = 0
    n_duplicate: int = 0
    n_empty: int = 0
    n_truncated: int = 0
    n_passages: int = 0
    n_tokens: int = 0
    n_metadata_dropped: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


VectorsFn = Callable[[list["Document"]], list[Any]]


def index_corpus(
    col: Collection,
    docs: Iterable[Document],
    *,
    commit_every: int = 1000,
    vectors_fn: VectorsFn | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexingReport:
    """Adds a corpus to a collection, resumably: commits every ``commit_every`` new records and
    skips ids the collection already holds, so an interrupted run is finished by running it
    again. Duplicate ids and empty texts are skipped and counted; metadata values the collection
    cannot store are dropped and counted.

    Args:
        col: the collection.
        docs: the documents (:class:`latix.corpus.Document`, with optional ``metadata``).
        commit_every: records per commit.
        vectors_fn: computes the vectors of a list of documents (one array, or a list of
            passage arrays, per document) instead of the collection's model (benchmarks pass a
            cache lookup).
        progress: called with (records added, token vectors added) after each chunk.

    Returns:
        An :class:`IndexingReport`.
    """
    if commit_every < 1:
        raise InvalidArgumentError("commit_every must be >= 1")
    rep = IndexingReport()
    t0 = time.perf_counter()
    have = set(col._store.ids(col._generation()))
    seen: set[str] = set()
    schema = dict(col._store.fields())

    def fresh() -> Iterator[Any]:
        for d in docs:
            if d.id in seen:
                rep.n_duplicate += 1
                if len(rep.messages) < 20:
                    rep.messages.append(f"duplicate id {d.id!r} skipped (first occurrence kept)")
                continue
            seen.add(d.id)
            if d.id in have:
                rep.n_already += 1
                continue
            meta = getattr(d, "metadata", None) or {}
            kept: dict[str, Any] = {}
            for k_, v in meta.items():
                try:
                    stored, new = flt.normalize_metadata({k_: v}, schema)
                except flt.MetadataError as e:
                    rep.n_metadata_dropped += 1
                    if len(rep.messages) < 20:
                        rep.messages.append(f"{d.id}: metadata {e}")
                    continue
                schema.update(new)
                kept.update(stored)
            yield d, kept

    for chunk in _chunks(fresh(), commit_every):
        recs = [Record(d.id, d.text, m) for d, m in chunk]
        vecs = vectors_fn([d for d, _ in chunk]) if vectors_fn is not None else None
        if vecs is not None:
            keep = [i for i, r in enumerate(recs) if r.text.strip()]
            rep.n_empty += len(recs) - len(keep)
            recs = [recs[i] for i in keep]
            vecs = [vecs[i] for i in keep]
        r = col.add(recs, vectors=vecs)
        rep.n_indexed += r.n_added
        rep.n_empty += r.n_empty
        rep.n_truncated += r.n_truncated
        rep.n_passages += r.n_passages
        rep.n_tokens += r.n_tokens
        if progress is not None:
            progress(len(chunk), r.n_tokens)
    rep.seconds = time.perf_counter() - t0
    return rep
