"""On-disk cache of encodings, so that benchmarks and evaluation scripts never re-encode a corpus.

:class:`EmbeddingCache` stores encodings keyed by model identity (hash of the model files and
config), the kind of text and a checksum of the data (:func:`data_checksum`). Normal indexing
does not use it. Entries are written to a temporary directory and renamed into place, so any
number of processes may share the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from latix.encoder import Encoder
from latix.errors import InvalidArgumentError

__all__ = ["EmbeddingCache", "data_checksum"]


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
