"""Compaction of a vector-free compressed index: peak memory, time and losslessness, codes-domain
merge against the re-encoding path measured in the same run (issue 18, item 1).

One command: `python benches/bench_compact.py [--sizes 2M,5M,9M] [--lock FILE]`. Each size is
built exactly as benches/bench_scale.py builds it (its own build child: SciFact spread through
generated competing documents, latix defaults, codes only, vectors dropped, commits of 5,000
documents), then copied twice; one copy is compacted by the codes-domain merge (`compact()`, the
default) and the other by the re-encoding path (`_inner.compact(reencode=True)`: every vector-free
document decoded and re-encoded, what `compact()` did before), each in a child process that
reports its peak resident memory (`getrusage`: maps included) and its resident memory after
opening the index. Then, in this process, 100 SciFact test queries (k = 10, 1 thread) are searched
before compaction and on both compacted copies: the codes-domain copy must give the same ids and
scores (printed: the share of identical hits and the largest score change), the re-encoded one
shows the drift the old path caused. Printed per size, and at the end the growth of each peak
(ratio and log-log exponent against tokens). Indexes go under --work and are deleted unless
--keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402
import provenance  # noqa: E402
import scale_gen  # noqa: E402

HERE = Path(__file__).resolve().parent


def child_compact(path: str, mode: str, out: str) -> None:
    """Child process: opens `path`, compacts it by `mode` ("codes", "reencode"), writes figures."""
    import resource

    import latix

    t0 = time.perf_counter()
    ix = latix.Index.open(path, "w")
    open_rss = bench_scale.vm_rss_mb()
    segs = len(ix.segments())
    t = time.perf_counter()
    if mode == "codes":
        ix.compact()
    else:
        ix._inner.compact(False, None, True)
    compact_s = time.perf_counter() - t
    st = ix.stats()
    ix.close()
    info = {
        "mode": mode,
        "segments_before": segs,
        "compact_s": compact_s,
        "wall_s": time.perf_counter() - t0,
        "open_rss_mb": open_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_tokens": st["n_tokens"],
        "bytes_on_disk": st["bytes_on_disk"],
    }
    with open(out, "w") as f:
        json.dump(info, f)


def queries(data: str, n: int) -> list[np.ndarray]:
    d = Path(data) / "scifact"
    vec = np.load(d / "query_vectors.npy").astype(np.float32)
    off = np.load(d / "query_offsets.npy")
    return [vec[off[i] : off[i + 1]] for i in range(min(n, len(off) - 1))]


def hits(path: str, qs: list[np.ndarray]) -> list[tuple[list[str], np.ndarray]]:
    import latix

    with latix.Index.open(path) as ix:
        out = []
        for q in qs:
            s, h = ix.search(q, k=10, n_threads=1)
            out.append((list(h[0]), np.asarray(s[0], dtype=np.float64)))
    return out


def compare(a: list[tuple[list[str], np.ndarray]], b: list[tuple[list[str], np.ndarray]]) -> dict:
    same = sum(
        x == y for (ha, _), (hb, _) in zip(a, b, strict=True) for x, y in zip(ha, hb, strict=True)
    )
    total = sum(len(h) for h, _ in a)
    dmax = max(float(np.max(np.abs(sa - sb))) for (_, sa), (_, sb) in zip(a, b, strict=True))
    identical = all(
        ha == hb and np.array_equal(sa, sb) for (ha, sa), (hb, sb) in zip(a, b, strict=True)
    )
    return {"same_hits": same / total, "max_score_change": dmax, "identical": identical}


def run_child(args: list[str], lock: bench_scale.Lock, what: str) -> None:
    with lock.hold(what):
        subprocess.run([sys.executable, __file__, *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2M,5M,9M", help="corpus sizes in tokens")
    ap.add_argument("--data", default=bench_scale.DATA)
    ap.add_argument("--source", default=bench_scale.SOURCE)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench-compact"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit-docs", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--lock", default=None, help="flock this file during each timed phase")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=str(HERE.parent / "bench-results" / "compact.json"))
    ap.add_argument("--_compact", nargs=3, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._compact:
        child_compact(*a._compact)
        return
    provenance.print_header()
    os.makedirs(a.work, exist_ok=True)
    lock = bench_scale.Lock(a.lock)
    vaswani = str(scale_gen.vaswani_entry(Path(a.source)))
    qs = queries(a.data, a.queries)
    saved = json.load(open(a.json)) if os.path.exists(a.json) else {"sizes": {}}
    for s in a.sizes.split(","):
        n = bench_scale.parse_size(s)
        name = bench_scale.size_name(n)
        base = f"{a.work}/index-{name}"
        print(f"\n== {name}: build (bench_scale's build child)", flush=True)
        cmd = [sys.executable, str(HERE / "bench_scale.py"), "--_build", str(n)]
        cmd += ["--work", a.work, "--data", a.data, "--source", a.source]
        cmd += ["--_vaswani", vaswani, "--seed", str(a.seed), "--commit-docs", str(a.commit_docs)]
        with lock.hold("build"):
            subprocess.run(cmd, check=True)
        built = json.load(open(base + ".json"))
        before = hits(base, qs)
        row: dict = {
            "tokens": built["stats"]["n_tokens"],
            "build": {k: built[k] for k in ("build_s", "peak_rss_mb", "n_commits")},
            "load": os.getloadavg(),
        }
        for mode in ("codes", "reencode"):
            p = f"{base}-{mode}"
            if os.path.exists(p):
                shutil.rmtree(p)
            shutil.copytree(base, p)
            out = f"{p}.json"
            run_child(["--_compact", p, mode, out], lock, f"compact {mode}")
            r = json.load(open(out))
            r.update(compare(before, hits(p, qs)))
            row[mode] = r
            print(
                f"  {mode:8s}: {r['segments_before']} segments -> 1 in {r['compact_s']:.2f} s, "
                f"peak RSS {r['peak_rss_mb']:,.0f} MB (after open {r['open_rss_mb']:,.0f} MB); "
                f"hits identical {r['same_hits']:.1%}, max score change "
                f"{r['max_score_change']:.2e}, results identical: {r['identical']}",
                flush=True,
            )
            if not a.keep:
                shutil.rmtree(p)
        c, e = row["codes"], row["reencode"]
        print(
            f"  codes / reencode: peak RSS {c['peak_rss_mb'] / e['peak_rss_mb']:.2f}x, "
            f"time {c['compact_s'] / e['compact_s']:.2f}x; load {row['load']}",
            flush=True,
        )
        row["provenance"] = provenance.lines()
        saved["sizes"][name] = row
        with open(a.json + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
        if not a.keep:
            shutil.rmtree(base)
    rows = sorted(saved["sizes"].values(), key=lambda r: r["tokens"])
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        print(
            f"\ngrowth from {lo['tokens']:,} to {hi['tokens']:,} tokens "
            f"({hi['tokens'] / lo['tokens']:.2f}x):"
        )
        for mode in ("codes", "reencode"):
            for k in ("peak_rss_mb", "compact_s"):
                r = hi[mode][k] / lo[mode][k]
                ex = math.log(r) / math.log(hi["tokens"] / lo["tokens"])
                print(f"  {mode:8s} {k}: {r:.2f}x (exponent {ex:.2f})")


if __name__ == "__main__":
    main()
