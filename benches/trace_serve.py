"""Where a lone HTTP search request's time goes on the server, hop by hop (issue 11).

``python benches/trace_serve.py COLLECTION [--lone-threads N] [--lone-always]`` serves
``COLLECTION`` in this process (``latix.serve.create_app``, uvicorn with uvloop + httptools,
``--workers 2``, int8 ``auto`` queries, 1 encoder / search thread) with clocks
(``time.perf_counter``) wrapped around the real path: the ASGI call, the hop to the read thread
(``Collection._in_thread``), the encoder call, ``search_batch``, and the response's start.
A one-client asyncio load (benches/bench_serve.py's client, in a subprocess) sends the SciFact
test queries one at a time; the script prints the client's p50 / p99 and, per segment, the
median over the requests (after ``--skip`` warm ones):

    loop: receive, parse, validate, route   ASGI call -> handler hands off to the read thread
    hop to the read thread                  run_in_executor -> the thread starts the work
    (between the segments)                  e.g. the lone check, the step from encode to search
    encode                                  Encoder.encode_queries_packed
    search_batch                            Collection.search_batch (index search, rows)
    hit dicts + orjson                      the answer's bytes
    hop back to the loop                    the thread's return -> the handler resumes
    loop: response start, send body         the rest until the ASGI call returns

Medians of segments do not add up to the median of the total on a loaded machine. Run it under
the team's benchmark lock (``flock /work/team/bench.lock ...``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_serve as bs  # noqa: E402

CLIENT = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import bench_serve as bs
bodies = [json.dumps({"query": q, "k": 10}).encode() for q in json.load(open(sys.argv[2]))]
r, _ = bs.http_load(int(sys.argv[1]), bodies, 1)
print(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}))
"""

SEGMENTS = [
    ("in", "hop0", "loop: receive, parse, validate, route"),
    ("hop0", "th0", "hop to the read thread"),
    ("enc0", "enc1", "encode"),
    ("sb0", "sb1", "search_batch"),
    ("sb1", "th1", "hit dicts + orjson"),
    ("th1", "hop1", "hop back to the loop"),
    ("hop1", "out", "loop: response start, send body"),
    ("in", "out", "server total"),
]


def traced_app(path: str, lone_threads: int, lone_always: bool, rec: list[dict[str, float]]) -> Any:
    """The server's app over ``path`` with clocks around each hop; one dict per search in
    ``rec``."""
    from latix.collection import Collection
    from latix.encoder import Encoder
    from latix.serve import create_app

    pc = time.perf_counter
    cur: dict[str, float] = {}
    col = Collection.open(path, n_threads=1)
    extra = [lone_threads] if lone_threads > 1 else []
    enc = Encoder.default(n_threads=1, query_precision="auto", query_threads=extra)
    col._encoder = col._load_encoder(enc, None)
    enc_packed, search_batch = enc.encode_queries_packed, col.search_batch
    in_thread = col._in_thread

    def enc_w(texts: Any, n_threads: int | None = None) -> Any:
        cur["enc0"] = pc()
        try:
            return enc_packed(texts, n_threads=n_threads)
        finally:
            cur["enc1"] = pc()

    def sb_w(*a: Any, **kw: Any) -> Any:
        cur["sb0"] = pc()
        try:
            return search_batch(*a, **kw)
        finally:
            cur["sb1"] = pc()

    async def it_w(write: bool, fn: Any, *a: Any, **kw: Any) -> Any:
        def f(*a2: Any, **kw2: Any) -> Any:
            cur["th0"] = pc()
            try:
                return fn(*a2, **kw2)
            finally:
                cur["th1"] = pc()

        cur["hop0"] = pc()
        r = await in_thread(write, f, *a, **kw)
        cur["hop1"] = pc()
        return r

    enc.encode_queries_packed = enc_w  # type: ignore[method-assign]
    col.search_batch = sb_w  # type: ignore[method-assign]
    col._in_thread = it_w  # type: ignore[method-assign]
    app = create_app(col, workers=2, lone_threads=lone_threads, lone_always=lone_always)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/search":
            await app(scope, receive, send)
            return
        cur.clear()
        cur["in"] = pc()
        await app(scope, receive, send)
        cur["out"] = pc()
        rec.append(dict(cur))

    return outer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("collection")
    ap.add_argument("--lone-threads", type=int, default=2)
    ap.add_argument("--lone-always", action="store_true")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--skip", type=int, default=50, help="warm requests left out")
    a = ap.parse_args()
    import threading

    import bench_collection as bc
    import uvicorn

    _, queries, qrels = bc.load_set("scifact")
    qtexts = [queries[q] for q in queries if q in qrels][: a.queries]
    qfile = Path(a.collection).with_name("trace-queries.json")
    qfile.write_text(json.dumps(qtexts))
    rec: list[dict[str, float]] = []
    port = bs.free_port()
    app = traced_app(a.collection, a.lone_threads, a.lone_always, rec)
    cfg = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(cfg)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.1)
    cmd = [sys.executable, "-c", CLIENT, str(port), str(qfile), str(ROOT / "benches")]
    client = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    server.should_exit = True
    th.join(30)
    print(f"client: {client}")
    rows = rec[a.skip :]
    for x, y, label in SEGMENTS:
        v = [(r[y] - r[x]) * 1e3 for r in rows if x in r and y in r]
        print(f"  {label:<40} {float(np.median(v)):7.3f} ms median ({len(v)} requests)")
    gaps = [
        (r["out"] - r["in"] - sum(r[y] - r[x] for x, y, _ in SEGMENTS[:-1])) * 1e3
        for r in rows
        if all(x in r and y in r for x, y, _ in SEGMENTS)
    ]
    print(f"  {'(between the segments, per request)':<40} {float(np.median(gaps)):7.3f} ms median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
