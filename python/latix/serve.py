"""The HTTP service: a JSON API over one :class:`latix.Collection` (``latix serve COLLECTION``).

Endpoints (the OpenAPI schema is served at ``/openapi.json``, its browsable form at ``/docs``)::

    POST   /search          {"query": str | [str], "k": 10, "where": {...}, "mode": "late",
                             "explain": false}  ->  {"hits": [hit, ...]} (a list of such lists
                             for a list of queries); hit = {"id", "score", "text", "metadata",
                             "passage", "span", "late_score", "keyword_score", "explanation"}
    POST   /records         {"records": [{"id", "text", "metadata"}, ...]}  add (409 if an id
                             exists)  ->  the AddReport's counts
    PUT    /records         same body: upsert
    POST   /records/delete  {"ids": [...]} or {"where": {...}}  ->  {"deleted": n}
    DELETE /records/{id}    ->  {"deleted": 1}
    GET    /records/{id}    ->  {"id", "text", "metadata"}
    POST   /records/get     {"ids": [...]}  ->  {"records": [record or null, ...]}
    GET    /stats           the collection's stats
    GET    /health          liveness: 200 while the process serves
    GET    /ready           readiness: 200 once the model is loaded and warm, 503 while
                             starting or draining

**Errors.** Bad input is always a 4xx with ``{"error": type, "message": text}`` (plus
``"detail"`` for schema violations): 400 malformed JSON or an argument latix refuses (an unknown
filter field, a mistyped metadata value, a blank query), 404 unknown id or route, 405 wrong
method, 409 an id that exists (add), 413 a body over the limit, 422 a body that does not match
the schema (wrong types, unknown fields, ``k`` out of range). 5xx means the server failed (a
damaged file, an I/O error), never the request.

**Concurrency.** Handlers are ``async``; the blocking work (encoding, search, SQLite) runs in
threads and releases the GIL, so requests run on all cores. Query texts of concurrent requests are
micro-batched into one encoder call (:class:`QueryBatcher`; for fp32 query encoders only: an int8
one quantises each call's activations with one scale, which would make a query's vectors depend on
its batch-mates, so int8 queries are encoded one per call, concurrently): at most ``workers``
encoder calls run at once; texts arriving while all are busy queue, and a freed slot takes up to
``max_batch`` of them in one call. With no call running a text is encoded at once (no added
latency when idle); with a slot free but another call running, a batch starts when the queue
holds ``max_batch`` texts or its oldest has waited ``batch_wait`` seconds. A request with many
queries is cut into batches of ``max_batch`` queued in turn (FIFO), so a long request never
delays short ones by more than one batch. Each request is then searched in the read pool, which
also turns the hits into the JSON answer (orjson, straight from the result columns), so the event
loop only parses requests and moves bytes.

**A lone request on more threads (off by default).** With ``lone_threads`` above 1, a search
request that is the only one in flight encodes on a query session of ``lone_threads``
onnxruntime threads and searches with ``lone_threads`` threads; under concurrency each request
takes one thread for each. Each step (encode, then search) re-checks the number of search
requests in flight; unless ``lone_always``, the request also needs an idle core for the extra
threads when it starts (the kernel's count of runnable threads, ``/proc/loadavg``). The extra
session's threads sleep between parallel sections (``lone_spinning`` lets them spin-wait, as
onnxruntime does by default). It is off by default because it did not pay on the 2-core
machine it was built on (bench-results/serve-lone.md, serve-lone-split.md): for a short query
neither step ran faster on 2 threads even at their fastest calls (int8 encoding 1.82 ms
spinning / 2.15 ms sleeping vs 1.89 ms on 1 thread; search 1.28 vs 0.97 ms), on a loaded
machine the idle-core check never passed, and forced on it cost CPU (spinning: 2x the CPU and
1.8x the p50 of 1 thread; sleeping: 1.10x the CPU, 1.02x the p50). It changes how the work is
split, never the answer (the encoder's vectors are bit-equal across its sessions, and the
search's hits do not depend on its threads: tests/test_serve.py).
Writes go through the collection's one writer thread (:meth:`Collection.aadd` and friends), in
arrival order, each durable before it is acknowledged, while searches keep reading the last
committed state.

**Shutdown.** On SIGTERM / SIGINT uvicorn stops accepting connections and lets running requests
finish; then the app reports not ready, waits for queued writes and closes the collection. A write
is acknowledged only after its commit, so neither a graceful stop nor a ``kill -9`` loses an
acknowledged write (tests/test_serve.py kills the server during writes and checks).

**Processes.** One server process serves a collection: it is the collection's one writer, and its
threads use the cores (``--workers`` sets the number of search threads). Other processes may read
the same collection directory (e.g. more ``latix serve`` processes only searching), but their
writes would get 503 (the index's write lock).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt

from latix._optional import require

# The serve extra, imported here so that a missing package names the extra to install.
require("serve", "fastapi")
require("serve", "uvicorn")
require("serve", "orjson")

import orjson  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.encoders import jsonable_encoder  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StringConstraints  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from latix.collection import Collection, Hit  # noqa: E402
from latix.errors import (  # noqa: E402
    AlreadyExistsError,
    IndexClosedError,
    IndexLockedError,
    InvalidArgumentError,
    LatixError,
    NotFoundError,
)

__all__ = [
    "create_app",
    "run",
    "default_lone_threads",
    "QueryBatcher",
    "MAX_K",
    "MAX_QUERIES",
    "DEFAULT_MAX_BODY",
]

#: Largest ``k`` a search request may ask for.
MAX_K = 1000
#: Most queries in one search request.
MAX_QUERIES = 256
#: Most records in one write request.
MAX_RECORDS = 10_000
#: Default request body limit (bytes).
DEFAULT_MAX_BODY = 16 << 20
#: Longest query text (characters; the model reads 32 tokens of it anyway).
MAX_QUERY_CHARS = 10_000

Vectors = list[npt.NDArray[np.float32]]


# ----------------------------------------------------------------------------------------------
# micro-batching of query encoding


class QueryBatcher:
    """Collects the query texts of concurrent requests into shared encoder calls.

    At most ``max_inflight`` encoder calls run at once (one per core the server uses); texts
    that arrive while every slot is busy wait in a FIFO queue, and when a call ends the freed slot
    takes up to ``max_batch`` queued texts in one call. So the busier the encoder, the larger the
    batches (starting an extra call while all slots are busy, as an earlier version did after
    ``max_wait``, only made the calls share the cores: 1,788 calls for 1,850 queries at 16
    clients). When a slot is free: with no call running the queue is encoded at once (a lone
    request waits for nothing); with another call running, a batch starts once the queue holds
    ``max_batch`` texts or its oldest text has waited ``max_wait`` seconds, so that texts
    arriving close together share a call at a bounded added wait. A batch takes queued chunks
    in arrival order (never skipping ahead, so no text is starved); a request's texts are queued
    as chunks of at most ``max_batch``, so a long request cannot hold a slot for longer than one
    call and short requests behind it join the next free slot. If a batch fails, its chunks are
    encoded one by one, so a bad text fails only its own request.

    Must be used from one event loop (the app's).

    Args:
        encode: encodes a list of texts into one ``(n_tokens, dim)`` float32 array per text;
            runs in ``executor`` (it releases the GIL).
        executor: the threads encoder calls run in.
        max_wait: seconds a text may wait for batch-mates while an encoder slot is free.
        max_batch: texts per encoder call at most.
        max_inflight: encoder calls running at once at most; texts arriving beyond them wait
            for a free slot and are batched.
    """

    def __init__(
        self,
        encode: Callable[[list[str]], Vectors],
        executor: ThreadPoolExecutor,
        *,
        max_wait: float = 0.002,
        max_batch: int = 16,
        max_inflight: int = 2,
    ) -> None:
        # Finite: an infinite wait would hold a lone text forever while a slot is free.
        if max_batch < 1 or max_inflight < 1 or not 0 <= max_wait < float("inf"):
            raise InvalidArgumentError(
                "max_batch and max_inflight must be >= 1, max_wait finite and >= 0"
            )
        self._encode = encode
        self._executor = executor
        self.max_wait = float(max_wait)
        self.max_batch = int(max_batch)
        self.max_inflight = int(max_inflight)
        self._queue: collections.deque[tuple[list[str], asyncio.Future[Vectors], float]] = (
            collections.deque()
        )
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        #: Encoder calls made and texts encoded (texts / calls is the mean batch size).
        self.n_calls = 0
        self.n_texts = 0

    async def encode(self, texts: list[str]) -> Vectors:
        """The vectors of ``texts`` (one array per text, in order), encoded in shared batches."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Vectors]] = []
        now = loop.time()
        for i in range(0, len(texts), self.max_batch):
            f: asyncio.Future[Vectors] = loop.create_future()
            self._queue.append((texts[i : i + self.max_batch], f, now))
            futs.append(f)
        self._pump()
        parts = await asyncio.gather(*futs)
        return [v for p in parts for v in p]

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._inflight < self.max_inflight:
            while self._queue and self._queue[0][1].done():  # its request was cancelled
                self._queue.popleft()
            if not self._queue:
                return
            if self._inflight > 0 and not self._queued_at_least(self.max_batch):
                # A slot is free but another call runs: wait (bounded) for batch-mates.
                due = self._queue[0][2] + self.max_wait
                if loop.time() < due:
                    self._timer = loop.call_at(due, self._pump)
                    return
            batch: list[tuple[list[str], asyncio.Future[Vectors], float]] = []
            n = 0
            while self._queue and n + len(self._queue[0][0]) <= self.max_batch:
                item = self._queue.popleft()
                if item[1].done():
                    continue
                batch.append(item)
                n += len(item[0])
            if batch:
                self._start(batch)
        # Every slot is busy: the next _done pumps again (no timer, no extra call).

    def _queued_at_least(self, n: int) -> bool:
        """Whether the queue holds at least ``n`` texts of live requests."""
        total = 0
        for chunk, fut, _ in self._queue:
            if not fut.done():
                total += len(chunk)
                if total >= n:
                    return True
        return False

    def _start(self, batch: list[tuple[list[str], asyncio.Future[Vectors], float]]) -> None:
        loop = asyncio.get_running_loop()
        self._inflight += 1
        texts = [t for chunk, _, _ in batch for t in chunk]
        self.n_calls += 1
        self.n_texts += len(texts)
        task = loop.run_in_executor(self._executor, self._run, [c for c, _, _ in batch])
        task.add_done_callback(lambda t: self._done(t, batch))

    def _run(self, chunks: list[list[str]]) -> list[Vectors | BaseException]:
        """In a thread: one call for all chunks; if it fails, one call per chunk."""
        flat = [t for c in chunks for t in c]
        try:
            vecs = self._encode(flat)
        except Exception as e:  # noqa: BLE001 - each chunk gets its own outcome below
            if len(chunks) == 1:
                return [e]
            out: list[Vectors | BaseException] = []
            for c in chunks:
                try:
                    out.append(self._encode(c))
                except Exception as e2:  # noqa: BLE001 - reported to that chunk's request
                    out.append(e2)
            return out
        res: list[Vectors | BaseException] = []
        pos = 0
        for c in chunks:
            res.append(vecs[pos : pos + len(c)])
            pos += len(c)
        return res

    def _done(
        self,
        task: asyncio.Future[list[Vectors | BaseException]],
        batch: list[tuple[list[str], asyncio.Future[Vectors], float]],
    ) -> None:
        self._inflight -= 1
        try:
            results: list[Vectors | BaseException] = task.result()
        except BaseException as e:  # noqa: BLE001 - the executor itself failed
            results = [e] * len(batch)
        for (_, fut, _), r in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        self._pump()


# ----------------------------------------------------------------------------------------------
# request and response schemas

QueryText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)]
RecordId = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class _Body(BaseModel):
    # Unknown fields are errors (a misspelt "wehre" must not silently search unfiltered) and
    # types are strict ("10" is not an int, 1.0 is not an int, true is not an int).
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchRequest(_Body):
    """A search: one query text or a list of them."""

    query: QueryText | Annotated[list[QueryText], Field(min_length=1, max_length=MAX_QUERIES)]
    k: int = Field(10, ge=1, le=MAX_K, description="hits per query")
    where: dict[str, Any] | None = Field(None, description="metadata filter (latix.filters)")
    mode: Literal["late", "keyword", "hybrid"] = "late"
    explain: bool = Field(False, description="per query token, the document token that won")


class TokenMatchOut(BaseModel):
    """Why a hit scored: one query token and the document text that won its maximum."""

    query_token: str
    text: str
    start: int
    end: int
    score: float


class HitOut(BaseModel):
    """One search result."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    passage: int = 0
    span: list[int] | None = None
    late_score: float | None = None
    keyword_score: float | None = None
    explanation: list[TokenMatchOut] | None = None


class SearchResponse(BaseModel):
    """Hits best first; for a list of queries, one list per query."""

    hits: list[HitOut] | list[list[HitOut]]


class RecordIn(_Body):
    """A record to write."""

    id: RecordId
    text: str
    metadata: dict[str, Any] | None = None


class WriteRequest(_Body):
    """Records to add or upsert (one commit)."""

    records: Annotated[list[RecordIn], Field(min_length=1, max_length=MAX_RECORDS)]


class WriteResponse(BaseModel):
    """What a write did (latix.AddReport)."""

    n_added: int
    n_replaced: int
    n_empty: int
    n_passages: int
    n_tokens: int
    n_truncated: int
    skipped: list[str]


class DeleteRequest(_Body):
    """Records to delete: by ids or by filter (exactly one)."""

    ids: Annotated[list[RecordId], Field(min_length=1, max_length=MAX_RECORDS)] | None = None
    where: dict[str, Any] | None = None


class DeleteResponse(BaseModel):
    """How many records were deleted."""

    deleted: int


class GetRequest(_Body):
    """Records to fetch."""

    ids: Annotated[list[RecordId], Field(min_length=1, max_length=MAX_RECORDS)]


class RecordOut(BaseModel):
    """A stored record."""

    id: str
    text: str
    metadata: dict[str, Any]


class GetResponse(BaseModel):
    """The records, in request order (null for an id not found)."""

    records: list[RecordOut | None]


class ErrorOut(BaseModel):
    """An error: its type and a message saying what to change."""

    error: str
    message: str
    detail: list[Any] | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 404, 409, 413, 422, 503)
}


# ----------------------------------------------------------------------------------------------
# the app


def _error(status: int, kind: str, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _latix_status(e: LatixError) -> int:
    status = getattr(e, "http_status", None)  # an error that names its own (503: a shard down)
    if isinstance(status, int):
        return status
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, AlreadyExistsError):
        return 409
    if isinstance(e, IndexLockedError | IndexClosedError):
        return 503
    if isinstance(e, InvalidArgumentError):
        return 400
    return 500  # a damaged file, an I/O failure: the server's problem, not the request's


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413: at once from the
    Content-Length header, else while the body streams in (chunked uploads)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = -1
                if n < 0:
                    await _error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                    return
                if n > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        seen = 0
        limit = self.max_bytes

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    # Raised inside FastAPI's body parsing, which passes HTTPException through.
                    raise HTTPException(413, f"request body over the limit of {limit} bytes")
            return msg

        await self.app(scope, limited, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = _error(413, "too_large", f"request body over the limit of {self.max_bytes} bytes")
        await resp(scope, receive, send)


def _hit_dicts(hits: list[Hit]) -> list[dict[str, Any]]:
    return [h.to_dict() for h in hits]


#: The most threads one search may run on (the core's bound on ``n_threads``).
MAX_THREADS = 1024


def create_app(
    collection: Collection,
    *,
    workers: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    batch_wait: float = 0.002,
    max_batch: int = 16,
    search_threads: int = 1,
    lone_threads: int | None = None,
    lone_always: bool = False,
    close_on_shutdown: bool = False,
) -> FastAPI:
    """The ASGI app serving ``collection`` (run it with uvicorn, or test it with
    ``fastapi.testclient.TestClient``).

    Args:
        collection: an open collection (with a model for text queries).
        workers: threads that run searches (default: the number of CPUs); also the number of
            encoder calls that run at once (queries arriving beyond them wait and are batched).
        max_body_bytes: request bodies over this size get 413.
        batch_wait: seconds a query may wait for batch-mates while an encoder slot is free and
            another call runs (while every slot is busy it waits for the next free one).
        max_batch: query texts per encoder call at most.
        search_threads: threads per search call while other searches are in flight (1:
            parallelism comes from concurrent requests).
        lone_threads: threads for the encoder call and the search of a request that is the only
            search in flight (default :func:`default_lone_threads`: 1, off); the encoding uses
            them only if the collection's encoder has a query session of that many threads
            (``Encoder(query_threads=...)``, as :func:`run` builds it), else its default
            session.
        lone_always: give a lone request ``lone_threads`` even when the machine's other
            processes leave no core free for them (by default it then gets 1).
        close_on_shutdown: close the collection when the app shuts down (after queued writes).

    Returns:
        A FastAPI app.
    """
    n_workers = int(workers or os.cpu_count() or 2)
    if n_workers < 1:
        raise InvalidArgumentError(f"workers must be >= 1, got {workers!r}")
    if max_body_bytes < 1:
        raise InvalidArgumentError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
    n_lone = int(lone_threads if lone_threads is not None else default_lone_threads())
    if not 1 <= n_lone <= MAX_THREADS:
        # Checked here, not by the first lone search (which the core would refuse).
        raise InvalidArgumentError(
            f"lone_threads must be in 1..{MAX_THREADS}, got {lone_threads!r}"
        )
    col = collection
    # "active": search requests in flight (read and written on the event loop; read by the
    # worker threads, where a stale value only picks a thread count). "lone_encode": the
    # encoder's n_threads for a lone request (None: its default session).
    state: dict[str, Any] = {"ready": False, "batching": False, "active": 0, "lone_encode": None}
    # Steps that ran on n_lone threads (encoder calls, searches), for /stats; counted from the
    # worker threads, under a lock.
    lone_steps = {"encodes": 0, "searches": 0}
    lone_lock = threading.Lock()

    def count_lone(step: str) -> None:
        with lone_lock:
            lone_steps[step] += 1

    def lone() -> bool:
        """Whether the calling step (of a request) may use ``n_lone`` threads: it is the only
        search in flight, and the machine has ``n_lone - 1`` idle cores besides the caller's."""
        if state["active"] != 1 or n_lone < 2:
            return False
        return lone_always or _idle_cpus() >= n_lone - 1

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reads = ThreadPoolExecutor(n_workers, thread_name_prefix="latix-read")
        encs = ThreadPoolExecutor(n_workers + 2, thread_name_prefix="latix-encode")
        col.set_executor(reads)
        batcher: QueryBatcher | None = None
        if col.model is not None or col._encoder is not None:
            enc = col.encoder  # loads the model now, not at the first request
            if n_lone > 1 and n_lone in getattr(enc, "query_thread_counts", ()):
                state["lone_encode"] = n_lone

            def encode(texts: list[str]) -> Vectors:
                t = state["lone_encode"] if lone() else None
                if t is not None:
                    count_lone("encodes")
                return enc.encode_queries_packed(texts, n_threads=t).to_list()

            # An int8 query encoder (DynamicQuantizeMatMul) quantises activations with one scale
            # per call, so a query's vectors would depend on the queries batched with it (max
            # abs difference 0.03 measured; the top 10 of half the SciFact queries changed):
            # results must not depend on concurrent traffic, so int8 queries are encoded one per
            # call (still concurrently, on the encoder threads). fp32 is batch-independent.
            batching = max_batch > 1 and getattr(enc, "query_precision", "fp32") != "int8"
            state["batching"] = batching
            state["encoder"] = enc
            batcher = QueryBatcher(
                encode,
                encs,
                max_wait=batch_wait,
                max_batch=max_batch if batching else 1,
                max_inflight=n_workers,
            )
            await asyncio.get_running_loop().run_in_executor(encs, encode, ["warm up"])
            if state["lone_encode"] is not None:  # and the lone request's session
                await asyncio.get_running_loop().run_in_executor(
                    encs, lambda: enc.encode_queries(["warm up"], n_threads=n_lone)
                )
        state["batcher"] = batcher
        state["ready"] = True
        state["started"] = time.time()
        try:
            yield
        finally:
            state["ready"] = False
            encs.shutdown(wait=True)
            reads.shutdown(wait=True)
            col.set_executor(None)
            if close_on_shutdown:
                col.close()  # waits for queued writes first

    app = FastAPI(
        title="latix",
        summary="Late-interaction search over one latix collection",
        version=_version(),
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    app.state.latix = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Type, location and message only: echoing the input back could be large, and may hold
        # NaN / Infinity (which Python's JSON parser accepts and a JSON response cannot carry).
        errs = [
            {
                "type": str(e.get("type")),
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg")),
            }
            for e in exc.errors()
        ]
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(
                400, "bad_json", "the request body is not valid JSON", jsonable_encoder(errs)
            )
        msg = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in errs[:5]
        )
        return _error(422, "invalid_request", msg, errs)

    @app.exception_handler(LatixError)
    async def _latix(request: Request, exc: LatixError) -> JSONResponse:
        return _error(_latix_status(exc), type(exc).__name__, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return _error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))

    @app.post("/search", response_model=SearchResponse)
    async def search(req: SearchRequest) -> Response:
        """Searches the committed records (late interaction, keywords or both, filtered)."""
        state["active"] += 1
        try:
            return await _search(req)
        finally:
            state["active"] -= 1

    async def _search(req: SearchRequest) -> Response:
        single = isinstance(req.query, str)
        qs = [req.query] if isinstance(req.query, str) else list(req.query)
        for i, q in enumerate(qs):
            if not q.strip():
                raise InvalidArgumentError(f"query {i} is blank")
        if req.explain:
            hits = await col.asearch(
                qs, req.k, where=req.where, mode=req.mode, explain=True, n_threads=search_threads
            )
            out: list[list[dict[str, Any]]] = [_hit_dicts(h) for h in hits]  # type: ignore[arg-type]
        else:
            vecs = None
            encode_here = False
            # Decided once, before this request's first step: after a 2-thread encoding its
            # onnxruntime worker may still spin for a moment, and the kernel would count it as
            # another process's thread (the search step then only re-checks concurrency).
            wide = lone()
            batcher: QueryBatcher | None = state["batcher"]
            if req.mode != "keyword" and batcher is not None:
                if state["batching"] or len(qs) > 1:
                    vecs = await batcher.encode(qs)
                else:
                    # One query and no batching: the read thread encodes it before searching
                    # (one thread hop per request instead of two; the read pool has as many
                    # threads as the batcher has encoder slots, and queues FIFO like it).
                    encode_here = True
                    batcher.n_calls += 1
                    batcher.n_texts += 1

            def answer() -> bytes:
                # In the read thread: (encode,) search, then the hits straight from the columns
                # to JSON bytes (no Hit objects, orjson), so the event loop only moves bytes.
                # Thread counts are chosen per step from the searches in flight now.
                qv = vecs
                n_search = search_threads
                if encode_here:
                    t = state["lone_encode"] if wide and state["active"] == 1 else None
                    if t is not None:
                        count_lone("encodes")
                    qv = state["encoder"].encode_queries_packed(qs, n_threads=t).to_list()
                if wide and state["active"] == 1:
                    n_search = n_lone
                    count_lone("searches")
                res = col.search_batch(
                    qs,
                    req.k,
                    where=req.where,
                    mode=req.mode,
                    query_vectors=qv,
                    n_threads=n_search,
                )
                hits = [res.hit_dicts(i) for i in range(len(res))]
                return orjson.dumps({"hits": hits[0] if single else hits})

            body = await col._in_thread(False, answer)
            return Response(body, media_type="application/json")
        return JSONResponse({"hits": out[0] if single else out})

    @app.post("/records", response_model=WriteResponse, status_code=200)
    async def add(req: WriteRequest) -> dict[str, Any]:
        """Adds records (409 if an id exists); durable when it answers."""
        rep = await col.aadd([r.model_dump() for r in req.records])
        return _report(rep)

    @app.put("/records", response_model=WriteResponse)
    async def upsert(req: WriteRequest) -> dict[str, Any]:
        """Adds records, replacing those whose id exists; durable when it answers."""
        rep = await col.aupsert([r.model_dump() for r in req.records])
        return _report(rep)

    @app.post("/records/delete", response_model=DeleteResponse)
    async def delete(req: DeleteRequest) -> dict[str, Any]:
        """Deletes records by ids (404 and nothing deleted if one is missing) or by filter."""
        if (req.ids is None) == (req.where is None):
            raise InvalidArgumentError('give "ids" or "where" (exactly one)')
        n = await col.adelete(req.ids, where=req.where)
        return {"deleted": n}

    @app.delete("/records/{id}", response_model=DeleteResponse)
    async def delete_one(id: str) -> dict[str, Any]:
        """Deletes one record."""
        n = await col.adelete([id])
        return {"deleted": n}

    @app.get("/records/{id}", response_model=RecordOut)
    async def get(id: str) -> dict[str, Any]:
        """One record by id."""
        return (await col.aget(id)).to_dict()

    @app.post("/records/get", response_model=GetResponse)
    async def get_many(req: GetRequest) -> dict[str, Any]:
        """Records by ids, in order (null for ids not found)."""
        recs = await col.aget_many(req.ids)
        return {"records": [None if r is None else r.to_dict() for r in recs]}

    @app.get("/stats")
    async def stats() -> JSONResponse:
        """The collection's figures (records, passages, tokens, bytes, codec, model) and the
        server's (encoder calls, mean batch size)."""
        st = await col.astats()
        b: QueryBatcher | None = state["batcher"]
        st["server"] = {
            "workers": n_workers,
            "batching": state["batching"],
            "lone_threads": n_lone,
            "lone_encoder_threads": state["lone_encode"] or 1,
            "lone_encodes": lone_steps["encodes"],
            "lone_searches": lone_steps["searches"],
            "encoder_calls": b.n_calls if b else 0,
            "queries_encoded": b.n_texts if b else 0,
        }
        return JSONResponse(jsonable_encoder(st))

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorOut}})
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded and warm, 503 while starting or stopping."""
        if not state["ready"]:
            return _error(503, "not_ready", "the server is starting or shutting down")
        return JSONResponse({"status": "ready", "records": await col.acount()})

    return app


def _idle_cpus() -> int:
    """CPUs not running a thread now, besides the caller's: this process's CPUs minus the
    kernel's count of runnable threads (``/proc/loadavg``'s fourth field, which counts the
    caller); a large number where that file is missing (not Linux), so the check passes."""
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 1 << 20
    return _cpus() - running


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_lone_threads() -> int:
    """``lone_threads``' default: 1 (a lone request gets no extra threads). Measured on a 2-core
    machine, 2 threads made neither step of a short request faster, even at its fastest calls
    (bench-results/serve-lone-split.md); pass 2 (``--lone-threads 2``) to try it elsewhere."""
    return 1


def _report(rep: Any) -> dict[str, Any]:
    return {
        "n_added": rep.n_added,
        "n_replaced": rep.n_replaced,
        "n_empty": rep.n_empty,
        "n_passages": rep.n_passages,
        "n_tokens": rep.n_tokens,
        "n_truncated": rep.n_truncated,
        "skipped": list(rep.skipped),
    }


def _version() -> str:
    from latix import __version__

    return str(__version__)


def run(
    path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    threads: int = 1,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    batch_wait: float = 0.002,
    max_batch: int = 16,
    lone_threads: int | None = None,
    lone_always: bool = False,
    lone_spinning: bool = False,
    log_level: str = "warning",
    query_precision: Literal["auto", "fp32", "int8"] = "auto",
    loop: Literal["auto", "asyncio", "uvloop"] = "auto",
    http: Literal["auto", "h11", "httptools"] = "auto",
) -> None:
    """Serves the collection at ``path`` until SIGINT/SIGTERM (what ``latix serve`` runs).

    Args:
        path: the collection directory.
        host: interface to listen on.
        port: TCP port.
        workers: search threads (default: the number of CPUs).
        threads: onnxruntime threads per encoder call (1: parallelism comes from concurrent
            calls).
        max_body_bytes: request body limit.
        batch_wait: bounded wait of the query micro-batcher (seconds).
        max_batch: query texts per encoder call at most.
        lone_threads: threads for the encoding and the search of a request that is the only
            search in flight (default :func:`default_lone_threads`: 1, off), see
            :func:`create_app`.
        lone_always: give a lone request ``lone_threads`` even with no idle core
            (:func:`create_app`).
        lone_spinning: let the lone request's onnxruntime threads spin-wait between parallel
            sections (``Encoder(query_spinning=...)``); by default they sleep.
        log_level: uvicorn's log level.
        query_precision: for a collection of the default model, the query encoder's precision
            (:class:`latix.Encoder`): ``"auto"`` (default here) is int8 on AVX2 CPUs, about 2x
            faster per query than fp32 for SciFact nDCG@10 0.7095 instead of 0.7100 (test) and
            0.7074 instead of 0.7077 (train), bench-results/encoder.md. Documents are always
            encoded in fp32. Other models run their own directory's settings.
        loop: uvicorn's event loop; ``"auto"`` is uvloop when installed (the serve extra
            installs it): a lone request's HTTP path costs about a third less than on asyncio's
            loop with the h11 parser (bench-results/serve.md).
        http: uvicorn's HTTP/1.1 parser; ``"auto"`` is httptools when installed (the serve
            extra installs it), else the pure-Python h11.
    """
    import uvicorn

    col = Collection.open(path, n_threads=threads)
    n_lone = default_lone_threads() if lone_threads is None else lone_threads
    if col.model == "default":
        from latix.encoder import Encoder

        col._encoder = col._load_encoder(
            Encoder.default(
                n_threads=threads,
                query_precision=query_precision,
                query_threads=[n_lone] if n_lone > threads else [],
                query_spinning=lone_spinning,
            ),
            None,
        )
    try:
        app = create_app(
            col,
            workers=workers,
            max_body_bytes=max_body_bytes,
            batch_wait=batch_wait,
            max_batch=max_batch,
            lone_threads=n_lone,
            lone_always=lone_always,
            close_on_shutdown=True,
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=30,
            access_log=False,
            loop=loop,
            http=http,
        )
        server = uvicorn.Server(config)
        server.run()
    finally:
        col.close()
