"""The on-disk latix index: stable string ids -> token-vector matrices, exact MaxSim search.

An index is a directory of memory-mapped files (see ``rust/core/src/store``). Opening it maps the
files without reading the vectors, so it is fast whatever the index size; searches read vectors
straight from the maps. One writer at a time (an OS file lock), any number of readers; writes are
staged and become visible atomically at :meth:`Index.commit`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from latix import _core
from latix.errors import InvalidArgumentError

__all__ = ["Index"]

FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float16]


class Index:
    """A latix index directory, opened for search (and, on first mutation, for writing).

    Create one with :meth:`Index.create` or open one with :meth:`Index.open`; do not call the
    constructor directly. Handles are thread-safe: searches run concurrently, mutations serialise.

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
    ) -> Index:
        """Creates a new, empty index directory and returns a handle holding the write lock.

        Args:
            path: directory to create (may exist if empty).
            dim: dimension of every token vector.
            dtype: storage precision, ``"float16"`` (default, half the disk) or ``"float32"``.

        Raises:
            AlreadyExistsError: an index, or any other file, already exists at ``path``.
            InvalidArgumentError: ``dim`` < 1 or an unknown ``dtype``.
            IndexLockedError: another process is creating an index there.
        """
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
            raise InvalidArgumentError(f"dim must be an int, got {type(dim).__name__}")
        return cls(_core.Index.create(os.fspath(path), int(dim), dtype))

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
        return cls(_core.Index.open(os.fspath(path), mode))

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
                finite values), converted to the storage dtype; non-contiguous arrays are copied.
                A single ``(n_docs, n_tokens, dim)`` array is also accepted.
            replace: overwrite documents whose id already exists (committed or staged).

        Raises:
            AlreadyExistsError: an id exists and ``replace`` is False.
            InvalidArgumentError: bad id, shape, dtype, NaN/Inf, empty document, duplicates,
                ``len(ids) != len(embeddings)``.
            IndexLockedError: another handle or process is the writer.
            IndexClosedError: the handle is closed.
        """
        self._inner.add(ids, embeddings, bool(replace))

    def delete(self, ids: Iterable[str]) -> None:
        """Stages the deletion of documents; effective at :meth:`commit`.

        Args:
            ids: existing (committed or staged) ids, unique within the call.

        Raises:
            NotFoundError: some ids are not in the index (nothing is deleted).
            InvalidArgumentError: an id is not a str or appears twice.
            IndexLockedError: another handle or process is the writer.
        """
        self._inner.delete(list(ids) if not isinstance(ids, str) else ids)

    def commit(self) -> None:
        """Makes staged adds and deletes durable and visible to all readers, atomically.

        Uncommitted changes are lost if the process dies or the handle closes.
        """
        self._inner.commit()

    def compact(self) -> None:
        """Commits staged changes, then rewrites live documents into one segment.

        Reclaims the space of deleted documents; ids, vectors and search results are unchanged.
        Readers with an open snapshot keep working on it.
        """
        self._inner.compact()

    # ----------------------------------------------------------------------------- reading

    def search(
        self,
        queries: FloatArray | Sequence[FloatArray],
        k: int = 10,
        n_threads: int | None = None,
        subset: Iterable[str] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]]:
        """Exact exhaustive MaxSim search of the latest committed documents.

        Args:
            queries: one ``(n_query_tokens, dim)`` float32 (or float16) array, a list of them, or
                a ``(n_queries, n_query_tokens, dim)`` array.
            k: hits per query (>= 1); fewer documents than ``k`` pads the result.
            n_threads: threads to use (default: ``LATIX_NUM_THREADS`` or the number of CPUs).
            subset: restrict the search to these ids; ids not in the index are ignored (so a
                filter may name documents deleted since it was built).

        Returns:
            ``(scores, ids)``: float32 ``(n_queries, k)`` best first, and a ``(n_queries, k)``
            object array of str ids. Missing hits are ``-inf`` and ``""``. Equal scores are
            ordered by insertion order. A single 2-D query gives ``n_queries == 1``.

        Raises:
            InvalidArgumentError: wrong shape/dtype/dim, NaN/Inf, empty query, ``k < 1``.
            IndexClosedError: the handle is closed.
        """
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
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise InvalidArgumentError(f"k must be an int, got {type(k).__name__}")
        sub: list[str] | None = None
        if subset is not None:
            if isinstance(subset, str):
                raise InvalidArgumentError(
                    "subset must be an iterable of str ids, got a single str"
                )
            sub = list(subset)
        scores, flat_ids = self._inner.search(qlist, int(k), n_threads, sub)
        ids = np.empty(len(flat_ids), dtype=object)
        ids[:] = flat_ids
        return scores, ids.reshape(scores.shape)

    def get(self, id: str) -> FloatArray:
        """The stored token vectors of a committed document.

        Args:
            id: the document id.

        Returns:
            ``(n_tokens, dim)`` array of the storage dtype (a copy).

        Raises:
            NotFoundError: no committed document has this id.
        """
        return self._inner.get(id)

    def ids(self) -> list[str]:
        """Ids of all committed documents, in insertion order."""
        return self._inner.ids()

    def verify(self) -> None:
        """Checks every checksum and table of the committed index (reads all files).

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
