"""A Ray Serve deployment of ``latix serve``'s JSON API, for a sharded or a plain collection
(``latix[ray]`` extra, which installs ``ray[serve]``).

Example::

    import ray
    from ray import serve
    from latix.distributed.serve import deployment

    ray.init()
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(deployment("papers.sharded", num_replicas=1), route_prefix="/")
    # POST http://127.0.0.1:8000/search {"query": "insulin resistance", "k": 10}
    serve.shutdown()

**One API.** Each replica runs the app of :func:`latix.serve.create_app` (the same routes,
request and response models, validation, errors, query micro-batching and readiness) over the
collection it opens when it starts: a :class:`~latix.distributed.ShardedCollection` when the
directory holds a shard manifest (the replica is then the handle's driver: it encodes each query
once and fans it out to the shard actors it starts), else a :class:`latix.Collection`. Ray
Serve's proxy takes the HTTP requests and passes them to the replicas' ASGI app.

**Faults.** A shard actor that dies is restarted and the search sent again (the handle's
retries); a shard that still cannot answer makes the request fail with 503
``ShardUnavailableError`` naming it, never a shorter list (``allow_partial`` is not used). A
replica that dies is restarted by Serve (it opens the collection again); requests it was
answering fail with a 5xx from the proxy, and new ones go to the live replicas.

**Writes.** Writes of one replica are serialised (one writer thread, in arrival order, each
durable when it is acknowledged), as in ``latix serve``. A plain collection has one writer
process: with more than one replica, the writes of all but one get 503 (the index's write lock),
so serve a plain collection that takes writes with one replica. A sharded handle's shard actors
are per replica, and so are the shards' write locks: the same holds for sharded writes.

**Shutdown.** ``serve.delete`` / ``serve.shutdown`` run the app's shutdown (not ready, queued
writes finished) and close the collection, which for a sharded one stops its shard actors.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from latix._optional import require
from latix.collection import AddReport, Collection, Record
from latix.distributed.handle import ShardedCollection

__all__ = ["deployment", "ServedShards", "open_served"]


class ServedShards:
    """A :class:`ShardedCollection` with the async surface :func:`latix.serve.create_app` uses
    of a :class:`latix.Collection` (``asearch``, ``aadd``, ... run in threads; writes in one
    writer thread, in call order).

    Args:
        handle: the open sharded collection (closed by :meth:`close`).
    """

    def __init__(self, handle: ShardedCollection) -> None:
        self.handle = handle
        self._executor: Executor | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="latix-shard-writer")

    @property
    def model(self) -> str | None:
        """The collections' model (None: vectors only)."""
        m = self.handle._manifest.get("model")
        return None if m is None else str(m)

    @property
    def _encoder(self) -> Any:
        return self.handle._encoder

    @property
    def encoder(self) -> Any:
        """The query encoder (loaded in this process on first use)."""
        return self.handle.encoder

    def set_executor(self, executor: Executor | None) -> None:
        """The executor reads run in (None: the event loop's default)."""
        self._executor = executor

    async def _in_thread(self, write: bool, fn: Callable[..., Any], /, *a: Any, **kw: Any) -> Any:
        self.handle._check_open()
        ex = self._writer if write else self._executor
        return await asyncio.get_running_loop().run_in_executor(ex, lambda: fn(*a, **kw))

    def search_batch(self, queries: Sequence[str] | None = None, k: int = 10, **kw: Any) -> Any:
        """:meth:`ShardedCollection.search_batch` (raises rather than return a partial list)."""
        return self.handle.search_batch(queries, k, **kw)

    async def asearch(self, query: Any = None, k: int = 10, **kw: Any) -> list[Any]:
        """:meth:`ShardedCollection.search` in a thread."""
        res: list[Any] = await self._in_thread(False, self.handle.search, query, k, **kw)
        return res

    async def aadd(self, records: Iterable[Any], **kw: Any) -> AddReport:
        """:meth:`ShardedCollection.add` in the writer thread."""
        res: AddReport = await self._in_thread(True, self.handle.add, records, **kw)
        return res

    async def aupsert(self, records: Iterable[Any], **kw: Any) -> AddReport:
        """:meth:`ShardedCollection.upsert` in the writer thread."""
        res: AddReport = await self._in_thread(True, self.handle.upsert, records, **kw)
        return res

    async def adelete(
        self, ids: Iterable[str] | None = None, *, where: Mapping[str, Any] | None = None
    ) -> int:
        """:meth:`ShardedCollection.delete` in the writer thread."""
        res: int = await self._in_thread(True, self.handle.delete, ids, where=where)
        return res

    async def aget(self, id: str) -> Record:
        """:meth:`ShardedCollection.get` in a thread."""
        res: Record = await self._in_thread(False, self.handle.get, id)
        return res

    async def aget_many(self, ids: Sequence[str]) -> list[Record | None]:
        """:meth:`ShardedCollection.get_many` in a thread."""
        res: list[Record | None] = await self._in_thread(False, self.handle.get_many, ids)
        return res

    async def acount(self, where: Mapping[str, Any] | None = None) -> int:
        """:meth:`ShardedCollection.count` in a thread."""
        res: int = await self._in_thread(False, self.handle.count, where)
        return res

    async def astats(self) -> dict[str, Any]:
        """:meth:`ShardedCollection.stats` in a thread."""
        res: dict[str, Any] = await self._in_thread(False, self.handle.stats)
        return res

    def close(self) -> None:
        """Waits for queued writes, then closes the handle (stops its shard actors)."""
        self._writer.shutdown(wait=True)
        self.handle.close()


def open_served(path: str | os.PathLike[str], **open_options: Any) -> Collection | ServedShards:
    """Opens ``path`` for :func:`latix.serve.create_app`: a sharded collection (a shard
    manifest in it) as :class:`ServedShards`, else a :class:`latix.Collection`.

    Args:
        path: the collection directory.
        open_options: keyword arguments of :meth:`ShardedCollection.open` or
            :meth:`latix.Collection.open`.
    """
    if ShardedCollection.exists(path):
        return ServedShards(ShardedCollection.open(path, **open_options))
    return Collection.open(path, **open_options)


def deployment(
    path: str | os.PathLike[str],
    *,
    name: str = "latix",
    num_replicas: int = 1,
    ray_actor_options: Mapping[str, Any] | None = None,
    max_ongoing_requests: int = 64,
    open_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    max_batch: int = 16,
    batch_wait: float = 0.002,
    lone_threads: int | None = None,
    max_body_bytes: int | None = None,
) -> Any:
    """A Ray Serve application serving the collection at ``path`` with ``latix serve``'s JSON
    API (:mod:`latix.serve`): pass it to ``ray.serve.run``.

    Args:
        path: a sharded collection's directory (``sharded.json``) or a plain collection's; it
            must be reachable at this path from the nodes the replicas run on.
        name: the Serve deployment's name.
        num_replicas: replicas (each opens the collection; see the module docs for writes).
        ray_actor_options: the replicas' Ray options (default ``{"num_cpus": 0}``: the shard
            actors and the replica's threads share the node's cores, as in ``latix serve``).
        max_ongoing_requests: requests a replica takes at once (beyond them, the proxy queues).
        open_options: keyword arguments of :meth:`ShardedCollection.open` /
            :meth:`latix.Collection.open`.
        workers: as in :func:`latix.serve.create_app`.
        max_batch: as in :func:`latix.serve.create_app`.
        batch_wait: as in :func:`latix.serve.create_app`.
        lone_threads: as in :func:`latix.serve.create_app`.
        max_body_bytes: as in :func:`latix.serve.create_app`.

    Returns:
        A bound Serve application (``ray.serve.Application``).
    """
    require("ray", "ray.serve")
    from ray import serve

    from latix.serve import DEFAULT_MAX_BODY, create_app

    where = os.fspath(path)
    opts = dict(open_options or {})
    app_opts: dict[str, Any] = {
        "workers": workers,
        "max_batch": max_batch,
        "batch_wait": batch_wait,
        "lone_threads": lone_threads,
        "max_body_bytes": DEFAULT_MAX_BODY if max_body_bytes is None else max_body_bytes,
        "close_on_shutdown": True,
    }

    def build_app() -> Any:  # runs in each replica when it starts
        return create_app(open_served(where, **opts), **app_opts)  # type: ignore[arg-type]

    cls = serve.ingress(build_app)()
    dep = serve.deployment(
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=dict(ray_actor_options or {"num_cpus": 0}),
        max_ongoing_requests=max_ongoing_requests,
    )(cls)
    return dep.bind()
