"""Type stubs for latix._core, the Rust extension module."""

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
    def create(path: str, dim: int, dtype: str = "float16") -> Index: ...
    @staticmethod
    def open(path: str, mode: str = "r") -> Index: ...
    def add(self, ids: object, embeddings: object, replace: bool = False) -> None: ...
    def delete(self, ids: object) -> None: ...
    def commit(self) -> None: ...
    def compact(self) -> None: ...
    def verify(self) -> None: ...
    def close(self) -> None: ...
    def search(
        self,
        queries: list[object],
        k: int = 10,
        n_threads: int | None = None,
        subset: list[str] | None = None,
    ) -> tuple[npt.NDArray[np.float32], list[str]]: ...
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
