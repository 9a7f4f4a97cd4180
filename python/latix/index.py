"""The on-disk latix index: stable string ids -> token-vector matrices, MaxSim search.

A plain index searches exactly. An index created with a :class:`Compression` configuration is a
*compressed* index: once it holds ``train_min_tokens`` tokens, a commit trains a codec (coarse
centroids + product-quantised residuals) and from then on every segment is stored as codes in
inverted lists and searched by candidate generation from the codes, whose short list is
re-scored with all its documents' codes (optionally then re-ranked exactly from kept vectors).
Same add / delete / commit / search API, same atomicity and snapshots.

An index is a directory of memory-mapped files (see ``rust/core/src/store``). Opening it maps the
files without reading the vectors, so it is fast whatever the index size; searches read vectors
straight from the maps. One writer at a time (an OS file lock), any number of readers; writes are
staged and become visible atomically at :meth:`Index.commit`.

Threads and processes: a handle may be shared by any number of threads (writes serialise with
each other, with commit and with compaction; searches run concurrently). A handle inherited
through ``fork()`` can search, never write: its mutating calls raise :class:`IndexLockedError`,
and closing it leaves the parent's staged changes and lock alone. See README.md, "Threads,
processes and fork".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from latix import _core
from latix.errors import InvalidArgumentError, MergeWarning

__all__ = ["Compression", "Index", "train_codec"]

FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float16]


def _int_arg(name: str, value: object, lo: int, hi: int = 2**62) -> int:
    """``value`` as an int in ``[lo, hi]``, else InvalidArgumentError (never OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def _bool_arg(name: str, value: object) -> bool:
    """``value`` as a bool if it is one (Python's or numpy's), else InvalidArgumentError: a string
    such as ``"False"`` is truthy, and must not silently mean True."""
    if not isinstance(value, bool | np.bool_):
        raise InvalidArgumentError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _as_results(
    res: tuple[npt.NDArray[np.float32], list[str]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]]:
    """(scores (n_q, k), flat ids) from the binding -> (scores, (n_q, k) object array of ids)."""
    scores, flat_ids = res
    ids = np.empty(len(flat_ids), dtype=object)
    ids[:] = flat_ids
    return scores, ids.reshape(scores.shape)


def _path_arg(path: object) -> str:
    """``path`` as a str, else InvalidArgumentError."""
    try:
        p = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgumentError(
            f"path must be a str or os.PathLike, got {type(path).__name__}"
        ) from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    return str(p)


_FIDELITIES = ("codes", "balanced", "high")


@dataclass(frozen=True)
class Compression:
    """Configuration of a compressed index (pass to :meth:`Index.create`; fixed for its life).

    Until the index holds ``train_min_tokens`` live tokens it keeps full vectors and searches
    exactly. The commit that reaches the threshold trains the codec on a seeded sample of
    ``train_sample_tokens`` live tokens and encodes every segment; later commits encode new
    documents with that codec (no retraining unless ``retrain_growth`` is set;
    :meth:`Index.compact` with ``retrain=True`` retrains).

    A collection that grows after its first training keeps a codec sized for that first commit
    (K from its token count, a sample of its documents only). Two settings make the codec follow
    the growth: ``expected_tokens`` when the final size is known (K and the sample are chosen for
    it from the first training; nothing is retrained), ``retrain_growth`` when it is not (the
    codec is retrained with the K of the current size each time the index has grown about that
    many times (in effect a power of 4: G = 2..7 every ~4x) past the size its K suits; the old
    documents are re-encoded from their decoded reconstructions, which costs some of their
    recall).

    Each document's token vectors are first pooled (Ward clustering within the document, each
    cluster replaced by its normalised mean; Clavié et al. 2024) into ``ceil(n / pool_factor)``
    vectors, which are then encoded. Pooling by 2 keeps SciFact's nDCG@10 with the default model
    and lets each stored vector have twice the code bytes at the same size per original token.

    Attributes:
        bytes_per_token: bytes of residual code per stored (pooled) vector (4-bit codes, so
            ``2 * bytes_per_token`` subspaces; 1 to ``min(dim / 2, 128)``). None: the
            codec default (``dim / 16``, e.g. 24 for 384-d vectors) times ``pool_factor`` (48 at
            384-d with the default pooling), i.e. the same bytes per original token.
        n_centroids: coarse centroids K, at most ``min(train_min_tokens, train_sample_tokens)``.
            None: automatic from the token count at training time (the power of two nearest
            ``3 * sqrt(n_tokens)``).
        keep_vectors: keep the full vectors (in the index's dtype, memory-mapped) next to the
            codes: enables the exact re-rank (the search default then) and exact :meth:`Index.get`,
            at ``dim * 2`` (float16) more bytes per token. False (default): segments hold ids
            and codes only (about 27 bytes per original token at 384-d with the default
            pooling, everything included); :meth:`Index.get` then returns the decoded pooled
            vectors.
        train_min_tokens: live tokens that trigger training (>= 256); training also waits until
            the pooled vectors number at least 256 and at least ``n_centroids``.
        train_sample_tokens: pooled vectors sampled to train the codec (>= 256). With an
            automatic K (``n_centroids`` None, with or without ``expected_tokens``) the sample
            holds at least 32 vectors per centroid, up to 2**20: from K > 8192 (a first
            training of ~30M pooled vectors, a large ``compact(retrain=True)``, a growth
            retraining or :func:`train_codec` with a large hint) it grows past this value, up
            to ~1.5 GB of float32 at 384-d while training.
        seed: seed of the training sample and of k-means (the codec is reproducible).
        pool_factor: token pooling factor, 1 (no pooling) to 8. Default 2.
        fidelity: storage tier, ``"codes"`` (default: the pooled codes only), ``"balanced"``
            or ``"high"``: besides the codes, every original (unpooled) token gets the index of
            its pooled vector within its document, a scale and a transform-coded residual
            against that pooled vector as the codes decode it (principal-component rotation,
            0-4 bits per component, 64 bytes for balanced, 160 for high), memory-mapped and read
            only for the short list that search re-ranks (the search default then: 96 / 160
            documents for k = 10), so the top ``k`` comes much closer to exact MaxSim's: about
            67 (balanced) or 163 (high) more bytes per token. Indexes created before these
            (refinement file versions 1-3: centroid id and 1-bit, or 2 + 1-bit, residuals per
            dimension) keep their scheme. Needs
            ``keep_vectors=False`` (kept vectors re-rank exactly). :meth:`Index.get` then
            returns the tier's reconstruction of each original token, in order.
        expected_tokens: tokens (before pooling) the index is expected to hold, >= 1. None
            (default): unknown, K follows the size at the training commit. When given, the
            automatic K is chosen for the larger of this and the live size (so the sample, 32
            vectors per centroid, may grow too: see ``train_sample_tokens``). Ignored for K when
            ``n_centroids`` is given.
        retrain_growth: growth factor G of automatic retraining, 0 (default: off) or 2 to
            65536. When the pooled tokens reach G times ``(K / 3) ** 2`` (the size the codec's
            K is the automatic choice for) and a retraining would train at least twice K
            centroids, the commit is followed by a compaction that retrains the codec (as
            ``compact(retrain=True)``) and re-encodes every segment; a commit of its own, so a
            crash leaves the last commit. K is a power of two that doubles per 4x of size, so
            the effective factor is a power of 4 (G = 2..7: a retraining every ~4x of growth;
            8..31: every ~16x; 32..127: every ~64x). Geometric, so each token is re-encoded
            ``1 / (1 - 1 / G')`` times in all (G' the rounded factor). Cost: that compaction is
            a rewrite of the whole index inside ``commit()``, with the writer lock held: it
            stages the full vectors of every document (kept vectors, else the decoded pooled
            rows; ~5 GB of temporary disk at 14M tokens 384-d), holds every pooled row of the
            index in memory while re-encoding, and takes a full training plus encoding (minutes
            at that size). A retraining that fails (e.g. a full disk) or is skipped (segments
            carrying side files of a user commit hook, which it would drop) is recorded in
            :meth:`Index.stats` (``merge_failures``, ``merge_error``; a
            :class:`~latix.errors.MergeWarning` at that commit) without blocking the merge
            policy, and is not tried
            again by that handle until the index has grown by another G or a
            :meth:`Index.compact` succeeded. Needs an automatic K (``n_centroids`` None) and
            no shared ``codec`` at creation.
    """

    bytes_per_token: int | None = None
    n_centroids: int | None = None
    keep_vectors: bool = False
    train_min_tokens: int = 65_536
    train_sample_tokens: int = 262_144
    seed: int = 0
    pool_factor: int = 2
    fidelity: str = "codes"
    expected_tokens: int | None = None
    retrain_growth: int = 0

    def __post_init__(self) -> None:
        for name in ("bytes_per_token", "n_centroids"):
            v = getattr(self, name)
            if v is not None:
                _int_arg(name, v, 1, 2**32 - 1)
        if not isinstance(self.keep_vectors, bool | np.bool_):
            raise InvalidArgumentError(
                f"keep_vectors must be a bool, got {type(self.keep_vectors).__name__}"
            )
        _int_arg("train_min_tokens", self.train_min_tokens, 0)
        _int_arg("train_sample_tokens", self.train_sample_tokens, 0)
        _int_arg("seed", self.seed, 0, 2**64 - 1)
        _int_arg("pool_factor", self.pool_factor, 1, 8)
        if self.expected_tokens is not None:
            _int_arg("expected_tokens", self.expected_tokens, 1, 2**48)
        _int_arg("retrain_growth", self.retrain_growth, 0, 2**16)
        if self.retrain_growth == 1:
            raise InvalidArgumentError(
                "retrain_growth must be 0 (off) or between 2 and 65536, got 1"
            )
        if self.retrain_growth and self.n_centroids is not None:
            raise InvalidArgumentError(
                "retrain_growth retrains with an automatic K: it needs n_centroids=None "
                f"(got n_centroids={self.n_centroids})"
            )
        if not isinstance(self.fidelity, str) or self.fidelity not in _FIDELITIES:
            raise InvalidArgumentError(
                f'fidelity must be "codes", "balanced" or "high", got {self.fidelity!r}'
            )
        if self.fidelity != "codes" and self.keep_vectors:
            raise InvalidArgumentError(
                f"fidelity={self.fidelity!r} stores refinement data instead of the full vectors; "
                "with keep_vectors=True search re-ranks from the vectors themselves: pass one "
                "of them"
            )


def _read_regular(p: Path) -> bytes:
    """The bytes of the regular file ``p``; OSError for anything else. Opened without blocking:
    reading a FIFO (or a device) named where a file is expected would wait forever."""
    import stat

    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{p} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _codec_bytes_of(codec: object) -> bytes:
    """The codec file bytes of what :meth:`Index.create` takes as ``codec`` (bytes, a codec file
    path, an Index, a ``_core.compressed.Codec``); the core validates them at create."""
    if isinstance(codec, bytes | bytearray | memoryview):
        return bytes(codec)
    if isinstance(codec, Index):
        b = codec.codec_bytes()
        if b is None:
            raise InvalidArgumentError(
                f"the index at {codec.path} has no trained codec to share (plain, or not "
                "trained yet)"
            )
        return b
    if isinstance(codec, _core.compressed.Codec):
        return codec.to_bytes()
    if isinstance(codec, str | os.PathLike):
        p = Path(_path_arg(codec))
        try:
            return _read_regular(p)
        except FileNotFoundError:
            from latix.errors import NotFoundError

            raise NotFoundError(f"codec file {p} does not exist") from None
        except OSError as e:
            from latix.errors import LatixIOError

            raise LatixIOError(f"cannot read the codec file {p}: {e}") from e
    raise InvalidArgumentError(
        "codec must be bytes, a codec file path, a latix.Index or a "
        f"latix._core.compressed.Codec, got {type(codec).__name__}"
    )


def train_codec(
    compression: Compression,
    documents: Sequence[FloatArray],
    *,
    n_tokens_hint: int | None = None,
    n_threads: int | None = None,
) -> bytes:
    """Trains the codec an index configured by ``compression`` would train, on given documents.

    The same as a training commit does with its live documents: documents are drawn (seeded by
    ``compression.seed``) until about ``train_sample_tokens`` pooled vectors are gathered (with
    an automatic K at least 32 per centroid, up to 2**20: more than ``train_sample_tokens``
    from K > 8192, e.g. with a large ``n_tokens_hint``; ~1.5 GB of float32 at 384-d), each
    pooled by ``pool_factor``, then k-means and the product quantiser run with the
    configuration's ``n_centroids`` and code bytes. Give the result to :meth:`Index.create`
    (``codec=``) of any number of indexes: the shards of one collection then share one codec
    (``latix.distributed.build`` does).

    Args:
        compression: the configuration of the indexes that will use the codec.
        documents: token matrices, each ``(n_i, dim)`` float32 or float16, all of one ``dim``
            (a sample of the corpus; at least 256 pooled vectors in all).
        n_tokens_hint: pooled vectors each index is expected to hold (sets the default number of
            centroids: the power of two nearest ``3 * sqrt(n)``); default: those of ``documents``,
            or the pooled equivalent of ``compression.expected_tokens`` when larger.
        n_threads: training threads (default: latix's pool).

    Returns:
        The codec file's bytes (versioned, checksummed).

    Raises:
        InvalidArgumentError: no documents, mixed dimensions, too few vectors, non-finite
            values, or a configuration that does not fit ``dim``.
    """
    if not isinstance(compression, Compression):
        raise InvalidArgumentError(
            f"compression must be a latix.Compression, got {type(compression).__name__}"
        )
    try:
        mats = [np.asarray(d) for d in documents]
    except TypeError:
        raise InvalidArgumentError(
            f"documents must be a sequence of (n_i, dim) arrays, got {type(documents).__name__}"
        ) from None
    if not mats:
        raise InvalidArgumentError("train_codec needs at least one document")
    dims = {m.shape[1] if m.ndim == 2 else -1 for m in mats}
    if len(dims) != 1 or -1 in dims:
        raise InvalidArgumentError(
            "documents must be 2-D (n_i, dim) arrays of one dim, got shapes "
            f"{sorted({m.shape for m in mats})[:4]}"
        )
    offsets = np.zeros(len(mats) + 1, dtype=np.int64)
    np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
    x = np.concatenate([m.astype(np.float32, copy=False) for m in mats], axis=0)
    hint = None if n_tokens_hint is None else _int_arg("n_tokens_hint", n_tokens_hint, 1)
    threads = None if n_threads is None else _int_arg("n_threads", n_threads, 1)
    codec = _core.compressed.train_codec(compression, x, offsets, hint, threads)
    return codec.to_bytes()


class Index:
    """A latix index directory, opened for search (and, on first mutation, for writing).

    Create one with :meth:`Index.create` or open one with :meth:`Index.open`; do not call the
    constructor directly. Handles are thread-safe: searches run concurrently, mutations (add,
    delete, commit, compact) serialise, and a compaction never loses what another thread staged.
    After ``fork()`` the child's copy of a handle may only read (see the module docstring).

    Example::

        with latix.Index.create("my.latix", dim=128) as index:
            index.add(["a", "b"], [vecs_a, vecs_b])   # (n_i, 128) float32/float16 arrays
            index.commit()
            scores, ids = index.search(query_vecs, k=10)
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: _core.Index) -> None:
        self._inner = inner

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        dtype: Literal["float16", "float32"] = "float16",
        *,
        compression: Compression | None = None,
        codec: bytes | str | os.PathLike[str] | Index | _core.compressed.Codec | None = None,
    ) -> Index:
        """Creates a new, empty index directory and returns a handle holding the write lock.

        Args:
            path: directory to create (may exist if empty).
            dim: dimension of every token vector.
            dtype: storage precision, ``"float16"`` (default, half the disk) or ``"float32"``.
            compression: make a compressed index with this configuration (persisted in the
                index; :meth:`open` restores it). None: a plain, exact index.
            codec: a compressed index only: start with this trained codec instead of training
                one (so that several indexes, e.g. the shards of one collection, share a
                codec): the bytes of a codec file (:meth:`codec_bytes`, :func:`train_codec`),
                the path of one, another compressed :class:`Index` (its codec), or a
                ``latix._core.compressed.Codec``. The index then never trains: its first
                commit already encodes with it (``train_min_tokens`` does not apply; a
                ``compact(retrain=True)`` retrains as usual; a ``compression`` with
                ``retrain_growth`` is refused, as growth retraining would replace the shared
                codec). Checked before anything is written.

        Raises:
            AlreadyExistsError: an index, or any other file, already exists at ``path``.
            InvalidArgumentError: ``dim`` < 1, an unknown ``dtype``, or a ``compression`` field
                out of range (e.g. ``bytes_per_token`` whose ``2 * bytes_per_token`` does not
                divide ``dim``, ``train_min_tokens`` < 256, ``n_centroids`` above the training
                sample size); a ``codec`` without ``compression``, of another dimension, with
                other code bytes per vector than ``compression`` gives or another number of
                centroids than its ``n_centroids``, or an index without a trained codec; a
                ``codec`` with ``compression.retrain_growth`` set.
            CorruptedIndexError: ``codec`` is not a valid codec file (magic, sizes, checksum).
            UnsupportedVersionError: ``codec`` was written in an unknown format version.
            IndexLockedError: another process is creating an index there.
        """
        if not isinstance(dtype, str):
            raise InvalidArgumentError(f"dtype must be a str, got {type(dtype).__name__}")
        if compression is not None and not isinstance(compression, Compression):
            raise InvalidArgumentError(
                f"compression must be a latix.Compression or None, got {type(compression).__name__}"
            )
        codec_b = None if codec is None else _codec_bytes_of(codec)
        if codec_b is not None and compression is None:
            raise InvalidArgumentError(
                "a codec is given to a compressed index only: pass compression too"
            )
        # The binding reads the dataclass's fields by name (rust/python/src/compression.rs).
        return cls(
            _core.Index.create(
                _path_arg(path), _int_arg("dim", dim, 1), dtype, compression, codec_b
            )
        )

    def codec_bytes(self) -> bytes | None:
        """The bytes of this index's trained codec file (checked against the index's manifest),
        as :meth:`create` takes them as ``codec``.

        Returns:
            The codec file's bytes; None for a plain index or a compressed one that has not
            trained its codec yet.

        Raises:
            CorruptedIndexError: the codec file is damaged.
        """
        return self._inner.codec_bytes()

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: Literal["r", "w"] = "r") -> Index:
        """Opens an existing index. O(1) in the index size (files are mapped, not read).

        Args:
            path: the index directory.
            mode: ``"r"`` takes the write lock lazily at the first mutating call; ``"w"`` takes
                it now.

        Raises:
            NotFoundError: ``path`` does not exist or is not a latix index.
            CorruptedIndexError: a file of the index is damaged (the message names it).
            UnsupportedVersionError: the index was written by an unknown format version.
            IndexLockedError: ``mode="w"`` and another writer holds the lock.
        """
        if not isinstance(mode, str):
            raise InvalidArgumentError(f'mode must be "r" or "w", got {type(mode).__name__}')
        return cls(_core.Index.open(_path_arg(path), mode))

    # ----------------------------------------------------------------------------- writing

    def add(
        self,
        ids: Sequence[str],
        embeddings: Sequence[FloatArray] | FloatArray,
        replace: bool = False,
    ) -> None:
        """Stages documents; visible to searches after :meth:`commit`.

        Staged vectors go to a temporary file, not to memory. All checks run first: on error
        nothing is staged.

        Args:
            ids: one non-empty str per document, unique within the call.
            embeddings: per document a ``(n_i, dim)`` float32 or float16 array (n_i >= 1,
                finite values of absolute value at most 1e9, within the float16 range for a
                float16 index), converted to the storage dtype; arrays that are not C-contiguous
                and aligned are copied. A single ``(n_docs, n_tokens, dim)`` array is also
                accepted. The values are checked on the copy that is stored, so what is stored
                is valid even if another thread writes to the arrays during the call.
            replace: (a bool) overwrite documents whose id already exists (committed or staged).

        Raises:
            AlreadyExistsError: an id exists and ``replace`` is False.
            InvalidArgumentError: bad id (not a str, empty, not valid Unicode), shape, dtype,
                NaN/Inf or a value beyond 1e9, empty document, duplicates,
                ``len(ids) != len(embeddings)``, ``replace`` not a bool.
            LatixMemoryError: a non-contiguous array too large to copy.
            IndexLockedError: another handle or process is the writer (including the parent
                process, for a handle inherited through ``fork()``).
            IndexClosedError: the handle is closed.
        """
        self._inner.add(ids, embeddings, _bool_arg("replace", replace))

    def delete(self, ids: Iterable[str]) -> None:
        """Stages the deletion of documents; effective at :meth:`commit`.

        Args:
            ids: existing (committed or staged) ids, unique within the call.

        Raises:
            NotFoundError: some ids are not in the index (nothing is deleted).
            InvalidArgumentError: an id is not a str or appears twice.
            IndexLockedError: another handle or process is the writer.
        """
        self._inner.delete(ids)  # the binding accepts any iterable of str and names bad items

    def set_merge_policy(
        self,
        segments_per_tier: int | None = 10,
        floor_tokens: int = 65536,
        memory: int = 1 << 30,
        max_merge_tokens: int | None = 1 << 25,
    ) -> None:
        """Sets the merge policy this handle runs after every commit (on by default, with these
        defaults; ``segments_per_tier=None`` turns it off). Not persisted: each handle has its own.

        Tiered, log-structured merging with a hard bound on each merge: a segment of ``t`` live
        tokens is in tier 0 when ``t <= floor_tokens``, else in the smallest tier ``i`` with
        ``t <= floor_tokens * segments_per_tier**i``. A segment above ``max_merge_tokens / 2``
        live tokens is *frozen*: the policy does not merge it again (deletes can thaw it). After
        a commit, a run of consecutive unfrozen segments of the lowest tier (or below) holding
        ``segments_per_tier`` segments of that tier, anywhere in the index, is merged into one
        segment in its place (documents keep their commit order); failing that, two or more
        unfrozen segments that a frozen one follows (no later commit can join them) are merged;
        repeatedly, until nothing is left to merge. No merge writes more than
        ``max_merge_tokens`` live tokens, however large the index: a longer run is merged from
        its newest end in parts. The segment count stays logarithmic in the number of commits of
        similar sizes below the bound and grows by one segment per ``max_merge_tokens / 2``
        tokens or so above it; with commits of mixed sizes up to ``segments_per_tier - 1``
        segments of each lower tier can remain between two larger ones, until :meth:`compact`.

        Each merge is a commit of its own (crash-safe like every commit, readers keep their
        snapshots) that never decodes: a compressed index merges its inverted lists in the codes
        domain (search scores unchanged), with the memory setting ``memory`` of :meth:`compact`,
        and a fidelity tier's refinement files losslessly (see :meth:`compact`). Segments with
        lists an older latix wrote or refinement files of another codec are left to
        :meth:`compact`, which still merges everything into one.

        Args:
            segments_per_tier: (an int >= 2, or None) segments a tier holds before they merge;
                lower means fewer segments (faster search) and more rewriting at commit time.
                ``None`` turns merging off.
            floor_tokens: (an int >= 1) live tokens up to which a segment is in the lowest tier.
            memory: (an int >= 1, bytes) memory setting of each merge (see :meth:`compact`).
            max_merge_tokens: (an int >= 2, or None) the most live tokens one merge writes
                (default 2**25, about 1 GB of codes at 30 bytes a token); ``None``: unbounded,
                so one commit can merge the whole index (the 100th of 100 equal commits does).

        Raises:
            InvalidArgumentError: a setting out of range.
        """
        n = (
            None
            if segments_per_tier is None
            else _int_arg("segments_per_tier", segments_per_tier, 2)
        )
        cap = (
            None if max_merge_tokens is None else _int_arg("max_merge_tokens", max_merge_tokens, 2)
        )
        self._inner.set_merge_policy(
            n, _int_arg("floor_tokens", floor_tokens, 1), _int_arg("memory", memory, 1), cap
        )

    @property
    def merge_segments_per_tier(self) -> int | None:
        """Segments per tier of this handle's merge policy (``None``: merging is off)."""
        return self._inner.merge_segments_per_tier()

    def commit(self) -> None:
        """Makes staged adds and deletes durable and visible to all readers, atomically, then
        runs the merge policy (:meth:`set_merge_policy`), whose merges are commits of their own
        (and, with ``Compression(retrain_growth=...)``, the retraining compaction once the index
        has grown that much: see :class:`Compression`).

        Uncommitted changes are lost if the process dies or the handle closes. An exception
        means nothing was committed (the changes stay staged: commit again). A merge that fails
        after the commit was published is not the commit's failure: it is reported by a
        :class:`~latix.errors.MergeWarning` and in :meth:`stats` (``merge_failures``,
        ``merge_error``), the index keeps the committed state, and the next commit or
        :meth:`compact` tries the merge again.
        """
        merge_error = self._inner.commit()
        if merge_error is not None:
            warnings.warn(
                f"the commit was published, but a merge of the merge policy after it failed "
                f"(it is retried by the next commit or compact()): {merge_error}",
                MergeWarning,
                stacklevel=2,
            )

    def compact(self, retrain: bool = False, memory: int | None = None) -> None:
        """Commits staged changes, then rewrites live documents into one segment.

        Reclaims the space of deleted documents; ids, vectors and (plain index) search results
        are unchanged. Readers with an open snapshot keep working on it. On a compressed index
        the segments' inverted lists are merged in the codes domain (no token is decoded or
        re-encoded: search results, ids and scores, are the same before and after, and the
        merge's memory is bounded by ``memory``, not by the corpus). A fidelity tier's
        refinement data merges losslessly too: each kept token's centroid, scales and residual
        codes are copied and each source segment's quantiser levels kept, so scores are the same
        to the bit, however often the index is compacted (the merged refinement file is built in
        memory: a few bytes per token more than its size on disk). With ``retrain=True``, with
        lists an older latix wrote or with refinement files of another codec, the merged
        segment is re-encoded instead; segments without kept vectors then contribute their
        decoded approximations, so re-encoding them may change a few codes. With a fidelity
        tier that costs recall: on clustered 32-d test data (800 documents in 8 segments, 60
        queries), recall@10 against exact MaxSim was 0.700 (``"balanced"``) and 0.823
        (``"high"``) before and after any number of compactions; re-encoding the
        reconstructions (the path compaction took before) gave 0.643 and 0.808, and
        ``retrain=True`` 0.637 and 0.780 (0.625 and 0.768 after a second one): retrain a tiered
        index only when the data drifted.

        Args:
            retrain: (a bool) compressed index only: retrain the codec on the live tokens first
                (use when the data drifted since training). Without kept vectors the codec is
                retrained on decoded reconstructions, which is lossy: it learns the
                reconstructions, not the original vectors.
            memory: (a positive int, bytes; default 1 GiB; values below 1 MiB act as 1 MiB) the
                memory setting of a codes-domain merge: mapped input pages are released
                whenever this many bytes were read since the last release, so the merge's
                resident memory stays near this figure plus a few MB of buffers and 8 bytes per
                document and per inverted list.

        Raises:
            InvalidArgumentError: ``retrain=True`` on a plain index, ``retrain`` not a bool,
                ``memory`` not a positive int.
            CorruptedIndexError: an input segment's inverted lists or refinement file are
                damaged (nothing is published).
        """
        mem = None if memory is None else _int_arg("memory", memory, 1)
        self._inner.compact(_bool_arg("retrain", retrain), mem)

    # ----------------------------------------------------------------------------- reading

    def search(
        self,
        queries: FloatArray | Sequence[FloatArray],
        k: int = 10,
        n_threads: int | None = None,
        subset: Iterable[str] | None = None,
        *,
        nprobe: int | None = None,
        rerank: bool | None = None,
        refine: int | None = None,
        rerank_depth: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]]:
        """MaxSim search of the latest committed documents.

        A plain index (or a compressed one before its codec is trained) is searched exactly and
        exhaustively. A trained compressed index probes, per query token, the ``nprobe`` best
        centroids' inverted lists and scores their tokens from the codes (deleted documents and
        ``subset`` are filtered inside this candidate generation), then re-scores the best
        ``refine`` candidates with the codes of all their tokens (MaxSim over the compressed
        vectors); scores are then estimates, unless the short list is re-ranked exactly from the
        kept vectors, or from a fidelity tier's per-token refinement data (closer estimates).

        Args:
            queries: one ``(n_query_tokens, dim)`` float32 (or float16) array, a list of them, or
                a ``(n_queries, n_query_tokens, dim)`` array.
            k: hits per query (>= 1); fewer documents than ``k`` pads the result.
            n_threads: threads to use (default: ``LATIX_NUM_THREADS`` or the number of CPUs; at
                most 1024; more than the larger of those two defaults runs on that many).
            subset: restrict the search to these ids; ids not in the index are ignored (so a
                filter may name documents deleted since it was built).
            nprobe: compressed index only: inverted lists probed per query token, in
                ``1..n_centroids`` (default: ``n_centroids / 512`` clamped to 8..32). More is
                slower and finds more candidates.
            rerank: compressed index only: re-score the best candidates exactly from the kept
                vectors, ``max(2 * k, 16)`` of them after refinement (``max(4 * k, 100)``
                without it), or from the refinement data of a ``fidelity`` tier; default: True
                when the index keeps vectors or has a tier.
            refine: compressed index only: candidates re-scored with all their tokens' codes
                (MaxSim over the compressed vectors) before the top ``k`` (or the exact
                re-rank's share) is taken. Default ``max(k, 16, nprobe * documents /
                (n_centroids * 26))`` (16 for SciFact-sized indexes, 64 for 420k documents
                on K 2048), or ``max(4 * k, 48)`` when
                re-ranking (``max(4 * k, 96)`` for a ``balanced`` tier of a current index,
                ``max(4 * k, 160)`` for ``high``); ``0`` keeps candidate generation's own
                estimates (faster, less accurate); a value above the number of documents means
                all of them. Lists
                written by a latix without the document map skip it by default until the next
                commit (or ``compact()``) rewrites them.
            rerank_depth: compressed index only: candidates of the refined list re-ranked when
                re-ranking (>= 1, at least ``k`` are). Default as described for ``rerank``; for
                a ``balanced`` / ``high`` tier of a current index ``max(2 * k, 24)`` /
                ``max(3 * k, 32)`` (the whole list when ``refine=0``).

        Returns:
            ``(scores, ids)``: float32 ``(n_queries, k)`` best first, and a ``(n_queries, k)``
            object array of str ids. Missing hits are ``-inf`` and ``""``. Equal scores are
            ordered by insertion order. A single 2-D query gives ``n_queries == 1``.

        Raises:
            InvalidArgumentError: wrong shape/dtype/dim, NaN/Inf or a value beyond 1e9 (so that
                no score can overflow), empty query, ``k < 1``, ``k`` above both the number of
                documents and 2**20 (or ``k * n_queries`` above 2**26), ``nprobe`` out of range,
                ``rerank=True`` without kept vectors or a tier, ``nprobe``, ``rerank``,
                ``refine`` or ``rerank_depth`` on a plain index, a ``subset`` id that is not a
                str or not valid Unicode.
            LatixMemoryError: a non-contiguous query too large to copy, or a result that cannot
                be allocated.
            IndexClosedError: the handle is closed.
        """
        qlist, k, n_threads, nprobe, rerank, refine = self._search_args(
            queries, k, n_threads, nprobe, rerank, refine
        )
        sub: list[str] | None = None
        if subset is not None:
            if isinstance(subset, str):
                raise InvalidArgumentError(
                    "subset must be an iterable of str ids, got a single str"
                )
            try:
                sub = list(subset)
            except TypeError:
                raise InvalidArgumentError(
                    f"subset must be an iterable of str ids, got {type(subset).__name__}"
                ) from None
        depth = None if rerank_depth is None else _int_arg("rerank_depth", rerank_depth, 1)
        res = self._inner.search(
            qlist, k, n_threads, sub, nprobe, rerank, refine, rerank_depth=depth
        )
        if res is None:  # only masked searches can be out of date
            raise InvalidArgumentError("internal error: an unmasked search returned no result")
        return _as_results(res)

    def search_masked(
        self,
        queries: FloatArray | Sequence[FloatArray],
        masks: Mapping[str, npt.NDArray[np.uint64]],
        k: int = 10,
        n_threads: int | None = None,
        *,
        exhaustive_below: int = 0,
        nprobe: int | None = None,
        rerank: bool | None = None,
        refine: int | None = None,
        rerank_depth: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]] | None:
        """:meth:`search` restricted by one bitmap of allowed documents per segment.

        This is how a filter over a large share of the index reaches candidate generation
        without naming every allowed id: list the segments with :meth:`segments`, map each
        segment's documents (:meth:`segment_ids`, by document number) to what the filter
        decides, and pass one bitmap per segment. Segment files are immutable, so a bitmap
        built for a segment stays valid while the segment exists (deleted documents are dropped
        by the search itself); a commit that adds a segment makes the masks incomplete, and the
        search then returns None: build a mask for the new segments and search again.

        Args:
            queries: as in :meth:`search`.
            masks: segment file name -> 1-D uint64 array of ``ceil(n_docs / 64)`` words; bit
                ``d % 64`` of word ``d // 64`` allows document ``d`` of the segment
                (``np.packbits(allowed, bitorder="little")`` padded to a multiple of 8 bytes and
                viewed as ``<u8``). Masks of segments not in the index are ignored.
            k: hits per query (>= 1).
            n_threads: threads to use.
            exhaustive_below: compressed index only: when at most this many live documents are
                allowed, every one of them is a candidate instead of the output of candidate
                generation from the probed lists: all of them are scored with all their codes
                when there are at most 128, else the best 32 by centroid interaction (then
                re-ranked exactly when re-ranking). With kept vectors and the exact re-rank, a
                set of at most 128 is scored exactly from the vectors instead (the result is
                exact MaxSim over the allowed documents). 0: never.
            nprobe: as in :meth:`search`.
            rerank: as in :meth:`search`.
            refine: as in :meth:`search`.
            rerank_depth: as in :meth:`search`.

        Returns:
            ``(scores, ids)`` as :meth:`search` returns them, or None when the latest committed
            snapshot has a segment that ``masks`` does not cover.

        Raises:
            InvalidArgumentError: as :meth:`search`, or a mask of the wrong length or dtype.
        """
        qlist, k, n_threads, nprobe, rerank, refine = self._search_args(
            queries, k, n_threads, nprobe, rerank, refine
        )
        if not isinstance(masks, Mapping):
            raise InvalidArgumentError(
                f"masks must be a dict of segment file -> uint64 array, got {type(masks).__name__}"
            )
        below = _int_arg("exhaustive_below", exhaustive_below, 0)
        depth = None if rerank_depth is None else _int_arg("rerank_depth", rerank_depth, 1)
        res = self._inner.search(
            qlist, k, n_threads, None, nprobe, rerank, refine, dict(masks), below, depth
        )
        return None if res is None else _as_results(res)

    def _search_args(
        self,
        queries: FloatArray | Sequence[FloatArray],
        k: object,
        n_threads: object,
        nprobe: object,
        rerank: object,
        refine: object,
    ) -> tuple[list[object], int, int | None, int | None, bool | None, int | None]:
        """The checked arguments shared by :meth:`search` and :meth:`search_masked`."""
        nprobe_ = None if nprobe is None else _int_arg("nprobe", nprobe, 1)
        refine_ = None if refine is None else _int_arg("refine", refine, 0)
        if rerank is not None and not isinstance(rerank, bool | np.bool_):
            raise InvalidArgumentError(
                f"rerank must be a bool or None, got {type(rerank).__name__}"
            )
        if isinstance(queries, np.ndarray):
            if queries.ndim == 2:
                qlist: list[object] = [queries]
            elif queries.ndim == 3:
                qlist = list(queries)
            else:
                raise InvalidArgumentError(
                    f"queries must be an (n_query_tokens, {self.dim}) array or a list of them, "
                    f"got an array of shape {queries.shape}"
                )
        elif isinstance(queries, list | tuple):
            qlist = list(queries)
        else:
            raise InvalidArgumentError(
                f"queries must be an (n_query_tokens, {self.dim}) array or a list of them, "
                f"got {type(queries).__name__}"
            )
        k_ = _int_arg("k", k, 1)
        n_threads_ = None if n_threads is None else _int_arg("n_threads", n_threads, 1)
        rerank_ = None if rerank is None else bool(rerank)
        return qlist, k_, n_threads_, nprobe_, rerank_, refine_

    def segments(self) -> list[tuple[str, int, int]]:
        """The segments of the latest committed snapshot, oldest first.

        Returns:
            ``(file, n_docs, n_live)`` per segment: the file name (the key of a mask in
            :meth:`search_masked`), its documents including deleted ones (document numbers
            ``0..n_docs``), and those not deleted.
        """
        return self._inner.segments()

    def segment_ids(self, file: str) -> list[str]:
        """Ids of every document of segment ``file``, by document number (deleted ones
        included: they keep their number).

        Raises:
            NotFoundError: the latest snapshot has no such segment (e.g. compaction replaced it).
        """
        if not isinstance(file, str):
            raise InvalidArgumentError(f"file must be a str, got {type(file).__name__}")
        return self._inner.segment_ids(file)

    def get(self, id: str) -> FloatArray:
        """The stored token vectors of a committed document.

        On a compressed index created with ``keep_vectors=False`` the vectors are not stored:
        this returns their decoded approximation (centroid + residual codewords), with the rows
        grouped by centroid rather than in the original token order.

        Args:
            id: the document id.

        Returns:
            ``(n_tokens, dim)`` array of the storage dtype (a copy).

        Raises:
            NotFoundError: no committed document has this id.
            InvalidArgumentError: ``id`` is not a str, or not valid Unicode.
        """
        return self._inner.get(id)

    def stats(self) -> dict[str, object]:
        """Figures of the latest committed state.

        Returns:
            A dict with ``kind`` (``"plain"`` or ``"compressed"``), ``n_docs``, ``n_tokens``,
            ``n_segments``, ``bytes_on_disk`` (every file of the committed state: segments, codes,
            codec, configuration, manifest), ``bytes_per_token`` (``bytes_on_disk / n_tokens``),
            ``trained``, ``n_centroids`` and ``code_bytes_per_token`` (None until trained),
            ``keep_vectors``, and this handle's ``merge_failures`` (runs of the merge policy that
            failed after their commit was published, see :meth:`commit`) and ``merge_error``
            (the last failure's message, None once a later run or a compaction succeeded).
        """
        s = self._inner.stats()
        n, size = s["n_tokens"], s["bytes_on_disk"]
        ok = isinstance(n, int) and isinstance(size, int) and n > 0
        s["bytes_per_token"] = size / n if ok else None  # type: ignore[operator]
        return s

    @property
    def compression(self) -> Compression | None:
        """The compression configuration, or None for a plain index."""
        c = self._inner.compression
        return None if c is None else Compression(**c)

    def ids(self) -> list[str]:
        """Ids of all committed documents, in insertion order."""
        return self._inner.ids()

    def verify(self) -> None:
        """Checks every checksum and table of the committed index (reads all files).

        On a compressed index this includes the configuration, the codec and every segment's
        inverted lists (their checksum, offsets, counts, and that they were encoded with the
        index's codec).

        Raises:
            CorruptedIndexError: a file is damaged; the message names it and the problem.
        """
        self._inner.verify()

    def __len__(self) -> int:
        """Number of committed documents."""
        return len(self._inner)

    def __contains__(self, id: object) -> bool:
        """True if ``id`` is a committed document."""
        return self._inner.contains(id)

    def __iter__(self) -> Iterator[str]:
        """Iterates over committed ids in insertion order."""
        return iter(self.ids())

    # ----------------------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        """Dimension of the token vectors."""
        return self._inner.dim

    @property
    def dtype(self) -> str:
        """Storage dtype: ``"float16"`` or ``"float32"``."""
        return self._inner.dtype

    @property
    def path(self) -> Path:
        """The index directory."""
        return Path(self._inner.path)

    @property
    def num_tokens(self) -> int:
        """Number of token vectors of committed documents."""
        return self._inner.num_tokens

    @property
    def generation(self) -> int:
        """Commit generation of the latest committed state (increases with every commit)."""
        return self._inner.generation

    def generation_and_len(self) -> tuple[int, int]:
        """:attr:`generation` and ``len()`` of one snapshot, the latest committed one.

        One look at ``CURRENT`` where the two separately take one each (and may straddle a
        commit); what a reader that needs both per call (a collection's search) uses.

        Returns:
            ``(generation, number of live documents)``.
        """
        return self._inner.generation_and_len()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._inner.closed

    # ----------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Drops uncommitted changes, releases the write lock and the maps. Idempotent."""
        self._inner.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"Index({str(self.path)!r}, closed)"
        return f"Index({str(self.path)!r}, dim={self.dim}, dtype={self.dtype!r}, len={len(self)})"
