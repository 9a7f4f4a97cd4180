"""Building a sharded collection from a corpus (:func:`build`): create or resume, then stream
the records into the shards (:meth:`ShardedCollection.add_corpus`).

**One codec for all shards** (``codec="shared"``, the default for compressed shards): before
the shards are created, a seeded uniform sample of the corpus is drawn (the records whose keyed
BLAKE2b hash of the id, keyed by ``Compression.seed``, is among the smallest: a bottom-k sample,
the same whatever the corpus order), encoded by Ray tasks (one encoder session per worker
process) until it holds about ``train_sample_tokens`` pooled vectors, and one codec is trained on
it (:func:`latix.train_codec`: the same sampling, pooling and k-means as an index's training
commit), with the number of centroids set for the expected size of one shard. Every shard is
created with that codec (``latix.Collection.create(codec=...)``), so each encodes from its first
commit. ``codec="per-shard"``: each shard trains its own at its first commit reaching
``train_min_tokens`` (what an unsharded collection does). Measured by
``benches/bench_ray.py --only codec`` on SciFact's train queries (bench-results/ray-codec*.md):
at the same bytes (K = 1024 for both) 2 shards reach recall@10 against exact 0.881 with the
shared codec vs 0.867 with per-shard codecs, at the same nDCG@10 (0.719 / 0.720), hence the
default.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from latix.collection import (
    CompressionArg,
    Passages,
    Record,
    _as_record,
)
from latix.distributed.handle import _DEFAULT_PASSAGES, ShardedCollection
from latix.distributed.manifest import MANIFEST, _read_manifest
from latix.distributed.results import BuildReport
from latix.errors import InvalidArgumentError
from latix.filters import FieldType
from latix.index import Compression, train_codec

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


CodecMode = Literal["shared", "per-shard"]

# Encoders of this worker process, by (model, threads): Ray reuses worker processes for tasks,
# so each worker loads the model once for all the sample's batches it encodes.
_ENCODERS: dict[tuple[str, int | None], Any] = {}


def _encode_passages(
    spec: str, passages: dict[str, Any] | None, n_threads: int | None, texts: list[str]
) -> list[np.ndarray]:
    """The token vectors of every passage of ``texts`` (as a collection with this model and
    passage configuration stores them), float16; run as a Ray task."""
    from latix.collection import PassageEncoder
    from latix.encoder import Encoder

    enc = _ENCODERS.get((spec, n_threads))
    if enc is None:
        enc = _ENCODERS[(spec, n_threads)] = Encoder.load(spec, n_threads=n_threads)
    cfg = None if passages is None else Passages(**passages)
    return [v.astype(np.float16) for e in PassageEncoder(enc, cfg).encode(texts) for v in e.vectors]


def _sample_key(rid: str, seed: int) -> bytes:
    """The seeded sort key of a record in the codec's bottom-k sample."""
    return hashlib.blake2b(
        rid.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")
    ).digest()


def _shared_codec(
    records: Iterable[Any],
    comp: Compression,
    n_shards: int,
    *,
    spec: str | None,
    passages: Passages | None,
    vectors_fn: Callable[[list[Record]], list[Any]] | None,
    encoder_threads: int | None,
    batch_size: int,
) -> bytes | None:
    """One codec for every shard (see the module documentation), or None when the sampled
    corpus is too small to train one (the shards then train per shard, as they would anyway).
    """
    # Bottom-k sample by seeded key: uniform over ids, independent of the corpus order. The
    # candidates hold texts only; documents are encoded in key order until enough vectors.
    cap = int(min(16_384, max(1_024, comp.train_sample_tokens * comp.pool_factor // 64)))
    heap: list[tuple[bytes, int, Record]] = []  # max-heap on the key through its complement
    n_docs = 0
    for i, r in enumerate(records):
        rid, text, meta = _as_record(r, i)
        if vectors_fn is None and not text.strip():
            continue
        n_docs += 1
        k = bytes(255 - b for b in _sample_key(rid, comp.seed))
        item = (k, i, Record(rid, text, dict(meta or {})))
        if len(heap) < cap:
            heapq.heappush(heap, item)
        elif k > heap[0][0]:
            heapq.heapreplace(heap, item)
    cands = [rec for _, _, rec in sorted(heap, reverse=True)]  # smallest key first
    if not cands:
        return None
    pool = comp.pool_factor
    mats: list[np.ndarray] = []
    pooled = 0
    n_used = 0
    ray = None
    task = None
    if vectors_fn is None:
        if spec is None:
            return None  # no model and no vectors: nothing to train on
        from latix.distributed.actor import _ray

        ray = _ray()
        task = ray.remote(num_cpus=1)(_encode_passages)
        pcfg = None if passages is None else asdict(passages)
        wave = max(1, int(ray.cluster_resources().get("CPU", 1)))
    else:
        wave = 1
    step = max(1, min(batch_size, 64))
    while n_used < len(cands) and pooled < comp.train_sample_tokens:
        chunks = [
            cands[a : a + step] for a in range(n_used, min(len(cands), n_used + wave * step), step)
        ]
        if vectors_fn is not None:
            outs: list[list[np.ndarray]] = []
            for c in chunks:
                vs: list[np.ndarray] = []
                for v in vectors_fn(c):
                    vs.extend(v if isinstance(v, list | tuple) else [v])
                outs.append([np.asarray(x) for x in vs])
        else:
            assert ray is not None and task is not None
            refs = [task.remote(spec, pcfg, encoder_threads, [r.text for r in c]) for c in chunks]
            outs = ray.get(refs)
        for vs in outs:
            for v in vs:
                if v.ndim == 2 and v.shape[0] > 0:
                    mats.append(v)
                    pooled += -(-v.shape[0] // pool)
        n_used += sum(len(c) for c in chunks)
    n_tokens = sum(m.shape[0] for m in mats)
    if n_used >= n_docs and n_tokens < comp.train_min_tokens:
        return None  # the whole corpus is below the training threshold: shards stay exact
    if pooled < 256:
        return None
    # Centroids for the pooled vectors one shard will hold (estimated from the sample).
    hint = max(1, round(pooled / max(n_used, 1) * n_docs / n_shards))
    return train_codec(comp, mats, n_tokens_hint=hint)


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
    codec: CodecMode = "shared",
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
        codec: compressed shards only: ``"shared"`` (default) trains one codec on a seeded
            sample of the whole corpus before the shards are created and gives it to every
            shard; ``"per-shard"``: each shard trains its own on its first
            ``train_min_tokens`` tokens (see the module documentation and
            bench-results/ray-codec.md for the measured difference). A shared codec reads the
            corpus twice (a one-shot iterator is first kept in a list) and encodes the sample
            once more. Ignored when resuming (the shards keep their codecs).
        **open_options: options of :meth:`ShardedCollection.open` (``max_restarts``,
            ``retries``, ``encoder_threads``, ...).

    Returns:
        The open :class:`ShardedCollection` (its ``last_build`` attribute holds the report).
    """
    out = Path(os.fspath(out_dir))
    resume = False
    if (out / MANIFEST).is_file():
        resume = _read_manifest(out).get("state") == "ready"
    if codec not in ("shared", "per-shard"):
        raise InvalidArgumentError(f'codec must be "shared" or "per-shard", got {codec!r}')
    shared: bytes | None = None
    if not resume and codec == "shared" and compression is not None:
        comp = Compression() if compression == "auto" else compression
        if not isinstance(comp, Compression):
            raise InvalidArgumentError(
                f'compression must be "auto", None or a latix.Compression, got {compression!r}'
            )
        if not isinstance(corpus, str | os.PathLike | Sequence) and not (
            hasattr(corpus, "iter_rows") and hasattr(corpus, "map_batches")
        ):
            corpus = list(corpus)  # read twice: the sample, then the build
        spec: str | None = None
        if model is not None:
            spec = os.fspath(model)
            if spec != "default" and Path(spec).is_dir():
                spec = str(Path(spec).resolve())
        shared = _shared_codec(
            _corpus_iter(corpus),
            comp,
            n_shards,
            spec=spec,
            passages=passages,
            vectors_fn=vectors_fn,
            encoder_threads=open_options.get("encoder_threads"),
            batch_size=batch_size,
        )
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
            codec=shared,
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
