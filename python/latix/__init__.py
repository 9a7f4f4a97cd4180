"""latix: late-interaction (ColBERT-style) retrieval with a Rust core.

Documents and queries are encoded into one vector per token; relevance is MaxSim. latix stores
document token vectors in memory-mapped files and scores them with SIMD, multithreaded kernels.

:class:`Collection` is the main API (records with text and metadata, filtered late / keyword /
hybrid search); :class:`Index` is the vector-level one (token vectors in, ids and scores out).
"""

from __future__ import annotations

from latix import errors as _errors
from latix._core import __version__, kernel_name, maxsim
from latix._optional import MissingDependencyError
from latix.collection import (
    AddReport,
    BatchResults,
    Collection,
    EncodedText,
    Hit,
    PassageEncoder,
    Passages,
    Record,
    TokenMatch,
)
from latix.config import ModelConfig, ModelError
from latix.encoder import Encoded, Encoder
from latix.errors import *  # noqa: F403  (the exception classes: latix.errors.__all__)
from latix.filters import FilterError, MetadataError
from latix.index import Compression, Index, train_codec

__all__ = [
    "__version__",
    "Collection",
    "Record",
    "Hit",
    "TokenMatch",
    "BatchResults",
    "AddReport",
    "Passages",
    "PassageEncoder",
    "EncodedText",
    "FilterError",
    "MetadataError",
    "maxsim",
    "Index",
    "Compression",
    "train_codec",
    "kernel_name",
    "Encoder",
    "Encoded",
    "ModelConfig",
    "ModelError",
    "MissingDependencyError",
]
# The exception classes are listed once, in latix.errors (the binding maps core errors to them
# by name: rust/python/src/errors.rs).
__all__ += _errors.__all__
