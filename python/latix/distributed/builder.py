"""Building a sharded collection from a corpus (:func:`build`): create or resume, then stream
the records into the shards (:meth:`ShardedCollection.add_corpus`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latix.collection import (
    CompressionArg,
    Passages,
    Record,
)
from latix.distributed.handle import _DEFAULT_PASSAGES, ShardedCollection
from latix.distributed.manifest import MANIFEST, _read_manifest
from latix.distributed.results import BuildReport
from latix.filters import FieldType

if TYPE_CHECKING:
    from latix.encoder import Encoder


def _corpus_iter(corpus: Any) -> Iterable[Any]:
    """Records of a corpus path (BEIR JSONL, TREC, folder: latix.corpus), a Ray Dataset (rows
    with ``_id``/``id``, ``text``, optional ``title`` and ``metadata``) or an iterable."""
    if isinstance(corpus, str | os.PathLike):
        from latix.corpus import read_corpus

        return read_corpus(corpus)
    if hasattr(corpus, "iter_rows") and hasattr(corpus, "map_batches"):  # ray.data.Dataset

        def rows() -> Iterable[Any]:
            for r in corpus.iter_rows():
                rid = r.get("_id", r.get("id"))
                text = str(r.get("text") or "")
                title = r.get("title")
                if title:
                    text = f"{title} {text}".strip()
                yield Record(str(rid), text, dict(r.get("metadata") or {}))

        return rows()
    it: Iterable[Any] = corpus
    return it


def build(
    corpus: Any,
    out_dir: str | os.PathLike[str],
    *,
    n_shards: int = 2,
    compression: CompressionArg = "auto",
    model: str | os.PathLike[str] | None = "default",
    encoder: Encoder | None = None,
    dim: int | None = None,
    passages: Passages | None = _DEFAULT_PASSAGES,
    schema: Mapping[str, FieldType] | None = None,
    batch_size: int = 64,
    vectors_fn: Callable[[list[Record]], list[Any]] | None = None,
    progress: Callable[[BuildReport], None] | None = None,
    **open_options: Any,
) -> ShardedCollection:
    """Builds (or resumes building) a sharded collection from a corpus.

    Creates ``n_shards`` collections under ``out_dir`` (unless a complete shard manifest is
    there already: then the build resumes, skipping every id the shards hold) and streams the
    corpus into them (:meth:`ShardedCollection.add_corpus`): routed by id, encoded by the shard
    actors in length-sorted batches, each batch one commit.

    ``compression``, ``model``, ``encoder``, ``dim``, ``passages`` and ``schema`` are those of
    :meth:`latix.Collection.create`.

    Args:
        corpus: a corpus file or folder (BEIR ``corpus.jsonl(.gz)``, TREC, ``.txt``/``.md``
            folder: :func:`latix.corpus.read_corpus`), a Ray Dataset, or an iterable of records.
        out_dir: the sharded collection's directory.
        n_shards: number of shards (ignored when resuming; the manifest's count is used).
        batch_size: records per encoder batch and per shard commit.
        vectors_fn: pre-computed vectors for a batch of records (bring your own encoder).
        progress: called with the :class:`BuildReport` so far after each committed batch.
        **open_options: options of :meth:`ShardedCollection.open` (``max_restarts``,
            ``retries``, ``encoder_threads``, ...).

    Returns:
        The open :class:`ShardedCollection` (its ``last_build`` attribute holds the report).
    """
    out = Path(os.fspath(out_dir))
    resume = False
    if (out / MANIFEST).is_file():
        resume = _read_manifest(out).get("state") == "ready"
    if resume:
        sc = ShardedCollection.open(out, **open_options)
    else:
        sc = ShardedCollection.create(
            out,
            n_shards=n_shards,
            model=model,
            encoder=encoder,
            dim=dim,
            compression=compression,
            schema=schema,
            passages=passages,
            **open_options,
        )
    try:
        sc.add_corpus(
            _corpus_iter(corpus), batch_size=batch_size, vectors_fn=vectors_fn, progress=progress
        )
    except BaseException:
        sc.close()
        raise
    return sc
