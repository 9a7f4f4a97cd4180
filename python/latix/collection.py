"""A searchable collection on disk: token-vector index + document texts + the model that made them.

Layout of a collection directory (what ``latix index`` writes)::

    COLLECTION/collection.json   model spec and fingerprint, dim (written first, atomically)
    COLLECTION/vectors/          the latix.Index (atomic commits)
    COLLECTION/docstore.sqlite   id -> text (one transaction per commit)

Indexing is resumable: documents are committed every ``commit_every`` documents, texts first and
vectors second, so an interrupted run leaves the last committed state; running again skips ids
already in the index. A document whose text was stored but whose vectors were not is simply
indexed again (its text row is replaced).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import latix
from latix.corpus import Document
from latix.docstore import DocStore
from latix.encoder import Encoder
from latix.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

__all__ = ["Collection", "IndexingReport", "build_collection"]

META_FILE = "collection.json"
_META_VERSION = 1

VectorsFn = Callable[[list[Document]], list[npt.NDArray[np.float32]]]


def _index_cls() -> Any:
    cls = getattr(latix, "Index", None)
    if cls is None:
        raise NotFoundError("latix.Index is not available in this build of latix")
    return cls


class Collection:
    """An opened collection directory.

    Attributes:
        path: the directory.
        meta: the parsed ``collection.json``.
        index: the opened ``latix.Index`` of token vectors.
        docs: the :class:`~latix.docstore.DocStore` of texts.
    """

    def __init__(self, path: Path, meta: dict[str, Any], index: Any, docs: DocStore) -> None:
        self.path = path
        self.meta = meta
        self.index = index
        self.docs = docs

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a collection (its metadata file exists)."""
        return (Path(path) / META_FILE).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Collection:
        """Open an existing collection.

        Raises:
            NotFoundError: ``path`` is not a collection written by ``latix index``.
        """
        p = Path(path)
        mp = p / META_FILE
        if not mp.is_file():
            raise NotFoundError(
                f"{p} is not a latix collection (no {META_FILE}); build one with "
                "`latix index CORPUS --out DIR`"
            )
        meta = json.loads(mp.read_text(encoding="utf-8"))
        if meta.get("version", 0) > _META_VERSION:
            raise InvalidArgumentError(f"{mp} was written by a newer latix")
        index = _index_cls().open(str(p / "vectors"))
        return cls(p, meta, index, DocStore(p / "docstore.sqlite"))

    @classmethod
    def create(cls, path: str | os.PathLike[str], encoder: Encoder, model_spec: str) -> Collection:
        """Create an empty collection for vectors of ``encoder``.

        Args:
            path: directory to create (must not exist, or be empty).
            encoder: the model whose vectors the collection will hold.
            model_spec: how to load that model again (``"default"`` or a directory).

        Raises:
            AlreadyExistsError: ``path`` exists and is not empty.
        """
        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise AlreadyExistsError(f"{p} exists and is not an empty directory")
        p.mkdir(parents=True, exist_ok=True)
        spec = model_spec if model_spec == "default" else str(Path(model_spec).resolve())
        meta = {
            "version": _META_VERSION,
            "model": spec,
            "model_fingerprint": encoder.fingerprint,
            "dim": encoder.dim,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        index = _index_cls().create(str(p / "vectors"), encoder.dim, dtype="float16")
        docs = DocStore(p / "docstore.sqlite")
        tmp = p / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, p / META_FILE)  # last: a directory without it is not a collection
        return cls(p, meta, index, docs)

    def encoder(self, model: str | None = None, n_threads: int | None = None) -> Encoder:
        """Load the collection's model (or ``model``, which must have the same fingerprint).

        Raises:
            InvalidArgumentError: ``model`` is not the model the collection was built with.
        """
        enc = Encoder.load(model or self.meta["model"], n_threads=n_threads)
        if enc.fingerprint != self.meta.get("model_fingerprint"):
            raise InvalidArgumentError(
                f"model {model or self.meta['model']} is not the model {self.path} was built "
                "with (fingerprints differ); rebuild the collection with --restart"
            )
        return enc

    def close(self) -> None:
        """Close the index and the docstore."""
        self.index.close()
        self.docs.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class IndexingReport:
    """What :func:`build_collection` did.

    Attributes:
        n_indexed: documents added in this run.
        n_already: documents skipped because their id was already indexed (resume).
        n_duplicate: documents skipped because their id appeared earlier in the corpus.
        n_truncated: documents cut at the model's maximum length.
        n_tokens: token vectors added in this run.
        seconds: wall time of this run.
        messages: notes for the user.
    """

    n_indexed: int = 0
    n_already: int = 0
    n_duplicate: int = 0
    n_truncated: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


def build_collection(
    out: str | os.PathLike[str],
    docs: Iterable[Document],
    encoder: Encoder,
    *,
    model_spec: str,
    commit_every: int = 1000,
    batch_size: int = 64,
    restart: bool = False,
    vectors_fn: VectorsFn | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexingReport:
    """Index documents into a collection directory, resumably.

    Args:
        out: the collection directory (created, or resumed if it is a collection already).
        docs: the documents.
        encoder: the model (also used to check a resumed collection was built with it).
        model_spec: how to load the model again (``"default"`` or a directory), stored in metadata.
        commit_every: commit (texts, then vectors) after this many new documents.
        batch_size: documents encoded per call.
        restart: delete an existing collection at ``out`` first.
        vectors_fn: computes the vectors of a batch of documents (default: encode their text;
            benchmarks pass a cache lookup).
        progress: called with (documents added, tokens added) after each batch.

    Returns:
        An :class:`IndexingReport`.

    Raises:
        AlreadyExistsError: ``out`` exists and is neither empty nor a collection.
        InvalidArgumentError: ``out`` is a collection built with another model.
    """
    if commit_every < 1 or batch_size < 1:
        raise InvalidArgumentError("commit_every and batch_size must be >= 1")
    p = Path(out)
    if restart and p.exists():
        if not Collection.exists(p):
            raise AlreadyExistsError(f"refusing to delete {p}: it is not a latix collection")
        shutil.rmtree(p)
    if Collection.exists(p):
        coll = Collection.open(p)
        if coll.meta.get("model_fingerprint") != encoder.fingerprint:
            coll.close()
            raise InvalidArgumentError(
                f"{p} was built with another model ({coll.meta.get('model')}); "
                "use --restart to rebuild it"
            )
    else:
        coll = Collection.create(p, encoder, model_spec)
    rep = IndexingReport()
    t0 = time.perf_counter()
    enc_fn: VectorsFn = vectors_fn or _encode_fn(encoder, rep)
    seen: set[str] = set()
    pending = 0
    with coll:
        for batch in _batches(_fresh(docs, coll.index, seen, rep), batch_size):
            vecs = enc_fn(batch)
            # Texts first: a crash between the two commits leaves a text row without vectors,
            # which the next run re-indexes; never vectors without text.
            coll.docs.put_many((d.id, d.text) for d in batch)
            coll.index.add([d.id for d in batch], vecs)
            pending += len(batch)
            rep.n_indexed += len(batch)
            ntok = sum(int(v.shape[0]) for v in vecs)
            rep.n_tokens += ntok
            if pending >= commit_every:
                coll.index.commit()
                pending = 0
            if progress is not None:
                progress(len(batch), ntok)
        if pending:
            coll.index.commit()
    rep.seconds = time.perf_counter() - t0
    return rep


def _encode_fn(encoder: Encoder, rep: IndexingReport) -> VectorsFn:
    def fn(batch: list[Document]) -> list[npt.NDArray[np.float32]]:
        enc = encoder.encode_documents_packed([d.text for d in batch])
        rep.n_truncated += enc.n_truncated
        return enc.to_list()

    return fn


def _fresh(
    docs: Iterable[Document], index: Any, seen: set[str], rep: IndexingReport
) -> Iterator[Document]:
    for d in docs:
        if d.id in seen:
            rep.n_duplicate += 1
            if len(rep.messages) < 20:
                rep.messages.append(f"duplicate id {d.id!r} skipped (first occurrence kept)")
            continue
        seen.add(d.id)
        if d.id in index:
            rep.n_already += 1
            continue
        yield d


def _batches(it: Iterable[Document], n: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in it:
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
