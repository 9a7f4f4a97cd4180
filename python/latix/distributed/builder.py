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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from latix.collection import (
    CompressionArg,
    EncodedText,
    Passages,
    Record,
    _as_record,
)
from latix.distributed.actor import _ray
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


# ---------------------------------------------------------------------------------- Ray Data


#: Corpus rows the driver holds at once for ``build(encoding="ray-data")`` (one Ray Dataset of
#: that many rows is encoded and written before the next is read).
RAY_DATA_CHUNK = 10_000


def _datasets(corpus: Any, chunk: int) -> Iterator[tuple[Any, list[str] | None]]:
    """The corpus as Ray Datasets of at most ``chunk`` rows each, with their ids, read lazily
    (the driver holds one chunk's rows at a time): a Ray Dataset as it is (one, ids None: Ray
    streams it itself); Parquet files (a file or a folder of them, read with pyarrow in the
    driver, batch by batch) and any other corpus (read by :func:`latix.corpus.read_corpus` in
    the driver) handed to Ray Data chunk by chunk. Rows hold ``id``, ``text`` and ``metadata``
    (JSON text); :class:`_EncodeStage` reads them as :func:`_corpus_iter` does."""
    import json

    import ray.data

    if hasattr(corpus, "iter_rows") and hasattr(corpus, "map_batches"):
        yield corpus, None
        return
    rows: Iterable[dict[str, Any]]
    if isinstance(corpus, str | os.PathLike) and (
        str(corpus).endswith(".parquet")
        or (Path(corpus).is_dir() and any(Path(corpus).glob("*.parquet")))
    ):
        # Read in the driver (pyarrow, batch by batch): Ray Data's own read tasks wait for a
        # CPU slot that the encoder workers hold (seen to hang on a 2-CPU cluster).
        import pyarrow.parquet as pq

        p = Path(corpus)
        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]

        def parquet_rows() -> Iterator[dict[str, Any]]:
            for f in files:
                for tb in pq.ParquetFile(f).iter_batches(batch_size=min(chunk, 65_536)):
                    ids, texts, metas = _rows_of(tb.to_pydict())
                    for i, t, m in zip(ids, texts, metas, strict=True):
                        yield {"id": i, "text": t, "metadata": m}

        rows = parquet_rows()
    else:

        def corpus_rows() -> Iterator[dict[str, Any]]:
            for i, r in enumerate(_corpus_iter(corpus)):
                rid, text, meta = _as_record(r, i)
                yield {"id": rid, "text": text, "metadata": json.dumps(dict(meta)) if meta else ""}

        rows = corpus_rows()
    part: list[dict[str, Any]] = []
    for row in rows:
        part.append(row)
        if len(part) >= chunk:
            yield ray.data.from_items(part), [r["id"] for r in part]
            part = []
    if part:
        yield ray.data.from_items(part), [r["id"] for r in part]


def _rows_of(batch: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Ids, texts (``title + " " + text`` when there is a title) and metadata as JSON text of
    one batch of corpus rows."""
    import json

    n = len(next(iter(batch.values())))
    none = [None] * n
    ids, texts, metas = [], [], []
    for rid, title, text, meta in zip(
        batch["_id"] if "_id" in batch else batch.get("id", none),
        batch.get("title", none),
        batch.get("text", none),
        batch.get("metadata", none),
        strict=True,
    ):
        t = str(text or "")
        if title:
            t = f"{title} {t}".strip()
        ids.append(str(rid))
        texts.append(t)
        if isinstance(meta, str):
            metas.append(meta)
        else:
            metas.append(json.dumps(dict(meta)) if meta else "")
    return ids, texts, metas


class _EncodeStage:
    """A Ray Data worker of the encoding stage: one encoder session (loaded once), encoding
    each batch of rows as a collection's text add does (:class:`latix.PassageEncoder`: the
    passages of every text, the encoder's batches cut by length). Rows of ids in ``skip`` (a
    resumed build) or with a blank text come back unencoded (``lens`` empty)."""

    def __init__(
        self, spec: str, passages: dict[str, Any] | None, n_threads: int | None, skip: Any
    ) -> None:
        from latix.collection import PassageEncoder
        from latix.encoder import Encoder

        cfg = None if passages is None else Passages(**passages)
        self.pe = PassageEncoder(Encoder.load(spec, n_threads=n_threads), cfg)
        self.skip = skip if isinstance(skip, set) else set(skip)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        ids, texts, metas = _rows_of(batch)
        todo = [
            j
            for j, (i, t) in enumerate(zip(ids, texts, strict=True))
            if i not in self.skip and t.strip()
        ]
        enc = self.pe.encode([texts[j] for j in todo]) if todo else []
        vecs: list[bytes] = [b""] * len(ids)
        lens: list[str] = ["[]"] * len(ids)
        spans: list[str] = [""] * len(ids)
        for j, e in zip(todo, enc, strict=True):
            vecs[j] = b"".join(v.astype(np.float16).tobytes() for v in e.vectors)
            lens[j] = json.dumps([int(v.shape[0]) for v in e.vectors])
            spans[j] = json.dumps(e.spans) if e.spans is not None else ""
        return {
            "id": ids,
            "text": texts,
            "meta": metas,
            "vecs": vecs,
            "lens": lens,
            "spans": spans,
        }


def _add_with_ray_data(
    sc: ShardedCollection,
    corpus: Any,
    *,
    spec: str,
    passages: Passages | None,
    encoder_threads: int | None,
    n_encoders: int | None,
    batch_size: int,
    progress: Callable[[BuildReport], None] | None,
    chunk: int = RAY_DATA_CHUNK,
) -> BuildReport:
    """The build's encoding as a Ray Data pipeline, one corpus chunk of ``chunk`` rows at a
    time (:func:`_datasets`): the corpus's rows, ``map_batches`` over
    ``n_encoders`` actor workers (:class:`_EncodeStage`: one encoder session each, restarted
    and its batch retried when its process dies), the encoded rows streamed back to the
    driver and written by the shard actors (each shard by its own writer), resumably
    (:meth:`ShardedCollection.add_corpus`)."""
    import json

    ray = _ray()
    have = set(sc.ids())
    workers = n_encoders or max(1, int(ray.cluster_resources().get("CPU", 1)))
    from ray.data import ActorPoolStrategy

    pcfg = None if passages is None else asdict(passages)

    def stage(ds: Any, ids: list[str] | None) -> Any:
        # The ids of this chunk the shards hold (all of them for a Ray Dataset input).
        skip = have if ids is None else {i for i in ids if i in have}
        return ds.map_batches(
            _EncodeStage,
            fn_constructor_args=(spec, pcfg, encoder_threads, skip),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=workers),
            num_cpus=1,
            # A killed worker is restarted and its batch sent again: Ray Data's defaults for
            # actor pools (max_restarts = max_task_retries = -1), relied on rather than passed,
            # since extra remote args (ray_remote_args, ray_remote_args_fn) are deprecated and
            # go in Ray 2.64; tests/test_distributed.py kills a worker mid-build.
        )

    encoded: dict[str, EncodedText] = {}
    given: set[str] = set()
    n_empty = 0
    dim = sc.dim

    def rows() -> Iterable[Record]:
        # One chunk of the corpus at a time (bounded driver memory): its pipeline runs and its
        # rows are written before the next chunk is read.
        nonlocal n_empty
        for ds, ids in _datasets(corpus, chunk):
            for b in stage(ds, ids).iter_batches(batch_size=None, batch_format="numpy"):
                for rid, text, meta, vb, ln, sp in zip(
                    b["id"], b["text"], b["meta"], b["vecs"], b["lens"], b["spans"], strict=True
                ):
                    rid, text = str(rid), str(text)
                    rec = Record(rid, text, json.loads(meta) if meta else {})
                    lens = json.loads(ln)
                    if rid in have or rid in given:
                        yield rec  # counted by add_corpus (already held / a duplicate id)
                        continue
                    if not lens:
                        n_empty += 1
                        continue
                    flat = np.frombuffer(vb, dtype=np.float16).reshape(-1, dim)
                    cuts = np.cumsum([0, *lens])
                    vs = [flat[a:b_] for a, b_ in zip(cuts[:-1], cuts[1:], strict=True)]
                    spans = [tuple(x) for x in json.loads(sp)] if sp else None
                    encoded[rid] = EncodedText(vs, spans)  # type: ignore[arg-type]
                    given.add(rid)
                    yield rec

    rep = sc.add_corpus(
        rows(),
        batch_size=batch_size,
        vectors_fn=lambda recs: [encoded.pop(r.id) for r in recs],
        progress=progress,
    )
    rep.n_empty += n_empty
    return rep


CodecMode = Literal["shared", "per-shard"]
EncodingMode = Literal["shards", "ray-data"]

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
    encoding: EncodingMode = "shards",
    n_encoders: int | None = None,
    encode_chunk: int = RAY_DATA_CHUNK,
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
        encoding: where texts are encoded (without ``vectors_fn``): ``"shards"`` (default):
            by the shard actors, each encoding the batches it writes; ``"ray-data"``: a Ray
            Data pipeline (Ray Data: pyarrow, pandas, in the ``ray`` extra) over
            ``n_encoders`` actor workers, each one encoder session (:class:`_EncodeStage`),
            whose rows (vectors with their passage spans) the shard actors write; Parquet
            corpora are read by Ray Data too. Both store what a text add stores.
        n_encoders: ``"ray-data"``: encoder workers (default: the cluster's CPUs).
        encode_chunk: ``"ray-data"``: corpus rows read into the driver at once (a file corpus
            is encoded as Ray Datasets of this many rows, one after the other, so the driver's
            memory is bounded by it; each starts its own encoder pool).
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
    if encoding not in ("shards", "ray-data"):
        raise InvalidArgumentError(f'encoding must be "shards" or "ray-data", got {encoding!r}')
    if encode_chunk < 1:
        raise InvalidArgumentError(f"encode_chunk must be >= 1, got {encode_chunk!r}")
    try:
        if encoding == "ray-data" and vectors_fn is None:
            spec_ = sc._manifest.get("model")
            if spec_ is None:
                raise InvalidArgumentError("encoding='ray-data' needs a model (or vectors_fn)")
            first = sc.shard_paths[0]
            from latix.collection import Collection

            with Collection.open(first) as c0:
                pas = c0.passages
            sc.last_build = _add_with_ray_data(
                sc,
                corpus,
                spec=str(spec_),
                passages=pas,
                encoder_threads=open_options.get("encoder_threads"),
                n_encoders=n_encoders,
                batch_size=batch_size,
                progress=progress,
                chunk=encode_chunk,
            )
        else:
            sc.add_corpus(
                _corpus_iter(corpus),
                batch_size=batch_size,
                vectors_fn=vectors_fn,
                progress=progress,
            )
    except BaseException:
        sc.close()
        raise
    return sc
