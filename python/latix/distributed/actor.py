"""The shard actor: one latix Collection opened from disk in a Ray actor process, answering
the handle's calls (plain actor calls, or its compiled fan-out graph through ``dispatch``)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from latix import filters as flt
from latix._optional import require
from latix.collection import (
    AddReport,
    BatchResults,
    Collection,
    Hit,
    Record,
    _as_record,
    _fts_query,
)
from latix.docstore import RecordStore
from latix.filters import FieldType

if TYPE_CHECKING:
    pass


class _ShardServer:
    """One shard: a latix Collection opened from disk, answering the handle's calls. Runs in a
    Ray actor process; a restarted actor runs ``__init__`` again (opens the last commit)."""

    def __init__(self, path: str, encoder_threads: int | None, shard: int = -1) -> None:
        self.col = Collection.open(path, n_threads=encoder_threads)
        self.shard = shard  # this actor's shard number (picks its part of a graph request)

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        return True

    def dispatch(self, req: bytes) -> bytes:
        """Runs ``getattr(self, name)(*args)`` for the handle's compiled graph (every shard gets
        the same request, ``(name, args)`` pickled by the handle) and returns the answer
        pickled (:func:`_pack`). An error of the shard's own code comes back as a value
        (:class:`_Failed`): the graph stays compiled and the handle re-raises it."""
        try:
            name, args = pickle.loads(req)
            return _pack(getattr(self, name)(*args))
        except Exception as e:  # noqa: BLE001 - handed back to the handle, which raises it
            try:
                return _pack(_Failed(e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                return _pack(_Failed(RuntimeError(f"{type(e).__name__}: {e}")))

    def timed(self, name: str, args: tuple[Any, ...]) -> tuple[Any, float]:
        """``getattr(self, name)(*args)`` and the seconds it took inside this actor (for the
        benchmark's split of the fan-out overhead into shard work and transport)."""
        t = time.perf_counter()
        out = getattr(self, name)(*args)
        return out, time.perf_counter() - t

    def late_or_keyword(
        self,
        queries: list[str] | None,
        qv: list[Any] | None,
        k: int,
        where: Any,
        mode: str,
        n_threads: int | None,
        opts: dict[str, Any],
        include: Sequence[str] = ("text", "metadata"),
    ) -> BatchResults:
        return self.col.search_batch(
            queries,
            k,
            where=where,
            mode=mode,  # type: ignore[arg-type]
            query_vectors=qv,
            include=include,  # type: ignore[arg-type]
            n_threads=n_threads,
            **opts,
        )

    def hybrid_lists(
        self,
        queries: list[str],
        qv: list[Any] | None,
        depth: int,
        where: Any,
        n_threads: int | None,
        opts: dict[str, Any],
    ) -> tuple[BatchResults, list[list[tuple[str, float]]]]:
        """The unfused halves of a hybrid search: the late top ``depth`` (columnar) and, per
        query, the BM25 top ``depth`` as ``(id, score)`` with FTS5's double-precision scores
        (the fusion's min-max normalisation then sees what Collection's own fusion sees)."""
        col = self.col
        if qv is None:
            qv = col._get_encoder().encode_queries_packed(queries).to_list()
        late = col.search_batch(
            None,
            depth,
            where=where,
            mode="late",
            query_vectors=qv,
            include=(),
            n_threads=n_threads,
            **opts,
        )
        node = None if where is None else flt.parse(where, col._store.fields())
        gen = col._generation()
        kw = []
        for q in queries:
            lst = col._store.keyword(_fts_query(q), depth, gen, node)
            rows = col._store.by_key([rk for rk, _ in lst]) if lst else {}
            kw.append([(rows[rk].id, float(sc)) for rk, sc in lst if rk in rows])
        return late, kw

    def rows(self, ids: list[str]) -> dict[str, tuple[str, dict[str, Any], Any]]:
        got = self.col._store.get(ids, self.col._generation())
        return {i: (r.text, r.metadata, r.spans) for i, r in got.items()}

    def rows_of(self, want: dict[int, list[str]]) -> dict[str, tuple[str, dict[str, Any], Any]]:
        """:meth:`rows` of this shard's part of ``want`` (shard -> ids): one request that the
        compiled graph sends to every shard alike."""
        ids = want.get(self.shard)
        return self.rows(ids) if ids else {}

    def explain(self, query: str, hits: list[Hit]) -> list[Hit]:
        return self.col._explain(query, hits)

    def schema(self) -> dict[str, FieldType]:
        return self.col.schema

    def declare_fields(self, new: dict[str, FieldType]) -> None:
        """Registers metadata fields now (committed at once: they take no index commit)."""
        col = self.col
        with col._wlock:
            w, _ = col._writer_locked()
            have = col._store.fields()
            todo = {n: t for n, t in new.items() if n not in have}
            for n, t in new.items():
                if n in have and have[n] != t:
                    raise flt.MetadataError(
                        f"field {n!r} is {have[n]} in shard {col.path.name}, not {t}"
                    )
            if todo:
                with col._store.writing() as con:
                    RecordStore.add_fields(con, todo, w.generation)

    def add(self, records: list[Any], vectors: list[Any] | None, replace: bool) -> AddReport:
        if replace:
            return self.col.upsert(records, vectors=vectors)
        return self.col.add(records, vectors=vectors)

    def add_new(
        self, records: list[Any], vectors: list[Any] | None, spans: list[Any] | None = None
    ) -> tuple[AddReport, int]:
        """Adds the records whose id the shard does not hold yet (a resent batch after a
        restart adds only what its first attempt did not commit). Returns (report, skipped).
        ``spans``: with ``vectors``, their passage spans (as Collection.add's)."""
        ids = [_as_record(r, i)[0] for i, r in enumerate(records)]
        have = {i for i, r in zip(ids, self.col.get_many(ids), strict=True) if r is not None}
        keep = [j for j, i in enumerate(ids) if i not in have]
        if not keep:
            return AddReport(), len(ids)
        recs = [records[j] for j in keep]
        vecs = [vectors[j] for j in keep] if vectors is not None else None
        sps = [spans[j] for j in keep] if spans is not None else None
        return self.col.add(recs, vectors=vecs, spans=sps), len(ids) - len(keep)

    def delete(self, ids: list[str] | None, where: Any) -> int:
        return self.col.delete(ids, where=where)

    def missing(self, ids: list[str]) -> list[str]:
        return [i for i, r in zip(ids, self.col.get_many(ids), strict=True) if r is None]

    def get_many(self, ids: list[str]) -> list[Record | None]:
        return self.col.get_many(ids)

    def ids(self, where: Any) -> list[str]:
        return self.col.ids(where)

    def count(self, where: Any) -> int:
        return self.col.count(where)

    def stats(self) -> dict[str, Any]:
        return self.col.stats()

    def verify(self) -> None:
        self.col.verify()

    def compact(self, retrain: bool) -> None:
        self.col.compact(retrain)

    def close(self) -> None:
        self.col.close()


def _pack(value: Any) -> bytes:
    """A compiled-graph message: the value pickled by latix, so that the channel carries one
    ``bytes`` object. Measured (benches/bench_ray.py --only search, attribution): Ray's own
    channel serialisation of a request holding a (32, 384) float32 query costs ~0.3 ms more
    per call than these bytes, and of a shard's 17 KB answer ~0.35 ms more (pickle itself
    takes ~0.07 ms for both)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class _Failed:
    """An exception raised by a shard's own code during a compiled-graph call (returned, not
    raised, so that the graph is not torn down by a bad argument)."""

    error: Exception


_ACTOR: Any = None
_ACTOR_LOCK = threading.Lock()


def _ray() -> Any:
    return require("ray", "ray", purpose="sharded collections (latix.distributed)")


def _actor_class() -> Any:
    global _ACTOR
    with _ACTOR_LOCK:
        if _ACTOR is None:
            # num_cpus=0: shard actors are scheduled wherever the cluster has room (their
            # search threads and encoder sessions are sized by n_threads / encoder_threads).
            _ACTOR = _ray().remote(num_cpus=0)(_ShardServer)
        return _ACTOR


def _cause(e: BaseException) -> BaseException:
    """The user-level exception inside a Ray task error (the shard's own LatixError)."""
    c = getattr(e, "cause", None)
    return c if isinstance(c, BaseException) else e
