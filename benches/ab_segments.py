"""The search step of a request on a collection as ``latix index`` leaves it (several segments)
and on the same collection compacted into one segment (issue 11: the search's share of a
request).

``python benches/ab_segments.py --collection DIR [--out bench-results/serve-segments]`` copies
``DIR`` to ``--work``, compacts the copy (``Collection.compact()``, same codec) and times
``Collection.search_batch(query_vectors=..., k=10, n_threads=1)`` (text and metadata fetched)
on both, interleaved query by query, over the SciFact test queries encoded once (int8
``auto``), under the team's benchmark lock: CPU time per call (``time.process_time``,
comparable on a loaded machine), wall p50 and min, and whether the top-10 lists agree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import provenance  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--work", default="/tmp/latix-ab-segments")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    one = work / "compacted"
    shutil.copytree(a.collection, one)
    c = latix.Collection.open(one)
    t0 = time.perf_counter()
    c.compact()
    compact_s = time.perf_counter() - t0
    c.close()
    _, queries, qrels = bc.load_set("scifact")
    qs = [queries[q] for q in queries if q in qrels][: a.queries]
    enc = latix.Encoder.default(n_threads=1, query_precision="auto")
    qv = [enc.encode_queries([q])[0] for q in qs]
    cols = {
        "as built": latix.Collection.open(a.collection, encoder=enc),
        "compacted": latix.Collection.open(one, encoder=enc),
    }
    segs = {k: int(c.stats()["index"]["n_segments"]) for k, c in cols.items()}
    for v in qv[:20]:
        for c in cols.values():
            c.search_batch(None, 10, query_vectors=[v], n_threads=1)
    cpu: dict[str, list[float]] = {k: [] for k in cols}
    wall: dict[str, list[float]] = {k: [] for k in cols}
    tops: dict[str, list[list[str]]] = {k: [] for k in cols}
    loads = []
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        loads.append(provenance.load_average())
        for r in range(a.rounds):
            for v in qv:
                for k, c in cols.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    res = c.search_batch(None, 10, query_vectors=[v], n_threads=1)
                    cpu[k].append((time.process_time() - c0) * 1e3)
                    wall[k].append((time.perf_counter() - w0) * 1e3)
                    if r == 0:
                        tops[k].append([str(x) for x in res.ids[0]])
        loads.append(provenance.load_average())
    for c in cols.values():
        c.close()
    shutil.rmtree(work, ignore_errors=True)
    base = float(np.median(cpu["as built"]))
    res: dict[str, Any] = {
        "queries": len(qs),
        "rounds": a.rounds,
        "load_averages": loads,
        "compact_s": round(compact_s, 2),
        "variants": {
            k: {
                "segments": segs[k],
                "cpu_median_ms": round(float(np.median(cpu[k])), 3),
                "cpu_mean_ms": round(float(np.mean(cpu[k])), 3),
                "cpu_ratio": round(float(np.median(cpu[k])) / base, 3),
                "wall_p50_ms": round(float(np.percentile(wall[k], 50)), 3),
                "wall_min_ms": round(float(np.min(wall[k])), 3),
            }
            for k in cols
        },
        "same_top10": sum(x == y for x, y in zip(tops["as built"], tops["compacted"], strict=True)),
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out + ".json").write_text(json.dumps({"provenance": prov, **res}, indent=1))
        Path(a.out + ".md").write_text(report(res, prov))
    return 0


def report(r: dict[str, Any], prov: list[str]) -> str:
    loads = " ; ".join(r["load_averages"])
    lines = ["# Search step: segments as built vs compacted (issue 11)", "", "Provenance:"]
    lines += [
        *prov,
        "",
        f"Load averages (start / end of the timed part): {loads}. SciFact test queries "
        f"({r['queries']} x {r['rounds']}), encoded once (int8 `auto`); "
        "`Collection.search_batch(query_vectors=..., k=10, n_threads=1)` with text and "
        "metadata, the two collections interleaved query by query. Compaction of the copy took "
        f"{r['compact_s']} s.",
        "",
        "| collection | segments | CPU ms median | CPU mean | CPU ratio | wall p50 ms | wall min |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r["variants"].items():
        lines.append(
            f"| {k} | {v['segments']} | {v['cpu_median_ms']} | {v['cpu_mean_ms']} | "
            f"{v['cpu_ratio']} | {v['wall_p50_ms']} | {v['wall_min_ms']} |"
        )
    lines += ["", f"- same top-10 (ids in order): {r['same_top10']}/{r['queries']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
