"""latix: late-interaction (ColBERT-style) retrieval with a Rust core.

Documents and queries are encoded into one vector per token; relevance is MaxSim. latix stores
document token vectors in memory-mapped files and scores them with SIMD, multithreaded kernels.
"""

from __future__ import annotations

from latix._core import __version__, kernel_name, maxsim
from latix.config import ModelConfig, ModelError
from latix.encoder import Encoded, Encoder
from latix.errors import (
    AlreadyExistsError,
    CorruptedIndexError,
    IndexClosedError,
    IndexLockedError,
    InvalidArgumentError,
    LatixError,
    LatixIOError,
    LatixMemoryError,
    NotFoundError,
    UnsupportedVersionError,
)
from latix.index import Compression, Index

__all__ = [
    "__version__",
    "maxsim",
    "Index",
    "Compression",
    "kernel_name",
    "LatixError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "CorruptedIndexError",
    "IndexLockedError",
    "IndexClosedError",
    "UnsupportedVersionError",
    "LatixIOError",
    "LatixMemoryError",
    "Encoder",
    "Encoded",
    "ModelConfig",
    "ModelError",
]
