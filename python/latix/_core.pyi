"""Type stubs for latix._core, the Rust extension module."""

import os

import numpy as np
import numpy.typing as npt

__version__: str

def maxsim(
    query: npt.NDArray[np.float32],
    doc_vectors: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    doc_offsets: npt.NDArray[np.int64],
    n_threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Exact MaxSim scores of one query against a packed document collection.

    Args:
        query: (n_query_tokens, dim) float32 query token vectors.
        doc_vectors: (n_tokens, dim) float32 or float16 document token vectors, all documents
            concatenated.
        doc_offsets: (n_docs + 1,) int64; document i is rows doc_offsets[i]:doc_offsets[i+1].
        n_threads: threads to use (default: LATIX_NUM_THREADS or the number of CPUs).

    Returns:
        (n_docs,) float32: for each document, the sum over query tokens of the best dot product
        with any of its tokens (0 for a document with no tokens).

    Raises:
        InvalidArgumentError: wrong dtype, rank or dim, NaN/Inf, inconsistent offsets.
    """

class Index:
    """Rust handle behind :class:`latix.Index` (see python/latix/index.py for documentation)."""

    @staticmethod
    def create(
        path: str,
        dim: int,
        dtype: str = "float16",
        compression: tuple[int | None, int | None, bool, int, int, int, int, str] | None = None,
    ) -> Index: ...
    @staticmethod
    def open(path: str, mode: str = "r") -> Index: ...
    def add(self, ids: object, embeddings: object, replace: bool = False) -> None: ...
    def delete(self, ids: object) -> None: ...
    def commit(self) -> None: ...
    def compact(self, retrain: bool = False) -> None: ...
    def stats(self) -> dict[str, object]: ...
    @property
    def compression(
        self,
    ) -> tuple[int | None, int | None, bool, int, int, int, int, str] | None: ...
    def verify(self) -> None: ...
    def close(self) -> None: ...
    def search(
        self,
        queries: list[object],
        k: int = 10,
        n_threads: int | None = None,
        subset: list[str] | None = None,
        nprobe: int | None = None,
        rerank: bool | None = None,
        refine: int | None = None,
        masks: dict[str, npt.NDArray[np.uint64]] | None = None,
        exhaustive_below: int = 0,
        rerank_depth: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], list[str]] | None: ...
    def segments(self) -> list[tuple[str, int, int]]: ...
    def segment_ids(self, file: str) -> list[str]: ...
    def get(self, id: object) -> npt.NDArray[np.float32] | npt.NDArray[np.float16]: ...
    def __len__(self) -> int: ...
    def contains(self, id: object) -> bool: ...
    def ids(self) -> list[str]: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def closed(self) -> bool: ...

def kernel_name() -> str:
    """Name of the MaxSim kernel selected for this CPU at run time.

    Returns:
        One of "avx512", "avx2", "portable" (auto-vectorised, NEON on aarch64) or "scalar". The
        environment variable LATIX_KERNEL, read once at first use, can force a slower one.
    """

class Codec:
    """A trained token codec: coarse centroid + 4-bit product-quantised residual per token."""

    @staticmethod
    def train(
        vectors: npt.NDArray[np.float32],
        n_tokens_hint: int | None = None,
        n_centroids: int | None = None,
        bytes_per_token: int | None = None,
        kmeans_iters: int | None = None,
        seed: int = 0,
        n_threads: int | None = None,
    ) -> Codec:
        """Trains on (n, dim) float32 sample vectors (n >= 256); K defaults from n_tokens_hint."""
    @staticmethod
    def from_bytes(data: bytes) -> Codec:
        """Loads a codec serialised by `to_bytes` (checksummed; CorruptedIndexError if damaged)."""
    def to_bytes(self) -> bytes:
        """Versioned, checksummed serialisation."""
    @property
    def dim(self) -> int: ...
    @property
    def n_centroids(self) -> int: ...
    @property
    def bytes_per_token(self) -> int: ...
    @property
    def aniso_eta(self) -> float:
        """Weight of the error along a token's own direction in the encoder's loss (1.0 = MSE)."""
    def with_aniso_eta(self, eta: float) -> Codec:
        """A copy whose encoder uses anisotropic loss weight eta > 0; decoding is unchanged."""
    @property
    def centroids(self) -> npt.NDArray[np.float32]:
        """(n_centroids, dim) float32 coarse centroids."""
    def encode(
        self, vectors: npt.NDArray[np.float32], n_threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
        """(n, dim) float32 -> (centroid ids (n,) uint32, codes (n, bytes_per_token) uint8)."""
    def decode(
        self, centroid_ids: npt.NDArray[np.uint32], codes: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        """Reconstructed (n, dim) float32 vectors (diagnostics; search never decompresses)."""

class CompressedSegment:
    """One segment's tokens grouped by coarse centroid, with codes in fast-scan blocks."""

    @staticmethod
    def build(
        codec: Codec,
        doc_vectors: npt.NDArray[np.float32] | npt.NDArray[np.float16],
        doc_offsets: npt.NDArray[np.int64],
        n_threads: int | None = None,
    ) -> CompressedSegment:
        """Encodes (n_tokens, dim) documents (rows doc_offsets[i]:doc_offsets[i+1]) with `codec`."""
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the segment file atomically."""
    @staticmethod
    def open(path: str | os.PathLike[str], codec: Codec) -> CompressedSegment:
        """Memory-maps a saved segment; checks it was encoded with `codec`."""
    @property
    def n_docs(self) -> int: ...
    @property
    def n_tokens(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

def compressed_search(
    codec: Codec,
    segments: list[CompressedSegment],
    query: npt.NDArray[np.float32],
    k: int,
    nprobe: int | None = None,
    allowed: list[npt.NDArray[np.bool_] | None] | None = None,
    full: list[tuple[npt.NDArray[np.float32] | npt.NDArray[np.float16], npt.NDArray[np.int64]]]
    | None = None,
    n_candidates: int | None = None,
    n_threads: int | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Top-k documents of `segments` for one (n_query_tokens, dim) float32 query.

    Per query token the best `nprobe` centroid lists are scanned from codes (WARP-style, missing
    scores imputed); `allowed[i]` ((n_docs,) bool, None = all) filters segment i while scanning;
    with `full` (per segment: vectors, offsets) the best `n_candidates` (default max(4k, 100)) are
    re-scored exactly. Returns (scores (n,) float32, segment (n,) int64, doc (n,) int64), best
    first.
    """
