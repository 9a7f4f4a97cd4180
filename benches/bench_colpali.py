"""The ColPali-shaped scale run (issue 18): long multi-vector documents, the visual-retrieval case.

One command: `python benches/bench_colpali.py [--pages 10k,30k,100k] [--lock FILE]`. Pages are
benches/scale_gen.py's `PageGenerator`: 1,030 unit patch vectors of 128 dimensions per page,
seeded synthetic clustered data made on the fly (nothing of the collection is stored as input;
100k pages = 103M tokens). One index (latix's defaults, `latix.Compression()`, merge policy on)
grows through the sizes, in commits of --commit-pages (1,000 pages, 1.03M tokens): for each size a
child process adds the pages up to it and reports its latix time (adds and commits; generating
excluded, given beside it) and its peak resident memory (`getrusage`); a size's build time is the
sum over the children so far, its peak RSS the largest of them. Then, in this process:

* bytes per token on disk (`Index.stats()["bytes_on_disk"]` / tokens);
* k = 10 latency, one query at a time, 1 and 2 threads, over --queries (200) synthetic queries of
  20 tokens, each aimed at one of the first 10,000 pages, after one untimed pass: p50 / p99;
* recall@10 against exact MaxSim on the first --exact-sample (50) queries, and the share of them
  whose target page is in latix's (and exact's) top 10. The exact top 20 is kept per size under
  --work (keyed by the generator's parameters, the queries and the size) and extended from the
  largest smaller size already computed by scoring only the pages added since (`latix.maxsim`, the
  exact kernel, both threads); each cached top 10 of 5 queries is re-scored in float64 from pages
  regenerated alone and must match;
* `Index.open` (median of 5 opens) and add + commit of the next 1,000 pages in a fresh process
  (wall and process CPU time, and the commit's stages from `LATIX_PROFILE_COMMIT`, so that what
  grows with the index, if anything, shows by stage). These pages stay in the index: the next size
  is built on it.

With --lock FILE, the build, the searches and the add hold an exclusive flock on FILE; the exact
reference holds it too and releases it every 10 minutes (benches/bench_scale.py's `Lock`), unless
--exact-unlocked (it is untimed: on a shared machine it then runs beside others' timed runs).
Results merge into --json (bench-results/scale.json, key "colpali") and bench-results/scale.md is
rewritten from it (benches/bench_scale.py's table plus a ColPali table, each size with its
provenance and load average). The index is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402
import provenance  # noqa: E402
import scale_gen  # noqa: E402
from checksums import combined  # noqa: E402

HERE = Path(__file__).resolve().parent
#: Queries aim at pages below this (present at every size measured).
TARGET_PAGES = 10_000
#: Exact hits kept per sample query.
EXACT_K = 20
#: Pages per batch of the exact reference and per add() of the build.
BATCH = 100
#: Pages added and committed to the built index, timed.
ADD_PAGES = 1000
#: Opens timed per size (median reported).
OPENS = 5


def child_build(a: argparse.Namespace, start: int, stop: int) -> None:
    """Child process: adds pages `start:stop` to the index (created when `start` is 0), in
    commits of `--commit-pages`, and writes `<index>.build.json`."""
    import latix

    gen = scale_gen.PageGenerator(a.seed)
    out = f"{a.work}/index"
    t0 = time.perf_counter()
    if start == 0:
        if os.path.exists(out):
            shutil.rmtree(out)
        ix = latix.Index.create(out, dim=scale_gen.PAGE_DIM, compression=latix.Compression())
    else:
        ix = latix.Index.open(out, "w")
    gen_s, add_s, commit_s, segments = 0.0, 0.0, [], []
    for c0 in range(start, stop, a.commit_pages):
        c1 = min(stop, c0 + a.commit_pages)
        for s0 in range(c0, c1, BATCH):
            s1 = min(c1, s0 + BATCH)
            t = time.perf_counter()
            v = gen.batch(s0, s1)
            gen_s += time.perf_counter() - t
            t = time.perf_counter()
            ix.add(scale_gen.page_ids(s0, s1), v)
            add_s += time.perf_counter() - t
            del v
        t = time.perf_counter()
        ix.commit()
        commit_s.append(time.perf_counter() - t)
        segments.append(ix.stats()["n_segments"])
    st = ix.stats()
    ix.close()
    wall = time.perf_counter() - t0
    info = {
        "wall_s": wall,
        "generate_s": gen_s,
        "build_s": wall - gen_s,
        "add_s": add_s,
        "commit_s": commit_s,
        "segments_after_commit": segments,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stats": st,
    }
    with open(f"{out}.build.json", "w") as f:
        json.dump(info, f, default=str)


#: A commit's stage line printed by `LATIX_PROFILE_COMMIT` (rust/core/src/profile.rs).
STAGE = re.compile(r"^\s+(\S+)\s+wall\s+([\d.]+) s\s+cpu\s+([\d.]+) s\s+\((\d+) spans\)")


def child_add(a: argparse.Namespace, start: int) -> None:
    """Child process: adds pages `start:start + ADD_PAGES` in one commit with a fresh writer
    handle, timed (wall and process CPU), and writes `<index>.add.json`."""
    import latix

    gen = scale_gen.PageGenerator(a.seed)
    v = gen.batch(start, start + ADD_PAGES)
    ids = scale_gen.page_ids(start, start + ADD_PAGES)
    out = f"{a.work}/index"
    with latix.Index.open(out, "w") as ix:
        t, c = time.perf_counter(), time.process_time()
        ix.add(ids, v)
        t_add, c_add = time.perf_counter() - t, time.process_time() - c
        ix.commit()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        segs = ix.stats()["n_segments"]
    info = {"wall_s": wall, "cpu_s": cpu, "add_wall_s": t_add, "add_cpu_s": c_add}
    info["segments"] = segs
    with open(f"{out}.add.json", "w") as f:
        json.dump(info, f)


def queries(seed: int, n: int) -> tuple[list[int], list[np.ndarray]]:
    gen = scale_gen.PageGenerator(seed)
    qs = [gen.query(i, TARGET_PAGES) for i in range(n)]
    return [t for t, _ in qs], [q for _, q in qs]


def exact_reference(
    a: argparse.Namespace, n_pages: int, qs: list[np.ndarray], lock: bench_scale.Lock
) -> dict[str, Any]:
    """The exact top `EXACT_K` over pages `0:n_pages` of each of `qs`, from the cache, extended
    from the largest smaller cached size (only new pages scored), or computed."""
    import latix

    gen = scale_gen.PageGenerator(a.seed)
    key = combined([gen.params(), [q.tolist() for q in qs], EXACT_K, 1])[:12]
    have = []
    for f in Path(a.work).glob(f"exact-{key}-*.json"):
        n = int(f.stem.rsplit("-", 1)[1])
        if n <= n_pages:
            have.append((n, f))
    best: dict[str, Any] = {"pages": 0, "ids": [[] for _ in qs], "scores": [[] for _ in qs]}
    best["seconds"] = 0.0
    if have:
        best = json.load(open(max(have)[1]))
    if best["pages"] < n_pages:
        hold = contextlib.nullcontext() if a.exact_unlocked else lock.hold(f"exact {n_pages:,}")
        with hold:
            t = time.time()
            ids = [list(x) for x in best["ids"]]
            sc = [np.array(x, np.float32) for x in best["scores"]]
            for p0 in range(best["pages"], n_pages, BATCH):
                p1 = min(n_pages, p0 + BATCH)
                v = gen.batch(p0, p1).reshape(-1, scale_gen.PAGE_DIM)
                off = np.arange(0, (p1 - p0) * scale_gen.PAGE_TOKENS + 1, scale_gen.PAGE_TOKENS)
                names = scale_gen.page_ids(p0, p1)
                for i, q in enumerate(qs):
                    s = np.concatenate([sc[i], latix.maxsim(q, v, off, n_threads=2)])
                    top = np.argsort(-s, kind="stable")[:EXACT_K]
                    allnames = ids[i] + names
                    sc[i], ids[i] = s[top], [allnames[j] for j in top]
                lock.share()
            best = {
                "pages": n_pages,
                "ids": ids,
                "scores": [[float(x) for x in s] for s in sc],
                "seconds": best["seconds"] + time.time() - t,
            }
        path = f"{a.work}/exact-{key}-{n_pages}.json"
        with open(path + ".tmp", "w") as f:
            json.dump(best, f)
        os.replace(path + ".tmp", path)
    for q, top_ids, top_s in list(zip(qs, best["ids"], best["scores"], strict=True))[:5]:
        q64 = q.astype(np.float64)
        for d, s in zip(top_ids[:10], top_s[:10], strict=True):
            x = gen.page(int(d.split("-")[1])).astype(np.float64)
            want = float((q64 @ x.T).max(axis=1).sum())
            assert abs(want - s) <= 1e-3, f"{d}: cached {s} vs float64 {want}"
    return best


STAGES = re.compile(r"latix profile: commit\n((?:\s+.*\n)+)")


def measure(a: argparse.Namespace, n_pages: int, built: int, acc: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one size; `built`: pages already in the index; `acc`: build time and
    peak RSS so far (updated)."""
    import latix

    name = f"{n_pages // 1000}k pages" if n_pages % 1000 == 0 else f"{n_pages} pages"
    n_tokens = n_pages * scale_gen.PAGE_TOKENS
    print(f"\n## {name}: {n_tokens:,} tokens", flush=True)
    prov = provenance.lines()
    lock = bench_scale.Lock(a.lock)
    targets, qs = queries(a.seed, a.queries)
    sample = qs[: a.exact_sample]
    ref = exact_reference(a, n_pages, sample, lock)
    out = f"{a.work}/index"
    load_before = provenance.load_average()
    me = [sys.executable, __file__, "--work", a.work, "--seed", str(a.seed)]
    me += ["--commit-pages", str(a.commit_pages)]
    with lock.hold(f"build {name}"):
        subprocess.run(me + ["--_build", str(built), str(n_pages)], check=True)
        load_build = provenance.load_average()
    info = json.load(open(f"{out}.build.json"))
    acc["build_s"] += info["build_s"]
    acc["generate_s"] += info["generate_s"]
    acc["peak_rss_mb"] = max(acc["peak_rss_mb"], info["peak_rss_mb"])
    acc["commit_s"] += info["commit_s"]
    st = info["stats"]
    print(
        f"build {built:,} -> {n_pages:,} pages: {info['build_s']:.1f} s latix (+ "
        f"{info['generate_s']:.1f} s generating), peak RSS {info['peak_rss_mb']:,.0f} MB; "
        f"cumulative {acc['build_s']:.1f} s; {st['n_segments']} segments, K {st['n_centroids']}; "
        f"load {load_before} -> {load_build}",
        flush=True,
    )
    with lock.hold(f"search {name}"):
        load_search0 = provenance.load_average()
        ix = latix.Index.open(out)
        for q in qs:
            ix.search(q, k=10, n_threads=1)
        lat: dict[int, list[float]] = {1: [], 2: []}
        hits: list[list[str]] = []
        for q in qs:
            for th in (1, 2):
                t = time.perf_counter()
                _, h = ix.search(q, k=10, n_threads=th)
                lat[th].append(time.perf_counter() - t)
            hits.append([str(d) for d in h[0] if d])
        ix.close()
        load_search = provenance.load_average()
        opens = []
        for _ in range(OPENS):
            t = time.perf_counter()
            latix.Index.open(out).close()
            opens.append(time.perf_counter() - t)
        env = dict(os.environ, LATIX_PROFILE_COMMIT="1")
        p = subprocess.run(
            me + ["--_add", str(n_pages)], check=True, env=env, capture_output=True, text=True
        )
        load_add = provenance.load_average()
    add = json.load(open(f"{out}.add.json"))
    stages = {}
    m = STAGES.search(p.stderr)
    if m:
        for ln in m.group(1).splitlines():
            s = STAGE.match(ln)
            if s:
                stages[s.group(1)] = {"wall_s": float(s.group(2)), "cpu_s": float(s.group(3))}
    acc["build_s"] += add["wall_s"]
    rec = [len(set(hits[i]) & set(ref["ids"][i][:10])) / 10 for i in range(len(sample))]
    tgt = [f"page-{targets[i]}" for i in range(len(qs))]
    r = {
        "size": name,
        "n_pages": n_pages,
        "n_tokens": n_tokens,
        "n_centroids": st.get("n_centroids"),
        "n_segments": st.get("n_segments"),
        "build_s": acc["build_s"] - add["wall_s"],
        "generate_s": acc["generate_s"],
        "peak_rss_mb": acc["peak_rss_mb"],
        "bytes_on_disk": st["bytes_on_disk"],
        "bytes_per_token": st["bytes_on_disk"] / n_tokens,
        "p50_1t_ms": bench_scale.pct(lat[1], 50),
        "p99_1t_ms": bench_scale.pct(lat[1], 99),
        "p50_2t_ms": bench_scale.pct(lat[2], 50),
        "p99_2t_ms": bench_scale.pct(lat[2], 99),
        "recall_at_10_vs_exact": float(np.mean(rec)),
        "target_in_top10": float(np.mean([t in h for t, h in zip(tgt, hits, strict=True)])),
        "exact_target_in_top10": float(
            np.mean([tgt[i] in ref["ids"][i][:10] for i in range(len(sample))])
        ),
        "open_ms": float(np.median(opens)) * 1000,
        "add_commit_1000_s": add["wall_s"],
        "add_commit_1000_cpu_s": add["cpu_s"],
        "add_1000_s": add["add_wall_s"],
        "add_stages": stages,
        "segments_after_add": add["segments"],
        "exact_s": ref["seconds"],
        "commit_s_median": float(np.median(acc["commit_s"])),
        "commit_s_max": float(np.max(acc["commit_s"])),
        "queries": len(qs),
        "exact_sample": len(sample),
        "load": {"build": [load_before, load_build], "search": [load_search0, load_search]},
        "load_add": load_add,
        "provenance": prov,
    }
    print(
        f"bytes/token {r['bytes_per_token']:.1f}; p50/p99 1T {r['p50_1t_ms']:.2f}/"
        f"{r['p99_1t_ms']:.2f} ms, 2T {r['p50_2t_ms']:.2f}/{r['p99_2t_ms']:.2f} ms (load "
        f"{load_search0} -> {load_search}); recall@10 vs exact {r['recall_at_10_vs_exact']:.3f}; "
        f"target in top 10 {r['target_in_top10']:.2f} (exact "
        f"{r['exact_target_in_top10']:.2f}); open {r['open_ms']:.1f} ms; add + commit "
        f"{ADD_PAGES:,} pages {add['wall_s']:.2f} s (cpu {add['cpu_s']:.2f} s; load {load_add})",
        flush=True,
    )
    for k, s in stages.items():
        print(f"  {k:<28} wall {s['wall_s']:8.3f} s  cpu {s['cpu_s']:8.3f} s")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pages", default="10k,30k,100k", help="collection sizes in pages")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench-colpali"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit-pages", type=int, default=1000, help="pages per commit")
    ap.add_argument("--queries", type=int, default=200, help="timed queries")
    ap.add_argument("--exact-sample", type=int, default=50, help="queries with exact reference")
    ap.add_argument("--lock", default=None, help="flock this file during each heavy phase")
    ap.add_argument(
        "--exact-unlocked",
        action="store_true",
        help="compute the (untimed) exact reference without holding --lock",
    )
    ap.add_argument("--keep", action="store_true", help="keep the index")
    res = HERE.parent / "bench-results"
    ap.add_argument("--json", default=str(res / "scale.json"))
    ap.add_argument("--md", default=str(res / "scale.md"))
    ap.add_argument("--_build", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_add", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build is not None:
        return child_build(a, *a._build)
    if a._add is not None:
        return child_add(a, a._add)
    os.makedirs(a.work, exist_ok=True)
    sizes = sorted(bench_scale.parse_size(s) for s in a.pages.split(","))
    if sizes[0] < TARGET_PAGES:
        raise SystemExit(f"the smallest size must hold the {TARGET_PAGES:,} query targets")
    need = sizes[-1] * scale_gen.PAGE_TOKENS * 40 + (4 << 30)
    if shutil.disk_usage(a.work).free < need:
        raise SystemExit(f"need {need / 1e9:.0f} GB free under {a.work}")
    provenance.print_header()
    acc: dict[str, Any] = {"build_s": 0.0, "generate_s": 0.0, "peak_rss_mb": 0.0, "commit_s": []}
    built = 0
    for n in sizes:
        if n < built:
            raise SystemExit(f"sizes must grow by more than {ADD_PAGES} pages")
        r = measure(a, n, built, acc)
        built = n + ADD_PAGES
        saved = json.load(open(a.json)) if os.path.exists(a.json) else {"sizes": {}}
        saved.setdefault("colpali", {})[r["size"]] = r
        rows = sorted(saved["colpali"].values(), key=lambda x: x["n_tokens"])
        saved["colpali_fit"] = colpali_fit(rows)
        with open(a.json + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
        saved["fit"] = bench_scale.fits(saved["sizes"]) if saved["sizes"] else {}
        with open(a.md + ".tmp", "w") as f:
            f.write(bench_scale.markdown(saved))
        os.replace(a.md + ".tmp", a.md)
    if not a.keep:
        shutil.rmtree(f"{a.work}/index")


def colpali_fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth exponents against tokens of p50 latency, build time and add + commit time (fitted
    over the rows of one run: the same code)."""
    out: dict[str, Any] = {}
    for k in ("p50_1t_ms", "p50_2t_ms", "build_s", "add_commit_1000_cpu_s"):
        if len(rows) >= 2:
            b, c = bench_scale.fit([r["n_tokens"] for r in rows], [r[k] for r in rows])
            out[k] = {"exponent": b, "at_100m": float(np.exp(c) * 1e8**b)}
    return out


if __name__ == "__main__":
    main()
