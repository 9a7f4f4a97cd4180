"""End-to-end latency of ``latix serve`` under concurrency, next to in-process search and the
query encoder, on the SciFact compressed collection.

One command, ``python benches/bench_serve.py`` (``make bench-serve``), writes
``bench-results/serve.md`` and ``serve.json``:

1. builds the SciFact collection the way ``latix index`` builds it (compressed ``"auto"``,
   passages, ``index_corpus``), from the cached encodings of latix.eval.EmbeddingCache (never
   re-encoding the corpus; benches/bench_collection.py's builder), under --work;
2. under the team's benchmark lock (``/work/team/bench.lock``), only while timing:

   * the query encoder, 1 thread, fp32 and int8 (``query_precision``), interleaved query by
     query: p50/p99 of one ``encode_queries`` call for a 10-word query and for the 300 SciFact
     test queries;
   * in-process ``Collection.search`` (text in, hits with text and metadata out, encoding
     included, 1 search thread): one caller, then 4 and 16 threads;
   * the HTTP service: ``latix serve`` as a uvicorn subprocess on 127.0.0.1 (``--workers 2``,
     query precision ``auto``), loaded by an asyncio client (one keep-alive connection per
     client, each client sending its next query when the previous one is answered) with 1 / 4
     / 16 concurrent clients, each level sending the 300 test queries ``--rounds`` times:
     p50/p99 latency (request written -> whole JSON body read) and QPS; the 16-client level is
     also run against a server with micro-batching off (``--max-batch 1``), the baseline of
     the batching;
   * document encoding throughput (1 thread) as a share of the machine's float32 sgemm rate
     measured in the same run (benches/bench_encoder.py's method).

The HTTP hits are checked against in-process search of the same queries (same top-10 ids).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import bench_encoder as be  # noqa: E402
import provenance  # noqa: E402

TEN_WORDS = "does metformin lower blood glucose in patients with type 2 diabetes"


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "n": len(ms),
    }


# ------------------------------------------------------------------------------------ HTTP load


async def _client(
    port: int, bodies: list[bytes], nxt: list[int], lat: list[float], out: dict[int, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            i = nxt[0]
            if i >= len(bodies):
                return
            nxt[0] += 1
            body = bodies[i]
            req = (
                b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            ) + body
            t0 = time.perf_counter()
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            data = await reader.readexactly(n)
            lat.append((time.perf_counter() - t0) * 1000)
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
            out[i] = data
    finally:
        writer.close()


def http_load(
    port: int, bodies: list[bytes], clients: int
) -> tuple[dict[str, Any], dict[int, Any]]:
    lat: list[float] = []
    out: dict[int, Any] = {}
    nxt = [0]

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(port, bodies, nxt, lat, out) for _ in range(clients)))
        return time.perf_counter() - t0

    wall = asyncio.run(main())
    res: dict[str, Any] = pct(lat)
    res["qps"] = round(len(bodies) / wall, 1)
    res["clients"] = clients
    res["_lat"], res["_wall"] = lat, wall  # for callers that pool blocks (dropped from reports)
    return res, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(path: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "latix.cli",
        "serve",
        str(path),
        "--port",
        str(port),
        "--workers",
        "2",
        *extra,
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_ready(p, port)


def wait_ready(p: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """``p`` once its server answers GET /ready with 200 (exits if it dies first)."""
    t0 = time.time()
    while time.time() - t0 < 180:
        if p.poll() is not None:
            raise SystemExit(f"server exited: {p.stderr.read().decode() if p.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise SystemExit("server not ready after 180 s")


def stop_server(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def noop_server(port: int, body_file: str, impl: str = "auto") -> None:
    """The floor of the HTTP path: uvicorn + FastAPI with latix's request model (validation
    included) answering every POST /search with a fixed, real search answer (no encoding, no
    search). Run as ``bench_serve.py --noop-server PORT BODY_FILE IMPL``, IMPL ``auto`` (what
    ``latix serve`` runs: uvloop and httptools when installed) or ``h11`` (asyncio's loop and
    the pure-Python h11 parser, uvicorn's fallback)."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from latix.serve import SearchRequest

    answer = json.loads(Path(body_file).read_text())
    app = FastAPI()

    async def search(req: SearchRequest) -> JSONResponse:
        return JSONResponse(answer)

    # This module's annotations are strings (postponed), and SearchRequest is a local name
    # FastAPI cannot resolve from the module: give it the class itself.
    search.__annotations__ = {"req": SearchRequest, "return": JSONResponse}
    app.post("/search")(search)

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    loop, http = ("asyncio", "h11") if impl == "h11" else ("auto", "auto")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop=loop,
        http=http,
    )


def noop_floor(answer: Path, bodies: list[bytes]) -> dict[str, Any]:
    """The no-op server's 1-client latency on both uvicorn stacks: uvloop + httptools (what
    ``latix serve`` runs; the serve extra installs them) and asyncio + h11 (uvicorn's
    pure-Python fallback). Both servers run at once and take blocks of 50 requests in turn, so
    load drift on the shared machine hits them alike."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    lat: dict[str, list[float]] = {"auto": [], "h11": []}
    wall = dict.fromkeys(lat, 0.0)
    try:
        for impl in lat:
            port = free_port()
            p = subprocess.Popen(
                [sys.executable, __file__, "--noop-server", str(port), str(answer), impl],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs[impl] = (p, port)
        for p, port in procs.values():
            wait_ready(p, port)
            http_load(port, bodies[:50], 1)  # warm-up
        for s in range(0, len(bodies), 50):
            for impl, (_, port) in procs.items():
                r, _ = http_load(port, bodies[s : s + 50], 1)
                lat[impl] += r.pop("_lat")
                wall[impl] += r.pop("_wall")
    finally:
        for p, _ in procs.values():
            stop_server(p)
    out = {}
    for impl, key in (("auto", "http_noop"), ("h11", "http_noop_h11")):
        out[key] = {**pct(lat[impl]), "qps": round(len(lat[impl]) / wall[impl], 1), "clients": 1}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lone_ab(
    path: Path, bodies: list[bytes], levels: list[int], ref: dict[int, list[str]], block: int = 50
) -> list[dict[str, Any]]:
    """``--lone-threads 2`` (a lone request encodes and searches on 2 threads when the machine
    has an idle core for the second, concurrent ones on 1 each; its onnxruntime threads sleep
    between parallel sections), with ``--lone-always`` (2 threads for a lone request even with
    no idle core), with ``--lone-always --lone-spinning`` (the same with onnxruntime's
    spin-waiting) and the default server (1 thread each always), all running at once and
    taking blocks of ``block`` requests in turn at each client count (load drift hits them
    alike). Per level and server: p50 / p99 / QPS over the pooled blocks, the server's CPU per
    request (/proc, all its threads) and the share of answers whose top-10 equals in-process
    search."""
    two = ["--lone-threads", "2"]
    servers = {
        "lone: 2 threads if a core is idle (`--lone-threads 2`)": two,
        "lone: 2 threads always (`--lone-threads 2 --lone-always`)": [*two, "--lone-always"],
        "lone: 2 threads always, spinning (`... --lone-always --lone-spinning`)": [
            *two,
            "--lone-always",
            "--lone-spinning",
        ],
        "lone: 1 thread (the default)": [],
    }
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rows: list[dict[str, Any]] = []
    n_q = len(ref)
    try:
        for name, extra in servers.items():
            port = free_port()
            procs[name] = (start_server(path, port, ["--query-precision", "auto", *extra]), port)
        for _, port in procs.values():
            http_load(port, bodies[:50], 4)  # warm-up
        for c in levels:
            bc.log(f"HTTP lone A/B: {c} clients")
            lat = {n: [] for n in procs}
            wall = dict.fromkeys(procs, 0.0)
            cpu = dict.fromkeys(procs, 0.0)
            same = dict.fromkeys(procs, 0)
            size = max(block, 4 * c)  # a block keeps every client busy most of its time
            for s0 in range(0, len(bodies), size):
                for name, (p, port) in procs.items():
                    c0 = cpu_seconds(p.pid)
                    r, out = http_load(port, bodies[s0 : s0 + size], c)
                    cpu[name] += cpu_seconds(p.pid) - c0
                    lat[name] += r.pop("_lat")
                    wall[name] += r.pop("_wall")
                    same[name] += sum(
                        [h["id"] for h in json.loads(out[i])["hits"]] == ref[(s0 + i) % n_q]
                        for i in out
                    )
            for name in procs:
                n = len(lat[name])
                rows.append(
                    {
                        **pct(lat[name]),
                        "qps": round(n / wall[name], 1),
                        "clients": c,
                        "server": name,
                        "server_cpu_ms_per_request": round(1000 * cpu[name] / n, 2),
                        "same_top10_as_inprocess": f"{same[name]}/{n}",
                    }
                )
        for name, (_, port) in procs.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
                srv = json.loads(resp.read())["server"]
            for x in rows:
                if x["server"] == name:
                    x["lone_searches_of_server"] = srv["lone_searches"]
                    x["searches_of_server"] = srv["queries_encoded"]
    finally:
        for p, _ in procs.values():
            stop_server(p)
    return rows


def lone_report(rows: list[dict[str, Any]], prov: list[str], rounds: int, n_q: int) -> str:
    lines = [
        "# `latix serve`: both cores for a lone request",
        "",
        "Provenance:",
        *prov,
        "",
        f"SciFact compressed collection (the `latix index` defaults), {n_q} test queries sent "
        f"{rounds}x per level, k=10, int8 queries (`auto`), `latix serve --workers 2`. The "
        "servers run at once and take blocks of requests in turn at each client count (so load "
        "drift hits them alike): `--lone-threads 2` (a request that is the only search in "
        "flight encodes on a 2-thread onnxruntime session and searches with 2 threads if the "
        "kernel counts an idle core, else 1; under concurrency 1 thread each; the session's "
        "threads sleep between parallel sections), with `--lone-always` (2 threads for a lone "
        "request whatever the machine's load), with `--lone-always --lone-spinning` (the same "
        "with onnxruntime's spin-waiting, the lone path of the previous stop) and the default "
        "(1 thread each always). Client: asyncio, one keep-alive connection "
        "per client, on the same 2 cores. "
        "Server CPU: user + system time of the server process (all threads) per request.",
        "",
        "| server | clients | p50 ms | p99 ms | QPS | server CPU ms / request | same top-10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['server']} | {x['clients']} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
            f"{x['qps']:.1f} | {x['server_cpu_ms_per_request']:.2f} | "
            f"{x['same_top10_as_inprocess']} |"
        )
    lines.append("")
    names = list(dict.fromkeys(x["server"] for x in rows))
    for name in names:
        x = next(x for x in rows if x["server"] == name)
        if "lone_searches_of_server" in x:
            lines.append(
                f"- {name}: {x['lone_searches_of_server']} of {x['searches_of_server']} searches "
                "(all levels and the warm-up) ran on 2 threads."
            )
    for name in names:
        mine = [x for x in rows if x["server"] == name]
        one, top = mine[0], mine[-1]
        lines.append(
            f"- {name}: 1-client p50 **{one['p50_ms']:.2f} ms** (target <= 6); "
            f"{top['clients']}/1-client QPS **{top['qps'] / one['qps']:.2f}x** (target >= 1.7x); "
            f"{top['clients']}-client p99 / 1-client p50 **{top['p99_ms'] / one['p50_ms']:.2f}x** "
            "(target <= 5x)."
        )
    base = [x for x in rows if x["server"] == names[-1]]
    for name in names[:-1]:
        mine = [x for x in rows if x["server"] == name]
        for x, y in zip(mine, base, strict=True):
            lines.append(
                f"- {x['clients']} clients, {name.split(' (')[0]} / 1 thread: p50 "
                f"{x['p50_ms'] / y['p50_ms']:.2f}x, p99 {x['p99_ms'] / y['p99_ms']:.2f}x, "
                f"QPS {x['qps'] / y['qps']:.2f}x."
            )
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ in-process


def inprocess(col: Any, queries: list[str], threads: int, rounds: int) -> dict[str, float]:
    lat: list[float] = []

    def one(q: str) -> None:
        t0 = time.perf_counter()
        col.search(q, 10, n_threads=1)
        lat.append((time.perf_counter() - t0) * 1000)

    work = queries * rounds
    t0 = time.perf_counter()
    if threads == 1:
        for q in work:
            one(q)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, work))
    wall = time.perf_counter() - t0
    res = pct(lat)
    res["qps"] = round(len(work) / wall, 1)
    res["clients"] = threads
    return res


def first_depth_ab(col: Any, base: Any, queries: list[str], rounds: int) -> dict[str, Any]:
    """In-process ``Collection.search(text, 10)``, 1 caller, interleaved query by query: ``col``
    (the default first depth, ``k`` times the passages per record) against ``base`` (another
    handle whose first index search asks for ``k`` passages, the depth before, re-querying 4x
    deeper when passages of the same records fill the list). Also counts index searches."""
    import latix.collection as lc

    calls = {"default": 0, "k": 0}
    lat: dict[str, list[float]] = {"default": [], "k": []}

    def counting(c: Any, name: str) -> None:
        orig = c._index_search

        def wrapped(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            return orig(*a, **kw)

        c._index_search = wrapped

    counting(col, "default")
    counting(base, "k")
    base._first_depth = lambda k, n, gen: k  # the depth before lc.PASSAGE_DEPTH_MAX
    for q in queries[:20]:
        col.search(q, 10, n_threads=1)
        base.search(q, 10, n_threads=1)
    calls.update(default=0, k=0)
    for _ in range(rounds):
        for q in queries:
            for name, c in (("default", col), ("k", base)):
                t0 = time.perf_counter()
                c.search(q, 10, n_threads=1)
                lat[name].append((time.perf_counter() - t0) * 1000)
    n = len(queries) * rounds
    return {
        name: {**pct(lat[name]), "index_searches_per_search": round(calls[name] / n, 3)}
        for name in lat
    } | {"passage_depth_max": lc.PASSAGE_DEPTH_MAX}


# ------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "latix" / "serve"))
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries per level")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "serve"))
    ap.add_argument(
        "--no-lock", action="store_true", help="trial run without the benchmark lock (not quoted)"
    )
    ap.add_argument(
        "--only",
        choices=["lone"],
        default=None,
        help="lone: only the A/B of a lone request on 2 threads vs 1 (writes --out + '-lone')",
    )
    ap.add_argument(
        "--noop-server", nargs=3, metavar=("PORT", "BODY_FILE", "IMPL"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.noop_server:
        noop_server(int(a.noop_server[0]), a.noop_server[1], a.noop_server[2])
        return 0
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix
    from latix.eval import EmbeddingCache

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    encoder = latix.Encoder.default()
    cache = EmbeddingCache()
    docs, queries, qrels = bc.load_set("scifact")
    vecs = bc.passage_vectors("scifact", docs, encoder, cache)
    path = work / "scifact-auto"
    col, build_s = bc.build_like_latix_index(path, docs, vecs, encoder, "auto")
    col.close()
    bc.log(f"collection at {path} (built in {build_s:.0f} s)")
    qids = [q for q in queries if q in qrels][: a.queries]
    qtexts = [queries[q] for q in qids]
    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in qtexts]
    results: dict[str, Any] = {"queries": len(qtexts), "rounds": a.rounds}
    import contextlib

    if a.only == "lone":
        enc_auto = latix.Encoder.default(n_threads=1, query_precision="auto")
        col = latix.Collection.open(path, encoder=enc_auto)
        ref = {i: [h.id for h in col.search(q, 10, n_threads=1)] for i, q in enumerate(qtexts)}
        col.close()
        with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
            rows = lone_ab(path, bodies * a.rounds, a.levels, ref)
        out = {"queries": len(qtexts), "rounds": a.rounds, "http": rows}
        Path(a.out + "-lone.json").write_text(json.dumps(out, indent=1))
        md = lone_report(rows, prov, a.rounds, len(qtexts))
        Path(a.out + "-lone.md").write_text(md)
        print(md)
        return 0
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        # 1. the query encoder, 1 thread
        bc.log("query encoder")
        variants = {
            "fp32": latix.Encoder.default(n_threads=1, query_precision="fp32"),
            "int8": latix.Encoder.default(n_threads=1, query_precision="int8"),
        }
        results["encoder_10_words"] = be.query_latency(variants, [TEN_WORDS] * 300, 1)
        results["encoder_scifact"] = be.query_latency(variants, qtexts, 1)
        # 2. in-process search, the server's encoder settings (auto precision, 1 thread)
        bc.log("in-process search")
        enc_auto = latix.Encoder.default(n_threads=1, query_precision="auto")
        results["precision_auto"] = enc_auto.query_precision
        col = latix.Collection.open(path, encoder=enc_auto)
        for q in qtexts[:20]:
            col.search(q, 10, n_threads=1)
        results["inprocess"] = [inprocess(col, qtexts, t, a.rounds) for t in a.levels]
        refs = {"int8": {i: [h.id for h in col.search(q, 10)] for i, q in enumerate(qtexts)}}
        bc.log("in-process search: first depth k times passages per record vs k")
        base = latix.Collection.open(path, encoder=enc_auto)
        results["first_depth"] = first_depth_ab(col, base, qtexts, a.rounds)
        base.close()
        col.close()
        col = latix.Collection.open(path, encoder=variants["fp32"])
        for q in qtexts[:20]:
            col.search(q, 10, n_threads=1)
        r32 = inprocess(col, qtexts, 1, a.rounds)
        r32["precision"] = "fp32"
        results["inprocess"].append(r32)
        refs["fp32"] = {i: [h.id for h in col.search(q, 10)] for i, q in enumerate(qtexts)}
        col.close()
        # 3. HTTP: the default server (int8 queries, one per encoder call), fp32 micro-batched,
        # and fp32 with batching off (the baseline of the batching)
        runs: list[dict[str, Any]] = []
        first_answer: dict[int, bytes] = {}  # the default server's answer to query 0
        servers = [
            (
                "int8 queries (`auto`, default), one per encoder call",
                ["--query-precision", "auto"],
                a.levels,
            ),
            ("fp32 queries, micro-batched", ["--query-precision", "fp32"], a.levels),
            (
                "fp32 queries, batching off (`--max-batch 1`)",
                ["--query-precision", "fp32", "--max-batch", "1"],
                [max(a.levels)],
            ),
        ]
        for label, extra, levels in servers:
            port = free_port()
            p = start_server(path, port, extra)
            ref = refs["int8" if "int8" in label else "fp32"]
            try:
                http_load(port, bodies[:50], 4)  # warm-up
                first = len(runs)
                for c in levels:
                    bc.log(f"HTTP {label}: {c} clients")
                    r, out = http_load(port, bodies * a.rounds, c)
                    del r["_lat"], r["_wall"]
                    same = sum(
                        [h["id"] for h in json.loads(out[i])["hits"]] == ref[i % len(qtexts)]
                        for i in range(len(qtexts))
                    )
                    r["same_top10_as_inprocess"] = f"{same}/{len(qtexts)}"
                    first_answer.setdefault(0, out[0])
                    r["server"] = label
                    runs.append(r)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
                    srv = json.loads(resp.read())["server"]
                for r in runs[first:]:
                    r["encoder_calls"] = srv["encoder_calls"]
                    r["queries_encoded"] = srv["queries_encoded"]
                    r["batching"] = srv["batching"]
            finally:
                stop_server(p)
        results["http"] = runs
        # The floor of the HTTP path: the same request and answer through uvicorn + FastAPI
        # with nothing searched (the default server's answer to the first query, fixed).
        bc.log("HTTP no-op handler: 1 client")
        answer = work / "noop-answer.json"
        answer.write_bytes(first_answer[0])
        results.update(noop_floor(answer, bodies * a.rounds))
        # 4. document encoding vs sgemm, 1 thread
        bc.log("document encoding vs sgemm")
        texts = [d.text for d in docs[:48] if d.text.strip()]
        enc1 = latix.Encoder.default(n_threads=1)
        dt = be.doc_throughput(enc1, texts, 1)
        sg = be.sgemm_gflops(1)
        gf = dt["tokens_per_s"] * be.flops_per_token(dt["avg_tokens"]) / 1e9
        results["documents"] = {
            "docs_per_s": round(dt["docs_per_s"], 2),
            "tokens_per_s": round(dt["tokens_per_s"], 0),
            "avg_tokens": round(dt["avg_tokens"], 1),
            "model_gflops": round(gf, 1),
            "sgemm_gflops": round(sg, 1),
            "share_of_sgemm": round(gf / sg, 3),
        }
    Path(a.out + ".json").write_text(json.dumps(results, indent=1))
    md = report(results, prov)
    Path(a.out + ".md").write_text(md)
    print(md)
    return 0


def report(r: dict[str, Any], prov: list[str]) -> str:
    http = r["http"]
    default = [x for x in http if "default" in x["server"]]
    batched = [x for x in http if "micro-batched" in x["server"]]
    off = [x for x in http if "off" in x["server"]]
    lines = [
        "# `latix serve`: end-to-end latency under concurrency",
        "",
        "Provenance:",
        *prov,
        "",
        f"SciFact compressed collection (the `latix index` defaults), {r['queries']} test queries "
        f"sent {r['rounds']}x per level, k=10, hits with text and metadata. Server: "
        "`latix serve --workers 2` (uvicorn; 1 encoder thread and 1 search thread per "
        "request); "
        "client: asyncio in the benchmark process, one keep-alive connection per client, each "
        "sending its next query when answered, on the same 2 cores. Latency: request written -> "
        "JSON body read. In-process: `Collection.search(text, 10)` (encoding included), one "
        "caller or a thread pool.",
        "",
        "| path | clients | p50 ms | p99 ms | QPS | same top-10 as in-process (same precision) |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["inprocess"]:
        who = "1 caller" if x["clients"] == 1 else f"{x['clients']} threads"
        lines.append(
            f"| in-process, {x.get('precision', 'int8 (`auto`)')} queries, {who} | {x['clients']} "
            f"| {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['qps']:.1f} | |"
        )
    for x in http:
        lines.append(
            f"| HTTP, {x['server']} | {x['clients']} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} "
            f"| {x['qps']:.1f} | {x['same_top10_as_inprocess']} |"
        )
    for key, stack in (("http_noop", "uvloop + httptools"), ("http_noop_h11", "asyncio + h11")):
        noop = r.get(key)
        if noop:
            lines.append(
                f"| HTTP, no-op handler ({stack}; latix's request model, a fixed real answer; "
                f"the HTTP path's floor) | 1 | {noop['p50_ms']:.2f} | {noop['p99_ms']:.2f} | "
                f"{noop['qps']:.1f} | |"
            )
    lines.append("")
    for name, rows in (("default server (int8 queries)", default), ("fp32 micro-batched", batched)):
        if len(rows) >= 2:
            one, top = rows[0], rows[-1]
            lines.append(
                f"- {name}: {top['clients']}-client QPS / 1-client QPS "
                f"**{top['qps'] / one['qps']:.2f}x** (target >= 1.7x); {top['clients']}-client "
                f"p99 / 1-client p50 **{top['p99_ms'] / one['p50_ms']:.2f}x** (target <= 5x); "
                f"1-client p50 **{one['p50_ms']:.2f} ms** (target <= 6 ms); "
                f"{one['queries_encoded']} queries in {one['encoder_calls']} encoder calls over "
                "the server's run."
            )
    if batched and off:
        b, o = batched[-1], off[0]
        lines.append(
            f"- micro-batching (fp32) at {o['clients']} clients: {b['qps']:.1f} QPS vs "
            f"{o['qps']:.1f} with batching off ({b['qps'] / o['qps']:.2f}x); p50 "
            f"{b['p50_ms']:.2f} vs {o['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} vs "
            f"{o['p99_ms']:.2f} ms."
        )
    fd = r.get("first_depth")
    if fd:
        d, b = fd["default"], fd["k"]
        lines += [
            "",
            "## First index depth of a late search (in-process, int8 queries, 1 caller)",
            "",
            "`Collection.search(text, 10)` with the default first depth (10 x passages per "
            f"record, at most {fd['passage_depth_max']:g}x) against a handle whose first index "
            "search asks for 10 passages (the depth before: a list filled by passages of the "
            "same records searched again 4x deeper), interleaved query by query:",
            "",
            "| first depth | p50 ms | p99 ms | index searches per search |",
            "|---|---|---|---|",
            f"| k x passages per record (default) | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | "
            f"{d['index_searches_per_search']:.2f} |",
            f"| k (before) | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | "
            f"{b['index_searches_per_search']:.2f} |",
            "",
            f"p50 ratio default / before: **{d['p50_ms'] / b['p50_ms']:.2f}x**.",
        ]
    lines += [
        "",
        "## Query encoder (1 thread, one query per call, fp32 vs int8 interleaved)",
        "",
        "| queries | precision | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, key in (
        ("10-word query", "encoder_10_words"),
        ("SciFact test queries", "encoder_scifact"),
    ):
        for prec, v in r[key].items():
            lines.append(f"| {name} | {prec} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |")
    d = r["documents"]
    lines += [
        "",
        f"Document encoding, 1 thread (first SciFact documents, {d['avg_tokens']} tokens on "
        f"average): {d['docs_per_s']} docs/s, {d['model_gflops']} model GFLOP/s = "
        f"**{100 * d['share_of_sgemm']:.0f}%** of the {d['sgemm_gflops']} GFLOP/s numpy sgemm "
        "rate measured in the same run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
