"""The request path of two latix trees side by side: in-process ``Collection.search`` and
``latix serve`` at 1 / 4 / 16 clients, interleaved by blocks in one run (issue 11's before /
after figures).

``python benches/ab_serve.py --trees BEFORE/python AFTER/python`` runs each tree's code (its
``python/`` directory first on ``PYTHONPATH``, its own ``_core`` extension inside it) with this
interpreter, on the SciFact compressed collection benches/bench_serve.py builds
(``--collection``), under the team's benchmark lock:

* in-process: a subprocess per tree opens the collection (int8 ``auto`` queries, 1 thread) and
  times ``Collection.search(text, 10, n_threads=1)`` over the test queries, blocks of the trees
  alternating; wall p50/p99 and the CPU time (``time.process_time``) per search;
* HTTP: one ``latix serve --workers 2`` per tree (both started first, idle when not loaded), the
  asyncio client of bench_serve.py, each level's blocks alternating between the trees: p50,
  p99, QPS, and the server's CPU time per request (``/proc``).

Answers are compared between the trees (same ids and scores for every query). Writes
``--out`` .md / .json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import bench_serve as bs  # noqa: E402
import provenance  # noqa: E402

INPROC = r"""
import json, sys, time
import latix
path, qfile, out = sys.argv[1:4]
qs = json.load(open(qfile))
enc = latix.Encoder.default(n_threads=1, query_precision="auto")
col = latix.Collection.open(path, encoder=enc)
for q in qs[:20]:
    col.search(q, 10, n_threads=1)
print("ready", flush=True)
res = []
for line in sys.stdin:
    if line.strip() == "stop":
        break
    wall, cpu, hits = [], [], []
    for q in qs:
        c0, w0 = time.process_time(), time.perf_counter()
        h = col.search(q, 10, n_threads=1)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        hits.append([(x.id, x.score) for x in h])
    json.dump({"wall": wall, "cpu": cpu, "hits": hits}, open(out, "w"))
    print("done", flush=True)
"""


def env_for(tree: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = tree
    return e


def cpu_s(pid: int) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trees", nargs=2, required=True, help="before and after python/ dirs")
    ap.add_argument(
        "--collection",
        default=str(Path.home() / ".cache" / "latix" / "serve" / "scifact-auto"),
    )
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=2, help="blocks per tree and level")
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "serve-ab"))
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    _, queries, qrels = bc.load_set("scifact")
    qtexts = [queries[q] for q in queries if q in qrels][: a.queries]
    work = Path(a.out).parent
    qfile = Path(a.collection).with_name("ab-queries.json")
    qfile.write_text(json.dumps(qtexts))
    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in qtexts]
    names = ["before", "after"]
    res: dict[str, Any] = {"trees": dict(zip(names, a.trees, strict=True)), "queries": len(qtexts)}
    loads: list[str] = []
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        loads.append(provenance.load_average())
        # in-process
        procs = {}
        for n, t in zip(names, a.trees, strict=True):
            out = work / f".ab-{n}.json"
            p = subprocess.Popen(
                [sys.executable, "-c", INPROC, a.collection, str(qfile), str(out)],
                env=env_for(t),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            procs[n] = (p, out)
        inproc: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
        hits: dict[str, Any] = {}
        for _ in range(a.blocks):
            for n in names:
                p, out = procs[n]
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write("go\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "done"
                d = json.loads(out.read_text())
                inproc[n]["wall"] += d["wall"]
                inproc[n]["cpu"] += d["cpu"]
                hits[n] = d["hits"]
        for n in names:
            p, out = procs[n]
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
            p.wait(60)
            out.unlink(missing_ok=True)
        res["inprocess"] = {
            n: {
                **bs.pct(inproc[n]["wall"]),
                "cpu_ms_median": round(float(np.median(inproc[n]["cpu"])), 3),
                "cpu_ms_mean": round(float(np.mean(inproc[n]["cpu"])), 3),
            }
            for n in names
        }
        res["inprocess_same_hits"] = sum(
            x == y for x, y in zip(hits["before"], hits["after"], strict=True)
        )
        loads.append(provenance.load_average())
        # HTTP
        servers = {}
        try:
            for n, t in zip(names, a.trees, strict=True):
                port = bs.free_port()
                cmd = [sys.executable, "-m", "latix.cli", "serve", a.collection]
                cmd += ["--port", str(port), "--workers", "2"]
                p = subprocess.Popen(
                    cmd, env=env_for(t), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                bs.wait_ready(p, port)
                bs.http_load(port, bodies[:50], 4)  # warm-up
                servers[n] = (p, port)
            http: list[dict[str, Any]] = []
            answers: dict[str, dict[int, Any]] = {}
            for c in a.levels:
                lat: dict[str, list[float]] = {n: [] for n in names}
                wall = {n: 0.0 for n in names}
                cpu = {n: 0.0 for n in names}
                for _ in range(a.blocks):
                    for n in names:
                        p, port = servers[n]
                        c0 = cpu_s(p.pid)
                        r, out = bs.http_load(port, bodies, c)
                        cpu[n] += cpu_s(p.pid) - c0
                        lat[n] += r["_lat"]
                        wall[n] += r["_wall"]
                        if c == a.levels[0]:
                            answers[n] = out
                for n in names:
                    row: dict[str, Any] = {"tree": n, "clients": c, **bs.pct(lat[n])}
                    row["qps"] = round(len(lat[n]) / wall[n], 1)
                    row["server_cpu_ms_per_request"] = round(cpu[n] * 1e3 / len(lat[n]), 2)
                    http.append(row)
                    print(row, flush=True)
            res["http"] = http
            # How many searches each server ran on its lone path (servers that have one).
            lone: dict[str, Any] = {}
            for n, (_, port) in servers.items():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
                    srv = json.loads(r.read()).get("server", {})
                lone[n] = {
                    "lone_threads": srv.get("lone_threads"),
                    "lone_searches": srv.get("lone_searches"),
                    "searches": srv.get("queries_encoded"),
                }
            res["lone"] = lone
            res["http_same_answers"] = sum(
                json.loads(answers["before"][i])["hits"] == json.loads(answers["after"][i])["hits"]
                for i in range(len(bodies))
            )
        finally:
            for p, _ in servers.values():
                bs.stop_server(p)
        loads.append(provenance.load_average())
    res["load_averages"] = loads
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    md = report(res, prov)
    Path(a.out + ".md").write_text(md)
    print(md)
    return 0


def report(r: dict[str, Any], prov: list[str]) -> str:
    lines = ["# The request path before / after (issue 11)", "", "Provenance:", *prov, ""]
    lines.append(
        f"Trees: before `{r['trees']['before']}`, after `{r['trees']['after']}`. Load averages "
        f"(start / after in-process / end): {' ; '.join(r['load_averages'])}. SciFact "
        f"compressed collection, {r['queries']} test queries per block, blocks of the two trees "
        "alternating."
    )
    lines += ["", "| path | tree | clients | p50 ms | p99 ms | QPS | CPU ms / request |"]
    lines.append("|---|---|---|---|---|---|---|")
    for n, v in r["inprocess"].items():
        lines.append(
            f"| in-process `Collection.search` | {n} | 1 | {v['p50_ms']} | {v['p99_ms']} | | "
            f"{v['cpu_ms_median']} (median) |"
        )
    for v in r["http"]:
        lines.append(
            f"| HTTP `latix serve --workers 2` | {v['tree']} | {v['clients']} | {v['p50_ms']} | "
            f"{v['p99_ms']} | {v['qps']} | {v['server_cpu_ms_per_request']} (server) |"
        )
    lines += [
        "",
        f"- same hits (ids and scores) before / after: in-process {r['inprocess_same_hits']}/"
        f"{r['queries']}, HTTP {r['http_same_answers']}/{r['queries']}.",
    ]
    for n, v in r.get("lone", {}).items():
        lines.append(
            f"- {n}: lone_threads {v['lone_threads']}, {v['lone_searches']} of {v['searches']} "
            "searches (warm-up included) on the lone path."
        )
    lines += [
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
