"""The merge policy against many commits (issue 18, item 2): search latency with the policy, without
it and after compact(), and what the policy adds to commit time, measured in the same run.

One command: `python benches/bench_merge.py [--commits 30] [--commit-tokens 300k] [--lock FILE]`.
The corpus is benches/bench_scale.py's (SciFact spread through generated competing documents from
benches/scale_gen.py, latix defaults: codes only, vectors dropped), added in --commits commits of
about --commit-tokens tokens each, twice, each build in a child process: once with the merge
policy off (`set_merge_policy(None)`: one segment per commit, what latix did before) and once with
its defaults (`Index.set_merge_policy()`: 10 segments per tier, no merge above 2^25 live tokens);
with `--max-merge-tokens N`, a third build with that bound (small enough to apply at this size:
the default bound is far above a 9M-token run). Per build: the median and largest
commit time (the policy's merges run inside commit) and the segment count. Then k = 10 searches,
one query at a time, 1 thread, over SciFact's test queries (after one untimed pass): p50 / p99 of
the build without the policy, with it, and of a copy of the former after `compact()` (the
codes-domain merge, timed in a child process with its peak RSS, beside the re-encoding path
`_inner.compact(reencode=True)` on another copy). Ratios printed against the no-policy build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compact  # noqa: E402
import bench_scale  # noqa: E402
import provenance  # noqa: E402
import scale_gen  # noqa: E402

HERE = Path(__file__).resolve().parent


def child_build(a: argparse.Namespace, out: str, mode: str) -> None:
    """Child process: builds the index with the merge policy off, on (defaults) or bounded by
    `a.max_merge_tokens`, writes `<out>.json`."""
    import latix

    pools, _ = scale_gen.load_pools(a.data, a.source, a.seed, Path(a._vaswani), identify=False)
    sci_ids = json.load(open(f"{a.data}/scifact/doc_ids.json"))
    n_tokens = a.commits * a.commit_tokens
    # The mean of the lengths generated documents are drawn from (SciFact's non-empty ones): the
    # mean over the pools (SciFact and the shorter Vaswani sample) made commits ~1.4x too large
    # (22 commits of ~410k tokens for --commits 30 --commit-tokens 300k).
    mean_len = float(np.mean(pools.sci_lengths))
    commit_docs = max(1, round(a.commit_tokens / mean_len))
    corpus = bench_scale.Corpus(pools, a.seed, n_tokens, commit_docs)
    if os.path.exists(out):
        shutil.rmtree(out)
    ix = latix.Index.create(out, dim=pools.dim, compression=latix.Compression())
    if mode == "off":
        ix.set_merge_policy(None)
    elif mode == "bounded":
        ix.set_merge_policy(max_merge_tokens=a.max_merge_tokens)
    commit_s, commit_cpu_s, seg_counts, tokens = [], [], [], []
    for ids, docs, _g, ends in corpus.commits(sci_ids, piece=min(500, commit_docs)):
        ix.add(ids, docs)
        del docs
        if ends:
            t, c = time.perf_counter(), time.process_time()
            ix.commit()
            commit_s.append(time.perf_counter() - t)
            commit_cpu_s.append(time.process_time() - c)
            seg_counts.append(len(ix.segments()))
            tokens.append(ix.num_tokens)
    st = ix.stats()
    segment_docs = [int(n_live) for _f, _n, n_live in ix.segments()]
    ix.close()
    info = {
        "policy": mode,
        "max_merge_tokens": a.max_merge_tokens if mode == "bounded" else None,
        "commit_docs": commit_docs,
        "commit_s": commit_s,
        "commit_cpu_s": commit_cpu_s,
        "segments_after_commit": seg_counts,
        "tokens_after_commit": tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stats": st,
        "segment_live_docs": segment_docs,
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f, default=str)


def latency(path: str, qs: list[np.ndarray]) -> dict:
    import latix

    with latix.Index.open(path) as ix:
        for q in qs:
            ix.search(q, k=10, n_threads=1)
        ts = []
        for q in qs:
            t = time.perf_counter()
            ix.search(q, k=10, n_threads=1)
            ts.append((time.perf_counter() - t) * 1e3)
        return {
            "p50_ms": float(np.percentile(ts, 50)),
            "p99_ms": float(np.percentile(ts, 99)),
            "segments": len(ix.segments()),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=30)
    ap.add_argument("--commit-tokens", type=bench_scale.parse_size, default=300_000)
    ap.add_argument("--data", default=bench_scale.DATA)
    ap.add_argument("--source", default=bench_scale.SOURCE)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench-merge"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-merge-tokens",
        type=bench_scale.parse_size,
        default=None,
        help="also build with this merge bound (e.g. 2M)",
    )
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--lock", default=None, help="flock this file during each timed phase")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=str(HERE.parent / "bench-results" / "merge.json"))
    ap.add_argument(
        "--scale-json",
        default=None,
        help="also store the run under key 'policy_run' of this bench_scale.py JSON (and "
        "rewrite its Markdown, --scale-md)",
    )
    ap.add_argument("--scale-md", default=str(HERE.parent / "bench-results" / "scale.md"))
    ap.add_argument("--_build", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_vaswani", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build:
        child_build(a, a._build[0], a._build[1])
        return
    provenance.print_header()
    os.makedirs(a.work, exist_ok=True)
    lock = bench_scale.Lock(a.lock)
    vaswani = str(scale_gen.vaswani_entry(Path(a.source)))
    qs = bench_compact.queries(a.data, a.queries)
    res: dict = {
        "provenance": provenance.lines(),
        "commits": a.commits,
        "commit_tokens": a.commit_tokens,
    }
    modes = ("off", "on") + (("bounded",) if a.max_merge_tokens else ())
    for mode in modes:
        out = f"{a.work}/index-{mode}"
        cmd = [sys.executable, __file__, "--_build", out, mode, "--_vaswani", vaswani]
        cmd += ["--commits", str(a.commits), "--commit-tokens", str(a.commit_tokens)]
        cmd += ["--data", a.data, "--source", a.source, "--seed", str(a.seed)]
        if a.max_merge_tokens:
            cmd += ["--max-merge-tokens", str(a.max_merge_tokens)]
        with lock.hold(f"build policy {mode}"):
            load = os.getloadavg()
            subprocess.run(cmd, check=True)
        b = json.load(open(out + ".json"))
        with lock.hold(f"search policy {mode}"):
            lat = latency(out, qs)
            lat["load"] = os.getloadavg()
        cs = b["commit_s"]
        res[mode] = {
            "build": b,
            "build_load": load,
            "search": lat,
            "commit_median_s": float(np.median(cs)),
            "commit_max_s": float(np.max(cs)),
        }
        # Whether a commit's cost grows with the index: CPU of the first and last third of the
        # commits (the same number of tokens each; CPU time is what load changes least).
        cpu = b["commit_cpu_s"]
        third = max(1, len(cpu) // 3)
        res[mode]["commit_cpu_first_third_median_s"] = float(np.median(cpu[:third]))
        res[mode]["commit_cpu_last_third_median_s"] = float(np.median(cpu[-third:]))
        res[mode]["largest_segment_docs"] = max(b["segment_live_docs"], default=0)
        print(
            f"policy {mode}: {len(cs)} commits, {b['stats']['n_tokens']:,} tokens, "
            f"{lat['segments']} segments; commit median {np.median(cs):.2f} s, max "
            f"{np.max(cs):.2f} s; p50 / p99 {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms "
            f"(load {lat['load']}); commit CPU median, first / last third of the commits: "
            f"{res[mode]['commit_cpu_first_third_median_s']:.2f} / "
            f"{res[mode]['commit_cpu_last_third_median_s']:.2f} s; largest segment "
            f"{res[mode]['largest_segment_docs']:,} docs ({b['commit_docs']:,} a commit)",
            flush=True,
        )
    base = f"{a.work}/index-off"
    before = bench_compact.hits(base, qs[:100])
    for mode in ("codes", "reencode"):
        p = f"{base}-{mode}"
        if os.path.exists(p):
            shutil.rmtree(p)
        shutil.copytree(base, p)
        bench_compact.run_child(["--_compact", p, mode, p + ".json"], lock, f"compact {mode}")
        r = json.load(open(p + ".json"))
        r.update(bench_compact.compare(before, bench_compact.hits(p, qs[:100])))
        if mode == "codes":
            with lock.hold("search compacted"):
                r["search"] = latency(p, qs)
                r["search"]["load"] = os.getloadavg()
        res["compact_" + mode] = r
        print(
            f"compact ({mode}): {r['segments_before']} segments -> 1 in {r['compact_s']:.2f} s, "
            f"peak RSS {r['peak_rss_mb']:,.0f} MB; identical results: {r['identical']} "
            f"(hits {r['same_hits']:.1%}, max score change {r['max_score_change']:.2e})",
            flush=True,
        )
        if not a.keep:
            shutil.rmtree(p)
    off, on = res["off"], res["on"]
    cp = res["compact_codes"]["search"]
    p_off = off["search"]["p50_ms"]
    c_off = off["commit_median_s"]
    print(
        f"\np50 1 thread: no policy {off['search']['p50_ms']:.2f} ms, policy "
        f"{on['search']['p50_ms']:.2f} ms ({on['search']['p50_ms'] / p_off:.2f}x),"
        f" after compact() {cp['p50_ms']:.2f} ms ({cp['p50_ms'] / p_off:.2f}x)"
    )
    print(
        f"commit time: median {on['commit_median_s']:.2f} s with the policy vs "
        f"{c_off:.2f} s without ({on['commit_median_s'] / c_off:.2f}x);"
        f" max {on['commit_max_s']:.2f} s vs {off['commit_max_s']:.2f} s"
    )
    cc, ce = res["compact_codes"], res["compact_reencode"]
    print(
        f"compaction: codes-domain {cc['compact_s']:.2f} s / {cc['peak_rss_mb']:,.0f} MB vs "
        f"re-encoding {ce['compact_s']:.2f} s / {ce['peak_rss_mb']:,.0f} MB "
        f"({cc['compact_s'] / ce['compact_s']:.2f}x time, "
        f"{cc['peak_rss_mb'] / ce['peak_rss_mb']:.2f}x memory)"
    )
    if "bounded" in res:
        bd = res["bounded"]
        print(
            f"bounded by {a.max_merge_tokens:,} tokens: p50 {bd['search']['p50_ms']:.2f} ms "
            f"({bd['search']['p50_ms'] / p_off:.2f}x no policy), {bd['search']['segments']} "
            f"segments; commit max {bd['commit_max_s']:.2f} s vs {on['commit_max_s']:.2f} s "
            f"with the defaults ({bd['commit_max_s'] / on['commit_max_s']:.2f}x)"
        )
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1, default=str)
    if a.scale_json:
        saved = json.load(open(a.scale_json))
        saved["policy_run"] = json.loads(json.dumps(res, default=str))
        with open(a.scale_json + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(a.scale_json + ".tmp", a.scale_json)
        saved["fit"] = bench_scale.fits(saved["sizes"])
        with open(a.scale_md, "w") as f:
            f.write(bench_scale.markdown(saved))
    if not a.keep:
        for mode in modes:
            shutil.rmtree(f"{a.work}/index-{mode}")


if __name__ == "__main__":
    main()
