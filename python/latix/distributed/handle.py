"""The sharded collection handle (:class:`ShardedCollection`): lifecycle, fan-out (compiled
graph or plain actor calls, retries, partial results), merged search, routed reads and writes,
and the resumable corpus stream that :func:`latix.distributed.build` runs."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from latix import filters as flt
from latix.collection import (
    AddReport,
    BatchResults,
    Collection,
    CompressionArg,
    EncodedText,
    FloatArray,
    Hit,
    Mode,
    Passages,
    Record,
    _as_query_lists,
    _as_record,
    _check_batch_args,
    _check_id,
    _fuse,
    _hybrid_params,
    _search_options,
    remove_collection,
)
from latix.distributed.actor import _actor_class, _cause, _Failed, _pack, _ray
from latix.distributed.manifest import _FORMAT, _VERSION, MANIFEST, _read_manifest, _write_manifest
from latix.distributed.results import (
    BuildReport,
    ShardedBatchResults,
    ShardedHits,
    ShardUnavailableError,
    ShardWriteError,
    _empty,
    _merge,
)
from latix.distributed.routing import ROUTING, shard_of
from latix.errors import (
    AlreadyExistsError,
    CorruptedIndexError,
    InvalidArgumentError,
    LatixError,
    NotFoundError,
)
from latix.filters import FieldType
from latix.index import _codec_bytes_of

if TYPE_CHECKING:
    from latix.encoder import Encoder


_DEFAULT_PASSAGES = Passages()  # Collection.create's default (frozen, so one shared value)


def _retry_pause(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th resend (1-based) to a shard whose actor died:
    0.5, 1.5, 4.5, then 5 s. Ray restarts the actor in a new worker process (Python, latix and
    the shard reopened), seconds on a loaded machine; a resend before Ray has seen the death goes
    to the dead instance and fails again, so quick resends (0.2 / 0.4 / 0.6 s, as before) could
    spend every retry on one death (seen in a test, with the machine's two cores busy)."""
    return min(0.5 * 3.0 ** (attempt - 1), 5.0)


class ShardedCollection:
    """A sharded collection: one latix Collection per shard, each served by a Ray actor, with
    :class:`~latix.collection.Collection`'s search / add / upsert / delete / get.

    Open one with :meth:`open`, build one with :func:`build` (or :meth:`create`, then
    :meth:`add` / :meth:`add_corpus`). Ray must be installed (``pip install 'latix[ray]'``); the
    handle joins the running Ray cluster (``ray.init`` first, or Ray starts a local one).

    Example::

        import latix.distributed as ld

        sc = ld.build("corpus.jsonl", "papers.sharded", n_shards=4)
        hits = sc.search("insulin resistance", k=10, mode="hybrid", where={"year": {"$gte": 2020}})
        sc.add([{"id": "new", "text": "..."}]); sc.delete(["old"]); sc.get("new")
        sc.close()                                     # stops the shard actors
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        actors: list[Any],
        *,
        n_threads: int | None,
        encoder_threads: int | None,
        max_restarts: int,
        retries: int,
        retry_timeout: float,
        compiled: bool = True,
    ) -> None:
        self._path = path
        self._manifest = manifest
        self._actors = actors
        self._n_threads = n_threads
        self._encoder_threads = encoder_threads
        self._max_restarts = max_restarts
        self._retries = retries
        self._retry_timeout = retry_timeout
        self._encoder: Encoder | None = None
        self._enc_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._schema: dict[str, FieldType] | None = None
        self._closed = False
        self._compiled = compiled
        self._graph: Any = None  # the compiled fan-out graph (None: plain actor calls)
        self._graph_lock = threading.Lock()
        self._graph_due = compiled  # compile (again) at the next fan-out
        #: Why the last compile of the fan-out graph failed (None: it did not).
        self.graph_error: str | None = None
        #: The report of the last :func:`build` / :meth:`add_corpus` through this handle.
        self.last_build: BuildReport | None = None

    # ------------------------------------------------------------------------------ lifecycle

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a shard manifest."""
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        n_shards: int,
        model: str | os.PathLike[str] | None = "default",
        encoder: Encoder | None = None,
        dim: int | None = None,
        compression: CompressionArg = "auto",
        dtype: Literal["float16", "float32"] = "float16",
        schema: Mapping[str, FieldType] | None = None,
        passages: Passages | None = _DEFAULT_PASSAGES,
        codec: Any = None,
        **open_options: Any,
    ) -> ShardedCollection:
        """Creates an empty sharded collection: ``n_shards`` collections and the manifest.

        ``model``, ``encoder``, ``dim``, ``compression``, ``dtype``, ``schema``, ``passages``
        and ``codec`` are those of :meth:`latix.Collection.create`, for every shard (the model
        is loaded once).

        Args:
            path: the directory (must not exist, or be empty; one left by an interrupted create
                is created again).
            n_shards: number of shards (1..4096).
            codec: a trained codec every shard starts with (shared by all shards: bytes from
                :func:`latix.train_codec` or :meth:`latix.Index.codec_bytes`, a codec file, an
                Index or a Collection); None: each compressed shard trains its own.
            **open_options: options of :meth:`open`.

        Returns:
            The open handle.

        Raises:
            AlreadyExistsError: ``path`` holds a collection or other files.
            InvalidArgumentError: a bad ``n_shards`` or any argument Collection.create refuses.
        """
        if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= 4096:
            raise InvalidArgumentError(f"n_shards must be an int in 1..4096, got {n_shards!r}")
        p = Path(os.fspath(path))
        if p.exists():
            if not p.is_dir():
                raise AlreadyExistsError(f"{p} exists and is not a directory")
            if (p / MANIFEST).is_file():
                try:
                    old = _read_manifest(p)
                except LatixError:
                    old = None
                if old is None or old.get("state") != "creating":
                    raise AlreadyExistsError(f"a sharded collection already exists at {p}")
                for s in old["shards"]:
                    remove_collection(p / s)
                (p / MANIFEST).unlink()
            elif any(q.name != MANIFEST + ".tmp" for q in p.iterdir()):
                raise AlreadyExistsError(f"{p} is a non-empty directory that is not a collection")
        p.mkdir(parents=True, exist_ok=True)
        if (model is not None or encoder is not None) and encoder is None:
            from latix.encoder import Encoder

            encoder = Encoder.load("default" if model is None else os.fspath(model))
        if codec is not None:
            if compression is None:
                raise InvalidArgumentError(
                    "a codec is given to compressed shards only (compression is None)"
                )
            if isinstance(codec, Collection):
                codec = codec.index
            codec = _codec_bytes_of(codec)  # read once, checked by each shard's create
        names = [f"shard-{i:04d}" for i in range(n_shards)]
        m: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "state": "creating",
            "n_shards": n_shards,
            "routing": ROUTING,
            "shards": names,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_manifest(p, m)  # first: an interrupted create is recognised and started over
        for s in names:
            Collection.create(
                p / s,
                model=model,
                encoder=encoder,
                dim=dim,
                compression=compression,
                dtype=dtype,
                schema=schema,
                passages=passages,
                codec=codec,
            ).close()
        first = Collection.open(p / names[0])
        m["model"] = first.model
        m["dim"] = first.dim
        m["model_fingerprint"] = first._meta.get("model_fingerprint")
        first.close()
        m["codec"] = "per-shard" if compression is not None and codec is None else None
        if codec is not None:
            m["codec"] = "shared"
        m["state"] = "ready"
        _write_manifest(p, m)
        sc = cls.open(p, **open_options)
        if encoder is not None:
            sc._encoder = encoder
        return sc

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        encoder_threads: int | None = 1,
        max_restarts: int = 3,
        retries: int = 3,
        retry_timeout: float = 60.0,
        compiled: bool = True,
    ) -> ShardedCollection:
        """Opens a sharded collection: reads the manifest and starts one actor per shard.

        Args:
            path: the directory holding ``sharded.json``.
            n_threads: search threads per shard (None: latix's default, all cores of the node).
            encoder_threads: encoder threads of each shard's model session (adds and builds).
            max_restarts: how many times Ray restarts a dead shard actor (-1: always, 0: never).
            retries: times a call to a shard whose actor died is sent again.
            retry_timeout: seconds a call may spend on retries.
            compiled: send searches (and every call that goes to all shards alike) through
                a Ray compiled graph (shared-memory channels to actor loops, compiled once per
                handle) instead of one Ray task per shard; any failure of the graph falls back
                to plain actor calls (with their retries) and the graph is compiled again after
                a call every shard answered. False: plain actor calls only.

        Raises:
            MissingDependencyError: Ray is not installed.
            NotFoundError: no manifest, or the collection's creation was interrupted.
            CorruptedIndexError: a damaged manifest or a shard that is not a collection.
            UnsupportedVersionError: a manifest of another format version.
        """
        ray = _ray()
        p = Path(os.fspath(path)).resolve()
        m = _read_manifest(p)
        if m.get("state") != "ready":
            raise NotFoundError(f"{p}: the sharded collection's creation was interrupted")
        for s in m["shards"]:
            if not Collection.exists(p / s):
                raise CorruptedIndexError(f"{p}: shard {s} is missing")
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        cls_ = _actor_class()
        actors = [
            cls_.options(max_restarts=max_restarts, max_task_retries=0).remote(
                str(p / s), encoder_threads, i
            )
            for i, s in enumerate(m["shards"])
        ]
        sc = cls(
            p,
            m,
            actors,
            n_threads=n_threads,
            encoder_threads=encoder_threads,
            max_restarts=max_restarts,
            retries=retries,
            retry_timeout=retry_timeout,
            compiled=compiled,
        )
        try:
            sc._call_all("ready")  # every shard opened (errors surface here, not later)
        except BaseException:
            sc.close()
            raise
        return sc

    def close(self) -> None:
        """Closes every shard (releasing its write lock) and stops the shard actors.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = _ray()
        with self._graph_lock:
            self._drop_graph()
        refs = []
        for a in self._actors:
            try:
                refs.append(a.close.remote())
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close
                pass
        for r in refs:
            try:
                ray.get(r, timeout=30)
            except Exception:  # noqa: BLE001 - ditto
                pass
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedCollection({str(self._path)!r}, n_shards={self.n_shards})"

    # ------------------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The sharded collection's directory."""
        return self._path

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return int(self._manifest["n_shards"])

    @property
    def shard_paths(self) -> list[Path]:
        """Each shard's collection directory, in shard order."""
        return [self._path / s for s in self._manifest["shards"]]

    @property
    def dim(self) -> int:
        """Dimension of the token vectors."""
        return int(self._manifest["dim"])

    @property
    def encoder(self) -> Encoder:
        """The collections' model, loaded in this process (on first use) to encode queries.

        Raises:
            InvalidArgumentError: the collection was created without a model.
        """
        return self._get_encoder()

    def shard_of(self, id: str) -> int:
        """The shard owning record ``id`` (:func:`shard_of`)."""
        return shard_of(_check_id(id, "shard_of"), self.n_shards)

    def shard_pids(self) -> list[int]:
        """The process id of each shard's actor (for monitoring and fault tests)."""
        return [int(x) for x in self._call_all("pid")[0]]

    def _check_open(self) -> None:
        if self._closed:
            from latix.errors import IndexClosedError

            raise IndexClosedError(f"the sharded collection at {self._path} is closed")

    def _get_encoder(self) -> Encoder:
        if self._encoder is None:
            with self._enc_lock:
                if self._encoder is None:
                    spec = self._manifest.get("model")
                    if spec is None:
                        raise InvalidArgumentError(
                            f"{self._path} was created without a model: pass query vectors"
                        )
                    from latix.encoder import Encoder

                    enc = Encoder.load(str(spec))
                    fp = self._manifest.get("model_fingerprint")
                    if fp is not None and enc.fingerprint != fp:
                        raise InvalidArgumentError(
                            f"model {spec} is not the model {self._path} was built with"
                        )
                    self._encoder = enc
        return self._encoder

    # ------------------------------------------------------------------------------ fan-out

    def _call(
        self, calls: Mapping[int, tuple[str, tuple[Any, ...]]], allow_partial: bool = False
    ) -> tuple[dict[int, Any], list[int], list[int]]:
        """Sends ``calls`` (shard -> (method, args)) in parallel; returns (results, missing
        shards, retried shards). A call whose actor died is sent again (the restarted actor
        reopens its shard) up to ``retries`` times; errors raised by the shard's own code
        propagate as they are."""
        self._check_open()
        ray = _ray()
        rex = ray.exceptions
        dead = (rex.RayActorError, getattr(rex, "ActorUnavailableError", rex.RayActorError))
        refs = {s: getattr(self._actors[s], m).remote(*a) for s, (m, a) in calls.items()}
        try:  # the common case: every shard answers (one wait for all of them)
            return dict(zip(refs, ray.get(list(refs.values())), strict=True)), [], []
        except (*dead, rex.RayTaskError):
            pass  # find out which shard failed, one by one (answers already in are kept)
        out: dict[int, Any] = {}
        missing: list[int] = []
        retried: list[int] = []
        tries = dict.fromkeys(calls, 0)
        deadline = time.monotonic() + self._retry_timeout
        while refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=1)
            s = next(s for s, r in refs.items() if r == ready[0])
            del refs[s]
            try:
                out[s] = ray.get(ready[0])
            except dead as e:
                if tries[s] < self._retries and time.monotonic() < deadline:
                    tries[s] += 1
                    if s not in retried:
                        retried.append(s)
                    time.sleep(min(_retry_pause(tries[s]), max(0.0, deadline - time.monotonic())))
                    m, a = calls[s]
                    refs[s] = getattr(self._actors[s], m).remote(*a)
                    continue
                if allow_partial:
                    missing.append(s)
                    continue
                raise ShardUnavailableError(
                    f"shard {s} of {self._path} did not answer after {tries[s]} retries: {e}",
                    [s],
                ) from None
            except rex.RayTaskError as e:
                raise _cause(e) from None
        return out, sorted(missing), sorted(retried)

    def _call_all(self, method: str, *args: Any) -> tuple[list[Any], list[int]]:
        res, _, retried = self._fanout(method, args)
        return [res[s] for s in range(self.n_shards)], retried

    def _fanout(
        self, method: str, args: tuple[Any, ...], allow_partial: bool = False
    ) -> tuple[dict[int, Any], list[int], list[int]]:
        """The same call on every shard (as :meth:`_call`): through the compiled graph when
        there is one, else (and after any failure of the graph) as one actor call per shard."""
        self._check_open()
        failed: list[int] = []
        if self._compiled:
            with self._graph_lock:
                out, failed = self._graph_call(method, args)
            if out is not None:
                return out, [], []
        res, missing, retried = self._call(
            {s: (method, args) for s in range(self.n_shards)}, allow_partial
        )
        if self._compiled and not missing:
            self._graph_due = True  # every shard answered: worth compiling again
        return res, missing, sorted(set(retried) | set(failed))

    def _compile(self) -> Any:
        """Compiles the fan-out graph: one input (a ``(method, args)`` request) read by every
        shard actor's ``dispatch`` loop, all answers returned together."""
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as inp:
            dag = MultiOutputNode([a.dispatch.bind(inp) for a in self._actors])
        return dag.experimental_compile()

    def _drop_graph(self) -> None:
        g, self._graph = self._graph, None
        if g is not None:
            try:
                g.teardown()
            except Exception:  # noqa: BLE001 - a graph whose actor died is gone already
                pass

    def _graph_call(
        self, method: str, args: tuple[Any, ...]
    ) -> tuple[dict[int, Any] | None, list[int]]:
        """One compiled-graph execution (the caller holds ``_graph_lock``). Returns (answers
        by shard, []) or (None, shards whose actor failed) when the caller must fall back to
        plain calls; an error of a shard's own code is raised as it is."""
        ray = _ray()
        if self._graph is None:
            if not self._graph_due:
                return None, []
            self._graph_due = False
            try:
                self._graph = self._compile()
                self.graph_error = None
            except Exception as e:  # noqa: BLE001 - plain calls still work
                self.graph_error = f"{type(e).__name__}: {e}"
                return None, []
        try:
            vals = [pickle.loads(b) for b in ray.get(self._graph.execute(_pack((method, args))))]
        except Exception as e:  # noqa: BLE001 - an actor died or a channel broke
            self._drop_graph()
            return None, self._shards_of_error(e)
        for v in vals:
            if isinstance(v, _Failed):
                raise v.error
        return dict(enumerate(vals)), []

    def _shards_of_error(self, e: BaseException) -> list[int]:
        """The shards a Ray error names (by actor id); every shard when it names none."""
        aid = getattr(e, "actor_id", None)
        for s, a in enumerate(self._actors):
            try:
                if aid is not None and a._actor_id.hex() == str(aid):
                    return [s]
            except Exception:  # noqa: BLE001 - private attribute; fall back to all
                break
        return list(range(self.n_shards))

    # ------------------------------------------------------------------------------ search

    def search(
        self,
        query: str | Sequence[str] | None = None,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        explain: bool = False,
        query_vectors: FloatArray | Sequence[FloatArray] | None = None,
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
        allow_partial: bool = False,
    ) -> Any:
        """Searches every shard and merges: the arguments and hits of
        :meth:`latix.Collection.search` (see the module documentation for how each mode
        merges).

        ``query``, ``k``, ``where``, ``mode``, ``explain``, ``query_vectors``, ``n_threads``,
        ``fusion``, ``alpha``, ``nprobe``, ``refine`` and ``rerank`` are those of
        :meth:`latix.Collection.search` (``n_threads``: per shard; default the handle's).

        Args:
            allow_partial: when a shard does not answer (after the retries), return what the
                other shards found, flagged, instead of raising.

        Returns:
            For one query a :class:`ShardedHits` (a list of hits, best first, with ``partial``
            and ``missing_shards``); for a list of queries, a list of them.

        Raises:
            InvalidArgumentError, FilterError: as Collection.search.
            ShardUnavailableError: a shard did not answer (without ``allow_partial``).
        """
        single, qs, qv = _as_query_lists(query, query_vectors)
        res = self.search_batch(
            qs,
            k,
            where=where,
            mode=mode,
            query_vectors=qv,
            n_threads=n_threads,
            fusion=fusion,
            alpha=alpha,
            nprobe=nprobe,
            refine=refine,
            rerank=rerank,
            allow_partial=allow_partial,
        )
        out = [res.hits(i) for i in range(len(res))]
        if explain and qs is not None and self._manifest.get("model") is not None:
            out = [self._explain(qs[i], hs) for i, hs in enumerate(out)]
        wrapped = [ShardedHits(h, res.missing_shards, res.retried_shards) for h in out]
        return wrapped[0] if single else wrapped

    def _explain(self, query: str, hits: list[Hit]) -> list[Hit]:
        by: dict[int, list[int]] = {}
        for j, h in enumerate(hits):
            by.setdefault(self.shard_of(h.id), []).append(j)
        res, _, _ = self._call(
            {s: ("explain", (query, [hits[j] for j in js])) for s, js in by.items()}
        )
        out = list(hits)
        for s, js in by.items():
            for j, h in zip(js, res[s], strict=True):
                out[j] = h
        return out

    def search_batch(
        self,
        queries: Sequence[str] | None = None,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode = "late",
        query_vectors: Sequence[FloatArray] | None = None,
        include: Sequence[Literal["text", "metadata"]] = ("text", "metadata"),
        n_threads: int | None = None,
        fusion: Literal["convex", "rrf"] | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        refine: int | None = None,
        rerank: bool | None = None,
        allow_partial: bool = False,
    ) -> ShardedBatchResults:
        """:meth:`latix.Collection.search_batch` over every shard, merged (columnar results).

        ``queries``, ``k``, ``where``, ``mode``, ``query_vectors``, ``include``, ``n_threads``,
        ``fusion``, ``alpha``, ``nprobe``, ``refine`` and ``rerank`` are those of
        :meth:`latix.Collection.search_batch`.

        Args:
            allow_partial: see :meth:`search`.

        Returns:
            A :class:`ShardedBatchResults`.
        """
        self._check_open()
        k, queries = _check_batch_args(mode, k, queries, query_vectors, include)
        if where is not None:
            self._check_where(where)  # a malformed filter fails here, once
        hp = _hybrid_params(fusion, alpha)
        opts = _search_options(nprobe, refine, rerank)  # checked once, before the fan-out
        nt = n_threads if n_threads is not None else self._n_threads
        qv: list[Any] | None = None if query_vectors is None else list(query_vectors)
        if qv is None and mode != "keyword":
            assert queries is not None
            qv = self._get_encoder().encode_queries_packed(queries).to_list()  # encoded once
        n_q = len(queries) if queries is not None else len(qv or [])
        if mode != "hybrid":
            args = (
                queries if mode == "keyword" else None,
                qv,
                k,
                where,
                mode,
                nt,
                opts,
                tuple(include),
            )
            res, missing, retried = self._fanout("late_or_keyword", args, allow_partial)
            merged = _merge([res[s] for s in sorted(res)], n_q, k, include)
        else:
            assert queries is not None
            depth = max(k, int(hp["depth"]))
            hargs = (queries, qv, depth, where, nt, opts)
            res, missing, retried = self._fanout("hybrid_lists", hargs, allow_partial)
            merged = self._hybrid(res, n_q, k, depth, hp, include, allow_partial)
            missing = sorted(set(missing) | set(merged.missing_shards))
        merged.missing_shards = missing
        merged.partial = bool(missing)
        merged.retried_shards = retried
        return merged

    def _hybrid(
        self,
        res: dict[int, tuple[BatchResults, list[list[tuple[str, float]]]]],
        n_q: int,
        k: int,
        depth: int,
        hp: dict[str, Any],
        include: Sequence[str],
        allow_partial: bool,
    ) -> ShardedBatchResults:
        keys: dict[str, int] = {}  # record id -> fusion key (ids are unique across shards)
        names: list[str] = []

        def key(i: str) -> int:
            if i not in keys:
                keys[i] = len(names)
                names.append(i)
            return keys[i]

        fused: list[list[tuple[int, float, int, float, float]]] = []
        spans_of: dict[tuple[str, int], Any] = {}
        for q in range(n_q):
            late: list[tuple[float, int, int]] = []
            kw: list[tuple[float, int]] = []
            for s in sorted(res):
                lb, kb = res[s]
                for j in range(lb.n_hits(q)):
                    rid = str(lb.ids[q, j])
                    late.append((float(lb.scores[q, j]), key(rid), int(lb.passages[q, j])))
                    spans_of[(rid, int(lb.passages[q, j]))] = lb.spans[q][j]
                for rid, sc in kb[q]:
                    kw.append((sc, key(rid)))
            late.sort(key=lambda t: -t[0])
            kw.sort(key=lambda t: -t[0])
            fused.append(
                _fuse(
                    [(rk, sc, p) for sc, rk, p in late[:depth]],
                    [(rk, sc) for sc, rk in kw[:depth]],
                    k,
                    hp,
                )
            )
        want: dict[int, list[str]] = {}
        for lst in fused:
            for rk, *_ in lst:
                want.setdefault(shard_of(names[rk], self.n_shards), []).append(names[rk])
        rows: dict[str, tuple[str, dict[str, Any], Any]] = {}
        missing: list[int] = []
        if want:
            parts = {s: sorted(set(v)) for s, v in want.items()}
            if self._graph is not None:  # one more graph round trip (every shard; most idle)
                got, missing, _ = self._fanout("rows_of", (parts,), allow_partial)
            else:
                got, missing, _ = self._call(
                    {s: ("rows", (v,)) for s, v in parts.items()}, allow_partial
                )
            for part in got.values():
                rows.update(part)
        out = _empty(n_q, k, include)
        for q, lst in enumerate(fused):
            j = 0
            for rk, sc, p, ls, ks in lst:
                rid = names[rk]
                if rid not in rows:  # deleted since, or its shard did not answer
                    continue
                text, meta, spans = rows[rid]
                out.ids[q, j] = rid
                out.scores[q, j] = sc
                out.passages[q, j] = p
                out.late_scores[q, j] = ls
                out.keyword_scores[q, j] = ks
                if out.texts is not None:
                    out.texts[q].append(text)
                if out.metadata is not None:
                    out.metadata[q].append(meta)
                out.spans[q].append(
                    spans[p] if spans is not None and p < len(spans) else spans_of.get((rid, p))
                )
                j += 1
        out.missing_shards = missing
        return out

    # ------------------------------------------------------------------------------ reading

    def _fields(self) -> dict[str, FieldType]:
        if self._schema is None:
            parts, _ = self._call_all("schema")
            union: dict[str, FieldType] = {}
            for part in parts:
                union.update(part)
            self._schema = union
        return dict(self._schema)

    def _check_where(self, where: Mapping[str, Any]) -> None:
        """Parses a filter against the union schema (FilterError for a malformed one)."""
        try:
            flt.parse(where, self._fields())
        except flt.FilterError:  # the cached schema may predate another handle's new fields
            self._schema = None
            flt.parse(where, self._fields())

    @property
    def schema(self) -> dict[str, FieldType]:
        """Metadata field name -> type (the same on every shard)."""
        self._schema = None
        return self._fields()

    def get(self, id: str) -> Record:
        """The committed record with this id (asked of its shard only).

        Raises:
            NotFoundError: no such record.
        """
        r = self.get_many([id])[0]
        if r is None:
            raise NotFoundError(f"no record with id {id!r}")
        return r

    def get_many(self, ids: Sequence[str]) -> list[Record | None]:
        """The committed records with these ids (None where not found), in order."""
        want = [_check_id(x, f"ids[{i}]") for i, x in enumerate(ids)]
        by: dict[int, list[int]] = {}
        for j, x in enumerate(want):
            by.setdefault(shard_of(x, self.n_shards), []).append(j)
        res, _, _ = self._call({s: ("get_many", ([want[j] for j in js],)) for s, js in by.items()})
        out: list[Record | None] = [None] * len(want)
        for s, js in by.items():
            for j, r in zip(js, res[s], strict=True):
                out[j] = r
        return out

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and bool(id) and self.get_many([id])[0] is not None

    def __len__(self) -> int:
        """Number of committed records over all shards."""
        return self.count()

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of committed records (matching ``where``) over all shards."""
        return int(sum(self._call_all("count", where)[0]))

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the committed records (matching ``where``), shard by shard."""
        return [i for part in self._call_all("ids", where)[0] for i in part]

    def stats(self) -> dict[str, Any]:
        """Figures summed over the shards, plus each shard's own :meth:`Collection.stats`."""
        parts, _ = self._call_all("stats")
        n_tok = sum(int(p["n_tokens"]) for p in parts)
        b = sum(int(p["bytes_on_disk"]) for p in parts)
        return {
            "n_shards": self.n_shards,
            "n_records": sum(int(p["n_records"]) for p in parts),
            "n_passages": sum(int(p["n_passages"]) for p in parts),
            "n_tokens": n_tok,
            "bytes_on_disk": b,
            "bytes_per_token": b / n_tok if n_tok else None,
            "shards": parts,
        }

    def verify(self) -> None:
        """:meth:`Collection.verify` of every shard, and that each record is in its shard.

        Raises:
            CorruptedIndexError: naming the shard and what differs.
        """
        self._call_all("verify")
        for s, part in enumerate(self._call_all("ids", None)[0]):
            wrong = [i for i in part if shard_of(i, self.n_shards) != s]
            if wrong:
                raise CorruptedIndexError(
                    f"shard {s} holds {len(wrong)} records routed elsewhere (e.g. {wrong[:3]})"
                )

    def compact(self, retrain: bool = False) -> None:
        """:meth:`Collection.compact` on every shard, in parallel."""
        with self._wlock:
            self._call_all("compact", retrain)

    # ------------------------------------------------------------------------------ writing

    def _route_records(
        self, records: Iterable[Any], vectors: Sequence[Any] | None, drop_bad_metadata: bool
    ) -> tuple[dict[int, tuple[list[Any], list[Any] | None]], dict[str, FieldType], int]:
        """Checks records (ids, metadata against the union schema) and groups them by shard."""
        if isinstance(records, str | bytes | Mapping):
            raise InvalidArgumentError("records must be a list (or iterable) of records")
        recs = list(records)
        if vectors is not None and len(vectors) != len(recs):
            raise InvalidArgumentError(
                f"{len(recs)} records but {len(vectors)} vectors; they must match"
            )
        schema = self._fields()
        new: dict[str, FieldType] = {}
        seen: set[str] = set()
        by: dict[int, tuple[list[Any], list[Any] | None]] = {}
        dropped = 0
        for i, r in enumerate(recs):
            rid, text, meta = _as_record(r, i)
            if rid in seen:
                raise InvalidArgumentError(f"records[{i}]: id {rid!r} appears twice in the call")
            seen.add(rid)
            if drop_bad_metadata:
                kept: dict[str, Any] = {}
                for f, v in (meta or {}).items():
                    try:
                        st, nf = flt.normalize_metadata({f: v}, {**schema, **new})
                    except flt.MetadataError:
                        dropped += 1
                        continue
                    new.update(nf)
                    kept.update(st)
                meta = kept
            else:
                _, nf = flt.normalize_metadata(meta, {**schema, **new}, f"records[{i}]")
                new.update(nf)
            s = shard_of(rid, self.n_shards)
            lst, vl = by.setdefault(s, ([], [] if vectors is not None else None))
            lst.append(Record(rid, text, dict(meta or {})))
            if vl is not None and vectors is not None:
                vl.append(vectors[i])
        return by, new, dropped

    def _declare(self, new: Mapping[str, FieldType]) -> None:
        if new:
            self._call({s: ("declare_fields", (dict(new),)) for s in range(self.n_shards)})
            self._schema = None

    def _write_parts(self, calls: dict[int, tuple[str, tuple[Any, ...]]]) -> dict[int, Any]:
        """Runs one write per shard in parallel; if any fails, ShardWriteError names the
        shards that committed (or the shard's own error when it was the only one)."""
        ray = _ray()
        refs = {s: getattr(self._actors[s], m).remote(*a) for s, (m, a) in calls.items()}
        ok: dict[int, Any] = {}
        bad: dict[int, Exception] = {}
        for s, r in refs.items():
            try:
                ok[s] = ray.get(r)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                c = _cause(e)
                bad[s] = c if isinstance(c, Exception) else e
        if bad:
            if not ok and len(bad) == 1:
                raise next(iter(bad.values()))
            raise ShardWriteError(
                f"the write failed on shards {sorted(bad)} ({next(iter(bad.values()))}); "
                f"shards {sorted(ok)} committed their part",
                sorted(ok),
                bad,
            )
        return ok

    def add(
        self,
        records: Iterable[Any],
        *,
        vectors: Sequence[FloatArray | Sequence[FloatArray]] | None = None,
    ) -> AddReport:
        """Adds records, each to its shard (encoded there by the shard's model, or ``vectors``
        as given); each shard's part is durable when the call returns.

        Args:
            records: as :meth:`latix.Collection.add`.
            vectors: as :meth:`latix.Collection.add` (one entry per record).

        Returns:
            The shards' :class:`~latix.collection.AddReport` merged.

        Raises:
            AlreadyExistsError: an id is already in the collection (checked on every owning
                shard before anything is written).
            InvalidArgumentError, MetadataError: as Collection.add (checked before writing).
            ShardWriteError: some shards failed after others committed.
        """
        return self._add(records, vectors, replace=False)

    def upsert(
        self,
        records: Iterable[Any],
        *,
        vectors: Sequence[FloatArray | Sequence[FloatArray]] | None = None,
    ) -> AddReport:
        """Adds records, replacing those whose id exists (see :meth:`add`)."""
        return self._add(records, vectors, replace=True)

    def _add(self, records: Iterable[Any], vectors: Any, replace: bool) -> AddReport:
        with self._wlock:
            by, new, _ = self._route_records(records, vectors, False)
            if not replace and by:
                res, _, _ = self._call(
                    {s: ("missing", ([r.id for r in recs],)) for s, (recs, _) in by.items()}
                )
                there = [
                    r.id for s, (recs, _) in by.items() for r in recs if r.id not in set(res[s])
                ]
                if there:
                    raise AlreadyExistsError(
                        "ids already in the collection (use upsert to replace): "
                        + ", ".join(repr(x) for x in there[:5])
                    )
            self._declare(new)
            ok = self._write_parts(
                {s: ("add", (recs, vl, replace)) for s, (recs, vl) in by.items()}
            )
            rep = AddReport()
            for s in sorted(ok):
                rep.merge(ok[s])
            return rep

    def delete(
        self, ids: Iterable[str] | None = None, *, where: Mapping[str, Any] | None = None
    ) -> int:
        """Deletes records by id (each from its shard) or by filter (on every shard).

        Args:
            ids: record ids (each must exist: checked on every owning shard first).
            where: a filter.

        Returns:
            The number of records deleted.

        Raises:
            NotFoundError: some ``ids`` are not in the collection (nothing is deleted).
            InvalidArgumentError: neither or both of ``ids`` and ``where``.
            ShardWriteError: some shards failed after others committed.
        """
        if (ids is None) == (where is None):
            raise InvalidArgumentError("pass ids or where (exactly one)")
        with self._wlock:
            if where is not None:
                self._check_where(where)
                ok = self._write_parts({s: ("delete", (None, where)) for s in range(self.n_shards)})
                return int(sum(ok.values()))
            if isinstance(ids, str):
                raise InvalidArgumentError("ids must be a list of str, got a single str")
            assert ids is not None
            want = [_check_id(x, f"ids[{i}]") for i, x in enumerate(ids)]
            if len(set(want)) != len(want):
                raise InvalidArgumentError("ids contains duplicates")
            by: dict[int, list[str]] = {}
            for x in want:
                by.setdefault(shard_of(x, self.n_shards), []).append(x)
            res, _, _ = self._call({s: ("missing", (v,)) for s, v in by.items()})
            missing = [x for s in by for x in res[s]]
            if missing:
                raise NotFoundError(
                    "ids not in the collection (nothing deleted): "
                    + ", ".join(repr(x) for x in missing[:5])
                )
            ok = self._write_parts({s: ("delete", (v, None)) for s, v in by.items()})
            return int(sum(ok.values()))

    def add_corpus(
        self,
        docs: Iterable[Any],
        *,
        batch_size: int = 64,
        vectors_fn: Callable[[list[Record]], list[Any]] | None = None,
        in_flight: int = 2,
        progress: Callable[[BuildReport], None] | None = None,
    ) -> BuildReport:
        """Streams a corpus into the shards, resumably (what :func:`build` runs).

        Records whose id a shard already holds are skipped (a rerun finishes an interrupted
        build), as are duplicate ids and empty texts; metadata values of an unsupported type
        or of a type differing from the field's are dropped and counted. Per shard, records
        are gathered in windows of ``4 * batch_size``, sorted by text length and cut into
        batches of ``batch_size``, each encoded by the shard's actor and added as one commit.

        Args:
            docs: records in any form :meth:`latix.Collection.add` accepts (also
                :class:`latix.corpus.Document`).
            batch_size: records per encoder batch and commit.
            vectors_fn: computes the vectors of a batch of records in the driver (one entry
                per record, as ``Collection.add``'s ``vectors``, or a
                :class:`latix.EncodedText`: vectors with their passage spans) instead of the
                shards' model.
            in_flight: batches queued per shard actor (keeps every actor busy while the
                driver reads the corpus).
            progress: called with the report so far after each batch is committed.

        Returns:
            A :class:`BuildReport`.

        Raises:
            ShardUnavailableError: a shard actor died more than ``retries`` times in a row.
        """
        if batch_size < 1 or in_flight < 1:
            raise InvalidArgumentError("batch_size and in_flight must be >= 1")
        ray = _ray()
        rex = ray.exceptions
        dead = (rex.RayActorError, getattr(rex, "ActorUnavailableError", rex.RayActorError))
        t0 = time.perf_counter()
        rep = BuildReport(per_shard=[0] * self.n_shards)
        with self._wlock:
            have = set(self.ids())
            seen: set[str] = set()
            window = 4 * batch_size
            buf: dict[int, list[Record]] = {s: [] for s in range(self.n_shards)}
            pending: dict[Any, tuple[int, list[Record], Any, Any, int]] = {}

            def submit(s: int, recs: list[Record], vl: Any, sp: Any, tries: int) -> None:
                ref = self._actors[s].add_new.remote(recs, vl, sp)
                pending[ref] = (s, recs, vl, sp, tries)

            def drain(limit: int) -> None:
                while len(pending) > limit:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    s, recs, vl, sp, tries = pending.pop(ready[0])
                    try:
                        r, skipped = ray.get(ready[0])
                    except dead:
                        if tries >= self._retries:
                            raise ShardUnavailableError(
                                f"shard {s} died {tries + 1} times during the build; run the "
                                "build again to resume",
                                [s],
                            ) from None
                        rep.n_retried += 1
                        time.sleep(_retry_pause(tries + 1))
                        submit(s, recs, vl, sp, tries + 1)
                        continue
                    except rex.RayTaskError as e:
                        raise _cause(e) from None
                    rep.n_indexed += r.n_added
                    rep.n_empty += r.n_empty
                    rep.n_already += skipped
                    rep.per_shard[s] += r.n_added
                    if progress is not None:
                        progress(rep)

            def flush(s: int, final: bool) -> None:
                recs = buf[s]
                if not recs or (not final and len(recs) < window):
                    return
                buf[s] = []
                recs.sort(key=lambda r: len(r.text))
                for a in range(0, len(recs), batch_size):
                    part = recs[a : a + batch_size]
                    if not part:
                        continue
                    by, new, dropped = self._route_records(part, None, True)
                    rep.n_metadata_dropped += dropped
                    self._declare(new)
                    cleaned = by[s][0]
                    vl = vectors_fn(cleaned) if vectors_fn is not None else None
                    sp = None
                    if vl is not None and any(isinstance(v, EncodedText) for v in vl):
                        sp = [v.spans if isinstance(v, EncodedText) else None for v in vl]
                        vl = [v.vectors if isinstance(v, EncodedText) else v for v in vl]
                    drain(in_flight * self.n_shards - 1)
                    submit(s, cleaned, vl, sp, 0)

            for i, d in enumerate(docs):
                rid, text, meta = _as_record(d, i)
                if rid in seen:
                    rep.n_duplicate += 1
                    continue
                seen.add(rid)
                if rid in have:
                    rep.n_already += 1
                    continue
                if vectors_fn is None and not text.strip():
                    rep.n_empty += 1
                    continue
                s = shard_of(rid, self.n_shards)
                buf[s].append(Record(rid, text, dict(meta or {})))
                flush(s, False)
            for s in range(self.n_shards):
                flush(s, True)
            drain(0)
        rep.seconds = time.perf_counter() - t0
        self.last_build = rep
        return rep
