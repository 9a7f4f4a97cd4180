"""How a lone request's two steps split over 2 threads (issue 11, item 1), in-process.

``latix serve`` gives a request that is alone in flight 2 onnxruntime threads for its query
encoding and 2 search threads. This script times the two steps separately on the SciFact test
queries, the variants of each step interleaved query by query in random order, under the
team's benchmark lock:

* encoding (the int8 ``auto`` query graph): the 1-thread session, a 2-thread session whose
  threads spin-wait (onnxruntime's default) and a 2-thread session with spinning off
  (``Encoder(query_spinning=False)``);
* search (``Collection.search_batch(query_vectors=..., n_threads=t)`` over the collection
  ``--collection``, text and metadata fetched): 1 and 2 threads.

Per variant: wall p50, p10 and min (on a loaded machine the p50 is mostly waiting for a core;
the low percentiles show what the variant does when the cores are free) and the process's CPU
time per call (``time.process_time``: spinning shows up here).

``python benches/lone_threads.py --collection DIR --out bench-results/serve-lone-split``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
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


def stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    w = np.asarray(wall)
    return {
        "wall_p50_ms": round(float(np.percentile(w, 50)), 3),
        "wall_p10_ms": round(float(np.percentile(w, 10)), 3),
        "wall_min_ms": round(float(w.min()), 3),
        "cpu_median_ms": round(float(np.median(cpu)), 3),
        "cpu_mean_ms": round(float(np.mean(cpu)), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix

    _, queries, qrels = bc.load_set("scifact")
    qs = [queries[q] for q in queries if q in qrels][: a.queries]
    spin = latix.Encoder.default(n_threads=1, query_precision="auto", query_threads=[2])
    nospin = latix.Encoder.default(
        n_threads=1, query_precision="auto", query_threads=[2], query_spinning=False
    )
    col = latix.Collection.open(a.collection, encoder=spin)
    qv = {q: spin.encode_queries([q])[0] for q in qs}
    enc_v: dict[str, Callable[[str], Any]] = {
        "encode, 1 thread": lambda q: spin.encode_queries([q]),
        "encode, 2 threads, spinning (onnxruntime default)": lambda q: spin.encode_queries(
            [q], n_threads=2
        ),
        "encode, 2 threads, spinning off": lambda q: nospin.encode_queries([q], n_threads=2),
    }
    search_v: dict[str, Callable[[str], Any]] = {
        f"search, {t} thread{'s' if t > 1 else ''}": (
            lambda q, t=t: col.search_batch([q], 10, query_vectors=[qv[q]], n_threads=t)
        )
        for t in (1, 2)
    }
    variants = {**enc_v, **search_v}
    same = all(
        np.array_equal(spin.encode_queries([q])[0], nospin.encode_queries([q], n_threads=2)[0])
        and np.array_equal(spin.encode_queries([q])[0], spin.encode_queries([q], n_threads=2)[0])
        for q in qs[:50]
    )
    for q in qs[:20]:
        for f in variants.values():
            f(q)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    loads = []
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        loads.append(provenance.load_average())
        for _ in range(a.rounds):
            for q in qs:
                names = list(variants)
                rng.shuffle(names)
                for k in names:
                    c0, w0 = time.process_time(), time.perf_counter()
                    variants[k](q)
                    wall[k].append((time.perf_counter() - w0) * 1e3)
                    cpu[k].append((time.process_time() - c0) * 1e3)
        loads.append(provenance.load_average())
    col.close()
    res: dict[str, Any] = {
        "queries": len(qs),
        "rounds": a.rounds,
        "load_averages": loads,
        "vectors_bit_equal_across_sessions": same,
        "variants": {k: stats(wall[k], cpu[k]) for k in variants},
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out + ".json").write_text(json.dumps({"provenance": prov, **res}, indent=1))
        Path(a.out + ".md").write_text(report(res, prov))
    return 0


def report(r: dict[str, Any], prov: list[str]) -> str:
    lines = ["# A lone request's steps on 1 or 2 threads (issue 11, item 1)", "", "Provenance:"]
    lines += [
        *prov,
        "",
        f"Load averages (start / end of the timed part): {' ; '.join(r['load_averages'])}. "
        f"SciFact test queries ({r['queries']} x {r['rounds']}), variants interleaved query by "
        "query in random order; int8 (`auto`) query graph; search over the SciFact compressed "
        "collection (k=10, text and metadata). CPU: `time.process_time` per call (all threads "
        "of the process).",
        "",
        "| step, variant | wall p50 ms | wall p10 ms | wall min ms | CPU ms median | CPU mean |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in r["variants"].items():
        lines.append(
            f"| {k} | {v['wall_p50_ms']} | {v['wall_p10_ms']} | {v['wall_min_ms']} | "
            f"{v['cpu_median_ms']} | {v['cpu_mean_ms']} |"
        )
    lines += [
        "",
        "- query vectors bit-equal across the three sessions (first 50 queries): "
        f"{r['vectors_bit_equal_across_sessions']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
