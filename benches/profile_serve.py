"""Where one search request's time goes, component by component (issue 11's attribution).

``python benches/profile_serve.py`` runs, for the SciFact test queries against the SciFact
compressed collection that benches/bench_serve.py builds (``--collection``), the steps of
``Collection.search_batch`` one by one on one thread, exactly as the library chains them:

    tokenize   Encoder._prepare (tokenizer, markers, kept positions)
    batch      the padded id / mask arrays
    forward    the onnxruntime session run (1 intra-op thread)
    post       gathering the kept rows, projection, normalisation
    index      Index.search at the collection's first depth (candidates, refine, top k)
    passages   the best passage per record (Collection._late's loop over the hits)
    fetch      SQLite: text, metadata and spans of the hit records (DocStore.by_key)
    assemble   BatchResults (columnar arrays, texts, metadata) and Hit objects
    to_dict    the hits as JSON-ready dicts (what the server's handler builds)
    json       json.dumps of the answer body (what Starlette's JSONResponse does)

and the whole ``Collection.search_batch`` call plus the dict and JSON steps, interleaved query
by query. Each step is timed twice: wall time (perf_counter) and the process's CPU time
(``time.process_time``, all its threads: latix's search runs on its own pool's thread even with
``n_threads=1``), which does not count the time the process waits for a core, so the CPU
column stays meaningful on a loaded machine where wall times are mostly waiting. With
``--cprofile`` it also prints cProfile's top functions (by own time) of the whole calls.

Figures are medians over ``--rounds`` passes of the queries; ``--precision`` picks the query
encoder (``auto`` = int8 on AVX2, what ``latix serve`` runs).

``--spans`` replaces the step table by an attribution of the *real* code path: the functions
of :data:`SPAN_POINTS` (and the binding's ``Index.search``) are wrapped with a clock, and each
span's self time (its time minus that of the spans called inside it) is summed per call, for
in-process ``Collection.search(q, 10, n_threads=1)`` and for what ``latix serve``'s handler runs
(``search_batch``, ``hit_dicts``, orjson), interleaved query by query. The spans of a call add
up to the whole call ("outside every span" is the rest), so the table holds for any version of
the code (functions a version does not have are skipped): run it on the code before and after
a change.

Two more parts, also in CPU time:

* ``--batch 1 4 16``: encoder CPU time per query when ``B`` queries share one
  ``encode_queries`` call (what micro-batching would save), for consecutive SciFact test
  queries (padded to the longest of the batch, as the encoder batches them) and for one 10-word
  query repeated ``B`` times (no padding): fp32, int8 and int8 with per-token activation
  scales (``int8-token``, benches/bench_encoder.py's variant).
* ``--server PYTHON [PYTHON ...]``: a real ``latix serve`` (``--workers 2``) started with each
  interpreter (e.g. another checkout's venv, the "before" of a change), loaded by one client
  with the test queries: CPU time per request of each of the server's threads (read from
  /proc: the event loop, the read/encode threads, latix's search pool) and the p50.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import provenance  # noqa: E402

STEPS = [
    "tokenize",
    "batch",
    "forward",
    "post",
    "index",
    "passages",
    "fetch",
    "assemble",
    "to_dict",
    "json",
]


def _dumps(obj: Any) -> bytes:
    # Starlette's JSONResponse.render
    return json.dumps(
        obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def steps_of(col: Any, q: str, k: int) -> dict[str, Callable[[Any], Any]]:
    """The steps of one late search as functions of the previous step's output."""
    enc = col._get_encoder()
    gen = col._generation()
    n_docs = len(col._index)
    kp = col._first_depth(k, n_docs, gen)

    def tokenize(_: Any) -> Any:
        return enc._prepare([q], "query")

    def batch(prep: Any) -> Any:
        p = prep[0]
        ids = np.full((1, len(p.ids)), enc._pad_id, dtype=np.int32)
        att = np.zeros((1, len(p.ids)), dtype=np.int32)
        ids[0, :] = p.ids
        att[0, : len(p.attention)] = p.attention
        return prep, ids, att

    def forward(x: Any) -> Any:
        prep, ids, att = x
        return prep, enc._forward("query", ids, att)

    def post(x: Any) -> Any:
        prep, h = x
        return [enc._project(np.ascontiguousarray(h[0, prep[0].keep]))]

    def index(qv: Any) -> Any:
        return col._index_search(qv, kp, None, None, 1, {}, gen, None)

    def passages(res: Any) -> Any:
        scores, ids = res
        best: dict[int, tuple[float, int]] = {}
        for s, key in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            if key == "":
                break
            a, dot, b = key.partition(".")
            rk = int(a)
            if rk not in best:
                best[rk] = (float(s), int(b) if dot else 0)
        return [(rk, s, p) for rk, (s, p) in best.items()][:k]

    def fetch(lst: Any) -> Any:
        return lst, col._store.by_key(sorted({t[0] for t in lst}))

    def assemble(x: Any) -> Any:
        from latix.collection import BatchResults

        lst, rows = x
        ids = np.full((1, k), "", dtype=object)
        scores = np.full((1, k), -np.inf, dtype=np.float32)
        pas = np.full((1, k), -1, dtype=np.int32)
        ls = np.full((1, k), np.nan, dtype=np.float32)
        ks = np.full((1, k), np.nan, dtype=np.float32)
        tq, mq, sq = [], [], []
        for j, (rk, s, p) in enumerate(lst):
            r = rows[rk]
            ids[0, j], scores[0, j], pas[0, j], ls[0, j] = r.id, s, p, s
            tq.append(r.text)
            mq.append(r.metadata)
            sq.append(r.spans[p] if r.spans is not None and p < len(r.spans) else None)
        return BatchResults(ids, scores, [tq], [mq], pas, [sq], ls, ks).hits(0)

    def to_dict(hits: Any) -> Any:
        return {"hits": [h.to_dict() for h in hits]}

    def js(d: Any) -> Any:
        return _dumps(d)

    return dict(
        zip(
            STEPS,
            [tokenize, batch, forward, post, index, passages, fetch, assemble, to_dict, js],
            strict=True,
        )
    )


def whole(col: Any, q: str, k: int) -> bytes:
    """What the server's handler does for one query (minus HTTP): search, dicts, JSON."""
    res = col.search_batch([q], k, n_threads=1)
    return _dumps({"hits": [h.to_dict() for h in res.hits(0)]})


TEN_WORDS = "does metformin lower blood glucose in patients with type 2 diabetes"


def batch_cpu(qtexts: list[str], sizes: list[int], rounds: int) -> dict[str, Any]:
    """Encoder CPU ms per query with ``B`` queries per call (see the module doc)."""
    import bench_encoder as be
    import latix

    out: dict[str, Any] = {}
    for prec in ("int8", "int8-token", "fp32"):
        if prec == "int8-token":  # per-token activation scales (batch-independent)
            enc = be.int8_per_token(1)
        else:
            enc = latix.Encoder.default(n_threads=1, query_precision=prec)
        enc.encode_queries(qtexts[:4])
        for b in sizes:
            for label, texts in (("scifact", qtexts), ("same", [TEN_WORDS] * len(qtexts))):
                per: list[float] = []
                for _ in range(rounds):
                    for s in range(0, len(texts) - b + 1, b):
                        c0 = time.process_time()
                        enc.encode_queries(texts[s : s + b])
                        per.append((time.process_time() - c0) * 1e3 / b)
                out[f"{prec}/{label}/{b}"] = round(float(np.median(per)), 3)
    return out


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of process ``pid`` (name:tid -> utime + stime)."""
    import os

    tck = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = Path(f"/proc/{pid}/task/{t}/stat").read_text()
        except OSError:
            continue
        f = s.rsplit(")", 1)[1].split()
        out[s[s.index("(") + 1 : s.rindex(")")] + ":" + t] = (int(f[11]) + int(f[12])) / tck
    return out


def server_cpu(python: str, path: str, qtexts: list[str], rounds: int) -> dict[str, Any]:
    """Per-thread server CPU ms per request at 1 client (see the module doc)."""
    import subprocess

    import bench_serve as bs

    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in qtexts] * rounds
    port = bs.free_port()
    cmd = [python, "-m", "latix.cli", "serve", path, "--port", str(port), "--workers", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        bs.wait_ready(p, port)
        bs.http_load(port, bodies[:50], 1)
        main_tid = str(p.pid)
        c0 = _thread_cpu(p.pid)
        r, _ = bs.http_load(port, bodies, 1)
        c1 = _thread_cpu(p.pid)
    finally:
        bs.stop_server(p)
    n = len(bodies)
    per: dict[str, float] = {"event loop": 0.0, "read/encode threads": 0.0, "latix pool": 0.0}
    for key, v in c1.items():
        d = (v - c0.get(key, 0.0)) * 1e3 / n
        name, tid = key.rsplit(":", 1)
        if tid == main_tid:
            per["event loop"] += d
        elif name.startswith("latix-"):
            per["latix pool"] += d
        else:
            per["read/encode threads"] += d
    per = {k: round(v, 3) for k, v in per.items()}
    return {"python": python, "p50_ms": r["p50_ms"], "qps": r["qps"], "cpu_ms_per_request": per}


# ------------------------------------------------------------------------------------ spans

#: The functions of the real search path timed by ``--spans``: (module, owner, attribute,
#: span). A span's *self* time is its call's time minus the time of the spans called inside it,
#: so the spans of one search add up to the whole call. Owners or attributes a version of latix
#: does not have are skipped (the same table measures the code before and after a change).
SPAN_POINTS = [
    ("latix.collection", "Collection", "search", "search (rest)"),
    ("latix.collection", "Collection", "search_batch", "search_batch (checks, columns)"),
    ("latix.collection", "Collection", "_late", "passage grouping"),
    ("latix.collection", "Collection", "_index_search", "index search (Collection wrapper)"),
    ("latix.collection", "Collection", "_generation", "generation"),
    ("latix.collection", "Collection", "_first_depth", "first depth"),
    ("latix.collection", "Collection", "_rows", "record fetch (SQLite, cache)"),
    ("latix.docstore", "RecordStore", "by_key", "record fetch (SQLite, cache)"),
    ("latix.collection", "BatchResults", "hits", "hit building (Hit objects)"),
    ("latix.collection", "BatchResults", "hit_dicts", "hit building (dicts)"),
    ("latix.encoder", "Encoder", "encode_queries_packed", "encode (rest)"),
    ("latix.encoder", "Encoder", "_prepare", "encode: tokenize"),
    ("latix.encoder", "Encoder", "_forward", "encode: forward (onnxruntime)"),
    ("latix.encoder", "Encoder", "_project", "encode: projection, normalise"),
    ("latix.index", "Index", "search", "index search (Index wrapper)"),
    ("latix.index", "Index", "search_masked", "index search (Index wrapper)"),
    ("latix.index", "Index", "__len__", "index len"),
]
CORE_SPAN = "index search (_core: Rust)"


class _SpanClock:
    """Accumulates per-span self time (wall and process CPU) of the calls made while on."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stack: list[list[float]] = []  # per open span: [child wall, child cpu]
        self.on = False

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = self

        def timed(*a: Any, **kw: Any) -> Any:
            if not clock.on:
                return fn(*a, **kw)
            clock.stack.append([0.0, 0.0])
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                w, c = time.perf_counter() - w0, time.process_time() - c0
                cw, cc = clock.stack.pop()
                clock.wall[label] = clock.wall.get(label, 0.0) + w - cw
                clock.cpu[label] = clock.cpu.get(label, 0.0) + c - cc
                if clock.stack:
                    clock.stack[-1][0] += w
                    clock.stack[-1][1] += c

        return timed


class _CoreProxy:
    """Stands in for ``Index._inner`` (a Rust object whose methods cannot be patched): times
    ``search``, delegates everything else."""

    def __init__(self, inner: Any, clock: _SpanClock) -> None:
        self._inner = inner
        self.search = clock.wrap(CORE_SPAN, inner.search)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)


def install_spans(col: Any) -> _SpanClock:
    """Wraps the functions of :data:`SPAN_POINTS` (and ``col``'s binding index) in one clock."""
    import importlib

    clock = _SpanClock()
    for mod, owner, attr, label in SPAN_POINTS:
        cls = getattr(importlib.import_module(mod), owner, None)
        if cls is None or attr not in vars(cls):
            continue
        setattr(cls, attr, clock.wrap(label, vars(cls)[attr]))
    col._index._inner = _CoreProxy(col._index._inner, clock)
    return clock


def handler(col: Any, q: str, k: int) -> bytes:
    """What ``latix serve``'s /search handler runs in its read thread for one query (encoding
    included), minus HTTP: ``search_batch``, the hits as dicts from the columns, orjson."""
    import orjson

    res = col.search_batch([q], k, n_threads=1)
    return orjson.dumps({"hits": res.hit_dicts(0)})


def spans(col: Any, qtexts: list[str], k: int, rounds: int) -> dict[str, Any]:
    """Per-span self time of ``Collection.search(q, k, n_threads=1)`` (in-process) and of the
    server handler's path, query by query, both paths interleaved: medians over the queries of
    each span's time in one call, and the whole call's."""
    clock = install_spans(col)
    paths: dict[str, Callable[[str], Any]] = {
        "in-process Collection.search": lambda q: col.search(q, k, n_threads=1),
        "server handler (search_batch, hit_dicts, orjson)": lambda q: handler(col, q, k),
    }
    per: dict[str, dict[str, dict[str, list[float]]]] = {p: {"wall": {}, "cpu": {}} for p in paths}
    for _ in range(rounds):
        for q in qtexts:
            for name, fn in paths.items():
                clock.wall.clear()
                clock.cpu.clear()
                clock.on = True
                c0, w0 = time.process_time(), time.perf_counter()
                fn(q)
                w, c = time.perf_counter() - w0, time.process_time() - c0
                clock.on = False
                got = {"wall": dict(clock.wall), "cpu": dict(clock.cpu)}
                got["wall"]["(outside every span)"] = w - sum(clock.wall.values())
                got["cpu"]["(outside every span)"] = c - sum(clock.cpu.values())
                got["wall"]["whole call"], got["cpu"]["whole call"] = w, c
                for kind in ("wall", "cpu"):
                    for label, v in got[kind].items():
                        per[name][kind].setdefault(label, []).append(v * 1e3)
    out: dict[str, Any] = {}
    n = rounds * len(qtexts)
    for name in paths:
        rows = {}
        for label in per[name]["cpu"]:
            cw = per[name]["wall"][label] + [0.0] * (n - len(per[name]["wall"][label]))
            cc = per[name]["cpu"][label] + [0.0] * (n - len(per[name]["cpu"][label]))
            rows[label] = {
                "wall_ms": round(float(np.median(cw)), 3),
                "cpu_ms": round(float(np.median(cc)), 3),
                "wall_mean_ms": round(float(np.mean(cw)), 3),
                "cpu_mean_ms": round(float(np.mean(cc)), 3),
            }
        out[name] = rows
    return out


def print_spans(res: dict[str, Any]) -> None:
    for name, rows in res.items():
        print(f"\n{name}: per call, ms (median over queries; mean)")
        print(f"{'span':<42} {'wall':>8} {'cpu':>8} {'wall mean':>10} {'cpu mean':>9}")
        for label, m in sorted(rows.items(), key=lambda kv: -kv[1]["cpu_mean_ms"]):
            print(
                f"{label:<42} {m['wall_ms']:8.3f} {m['cpu_ms']:8.3f} "
                f"{m['wall_mean_ms']:10.3f} {m['cpu_mean_ms']:9.3f}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--collection",
        default=str(Path.home() / ".cache" / "latix" / "serve" / "scifact-auto"),
        help="the SciFact compressed collection (benches/bench_serve.py builds it)",
    )
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--cprofile", action="store_true", help="also print cProfile's top 25")
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--batch", type=int, nargs="*", default=[], help="batch sizes to measure")
    ap.add_argument("--server", nargs="*", default=[], help="interpreters to serve with")
    ap.add_argument(
        "--spans",
        action="store_true",
        help="attribute the real search path by spans (instead of the re-implemented steps)",
    )
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    a = ap.parse_args()
    import contextlib

    import latix

    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    _, queries, qrels = bc.load_set("scifact")
    qtexts = [queries[q] for q in queries if q in qrels][: a.queries]
    enc = latix.Encoder.default(n_threads=1, query_precision=a.precision)
    col = latix.Collection.open(a.collection, encoder=enc)
    k = 10
    for q in qtexts[:20]:
        whole(col, q, k)
    if a.spans:
        with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
            load = f"load average at start {provenance.load_average()}"
            res = spans(col, qtexts, k, a.rounds)
        print(f"{len(qtexts)} queries x {a.rounds}, precision {enc.query_precision}; {load}")
        print_spans(res)
        if a.json:
            out = {"provenance": prov, "precision": enc.query_precision, "spans": res}
            Path(a.json).write_text(json.dumps(out, indent=1))
        col.close()
        return 0
    wall: dict[str, list[float]] = {s: [] for s in [*STEPS, "sum", "whole"]}
    cpu: dict[str, list[float]] = {s: [] for s in wall}
    n_tok: list[int] = []
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        for _ in range(a.rounds):
            for q in qtexts:
                x: Any = None
                tw = tc = 0.0
                for name, fn in steps_of(col, q, k).items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    x = fn(x)
                    w, c = time.perf_counter() - w0, time.process_time() - c0
                    wall[name].append(w * 1e3)
                    cpu[name].append(c * 1e3)
                    tw, tc = tw + w, tc + c
                    if name == "tokenize":
                        n_tok.append(len(x[0].ids))
                wall["sum"].append(tw * 1e3)
                cpu["sum"].append(tc * 1e3)
                c0, w0 = time.process_time(), time.perf_counter()
                whole(col, q, k)
                wall["whole"].append((time.perf_counter() - w0) * 1e3)
                cpu["whole"].append((time.process_time() - c0) * 1e3)
        prof_text = ""
        if a.cprofile:
            pr = cProfile.Profile()
            pr.enable()
            for q in qtexts:
                whole(col, q, k)
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
            prof_text = s.getvalue()
        batches = batch_cpu(qtexts[:64], a.batch, a.rounds) if a.batch else {}
        servers = [server_cpu(py, a.collection, qtexts, a.rounds) for py in a.server]
    med = {
        s: {
            "wall_ms": round(float(np.median(wall[s])), 3),
            "cpu_ms": round(float(np.median(cpu[s])), 3),
            "cpu_mean_ms": round(float(np.mean(cpu[s])), 3),
        }
        for s in wall
    }
    print(
        f"{len(qtexts)} queries x {a.rounds}, precision {enc.query_precision}, "
        f"{np.mean(n_tok):.1f} model tokens on average; medians in ms"
    )
    print(f"{'step':<10} {'wall':>8} {'cpu':>8} {'cpu mean':>9} {'cpu share':>9}")
    total = med["sum"]["cpu_ms"]
    for s in wall:
        m = med[s]
        share = f"{100 * m['cpu_ms'] / total:8.1f}%" if s in STEPS else ""
        print(f"{s:<10} {m['wall_ms']:8.3f} {m['cpu_ms']:8.3f} {m['cpu_mean_ms']:9.3f} {share}")
    if prof_text:
        print(prof_text)
    if batches:
        print("encoder CPU ms per query, B queries per call (scifact: padded; same: no padding)")
        for key, v in batches.items():
            print(f"  {key:<20} {v:8.3f}")
    for srv in servers:
        print(f"server {srv['python']}: p50 {srv['p50_ms']} ms, {srv['qps']} QPS, CPU ms/request")
        for key, v in srv["cpu_ms_per_request"].items():
            print(f"  {key:<22} {v:8.3f}")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "provenance": prov,
                    "precision": enc.query_precision,
                    "steps": med,
                    "batch_cpu_ms_per_query": batches,
                    "servers": servers,
                },
                indent=1,
            )
        )
    col.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
