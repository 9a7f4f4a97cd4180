"""Codec drift as a user meets it, and what the growth settings of `latix.Compression` do to it.

benches/codec_drift.py measured, outside any index, that a codec trained at the first commit
(SciFact, 1.23M tokens) and then used for 100k distractors (91 % of the tokens) loses the 0.1 %
filter row's recall. This benchmark builds the real indexes a user would build, one per
configuration (--configs):

* ``default``: `Compression()` (K from the first commit, never retrained);
* ``expected``: `Compression(expected_tokens=<final size>)` (K for the final size from the
  first training, still trained on SciFact alone);
* ``g4`` / ``g2``: `Compression(retrain_growth=4 / 2)` (the codec retrained, with K of the
  current size, inside the commit that grows the index past 4x / 2x the size its K suits;
  old documents re-encoded from their reconstructions).

Each build adds SciFact's 5,183 documents in one commit, then the 100k distractors
(benches/make_distractors.py) in commits of 20,000 (as benches/bench_collection.py's filtered
part does), and reports build time, K and the number of retrainings (commits whose K changed).
Then, over --n SciFact *train* queries (k = 10, the search defaults, 1 thread):

* ``SciFact recall``: recall@10 of the unfiltered search against exact MaxSim over SciFact's
  documents. The distractors never enter the exact top 10 (checked: every distractor a search
  returns is scored exactly and must be below the query's exact 10th score; violations are
  counted);
* ``0.1 % filter recall``: recall@10 of `search(subset=...)` over the 0.1 % bucket of
  bench_collection.py's seeded permutation (105 documents) against exact MaxSim over them;
* p50 latency of both.

Usage: python benches/growth_drift.py [--configs default,g4,expected] [--n 100] [--lock FILE]
Indexes go under --work (deleted after measuring); exact references are cached there. Results:
--md / --json (bench-results/growth-drift.*).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

DATA = Path(os.environ.get("LATIX_BENCH_DATA") or Path.home() / ".cache" / "latix" / "bench")
ROOT = Path(__file__).resolve().parent.parent
#: Documents per distractor commit and per add() call.
COMMIT_DOCS = 20_000
PIECE = 500


@contextlib.contextmanager
def locked(path: str | None) -> Iterator[None]:
    """Holds an exclusive flock on `path` (nothing without one)."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def settings(name: str, n_tokens: int) -> dict[str, int]:
    """The `Compression` keyword arguments of configuration `name`."""
    if name == "default":
        return {}
    if name == "expected":
        return {"expected_tokens": n_tokens}
    if name.startswith("g") and name[1:].isdigit():
        return {"retrain_growth": int(name[1:])}
    raise SystemExit(f"unknown configuration {name!r}")


def main() -> int:
    import latix

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--configs", default="default,g4,expected")
    ap.add_argument("--n", type=int, default=100, help="SciFact train queries")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "latix" / "growth" / "drift"))
    ap.add_argument("--lock", default=None, help="flock this file while building and searching")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "growth-drift.json"))
    ap.add_argument("--md", default=str(ROOT / "bench-results" / "growth-drift.md"))
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    data, work = Path(a.data), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    def part(d: str) -> tuple[np.ndarray, np.ndarray]:
        return np.load(data / d / "docs_vectors.npy", mmap_mode="r"), np.load(
            data / d / "doc_offsets.npy"
        )

    (sv, so), (dv, do) = part("scifact"), part("distractors")
    ns, nd = len(so) - 1, len(do) - 1
    n = ns + nd
    n_tokens = int(so[-1] + do[-1])
    perm = np.random.default_rng(7).permutation(n)  # bench_collection.py's bucket column
    allowed = [int(j) for j in np.nonzero(perm < round(0.001 * n))[0]]
    ids = [f"s{j}" for j in range(ns)] + [f"d{j}" for j in range(nd)]

    def doc(j: int) -> np.ndarray:
        x = sv[so[j] : so[j + 1]] if j < ns else dv[do[j - ns] : do[j - ns + 1]]
        return np.asarray(x, np.float32)

    qv = np.load(data / "scifact" / "train_query_vectors.npy")
    qo = np.load(data / "scifact" / "train_query_offsets.npy")
    queries = [np.asarray(qv[qo[i] : qo[i + 1]], np.float32) for i in range(len(qo) - 1)][: a.n]

    # Exact references (cached): top 10 over SciFact, and over the allowed documents.
    ref_path = work / f"exact-{a.n}.npz"
    if ref_path.is_file():
        z = np.load(ref_path)
        sci_top, sci_10th = z["sci_top"], z["sci_10th"]
    else:
        t = time.time()
        sci_top = np.zeros((len(queries), 10), np.int64)
        sci_10th = np.zeros(len(queries), np.float32)
        for i, q in enumerate(queries):
            s = latix.maxsim(q, sv, so.astype(np.int64))
            top = np.argsort(-s, kind="stable")[:10]
            sci_top[i], sci_10th[i] = top, s[top[-1]]
        np.savez(ref_path, sci_top=sci_top, sci_10th=sci_10th)
        print(f"exact SciFact reference: {time.time() - t:.0f} s", flush=True)
    a_docs = [doc(j) for j in allowed]
    a_off = np.zeros(len(a_docs) + 1, np.int64)
    np.cumsum([len(d) for d in a_docs], out=a_off[1:])
    a_x = np.concatenate(a_docs)
    f_top = [
        {ids[allowed[j]] for j in np.argsort(-latix.maxsim(q, a_x, a_off), kind="stable")[:10]}
        for q in queries
    ]
    allowed_ids = [ids[j] for j in allowed]

    rows = []
    for name in a.configs.split(","):
        kw = settings(name, n_tokens)
        out = work / f"ix-{name}"
        if out.exists():
            shutil.rmtree(out)
        load0 = provenance.load_average()
        with locked(a.lock):
            t0 = time.perf_counter()
            ix = latix.Index.create(out, dim=sv.shape[1], compression=latix.Compression(**kw))
            ks: list[int | None] = []
            commits: list[float] = []
            batches = [range(0, ns)] + [
                range(ns + s, ns + min(s + COMMIT_DOCS, nd)) for s in range(0, nd, COMMIT_DOCS)
            ]
            for b in batches:
                for s in range(b.start, b.stop, PIECE):
                    js = range(s, min(s + PIECE, b.stop))
                    ix.add([ids[j] for j in js], [doc(j) for j in js])
                t = time.perf_counter()
                ix.commit()
                commits.append(time.perf_counter() - t)
                ks.append(ix.stats()["n_centroids"])  # type: ignore[arg-type]
                print(f"{name}: commit {len(commits)}: {commits[-1]:.1f} s, K {ks[-1]}", flush=True)
            build_s = time.perf_counter() - t0
            st = ix.stats()
        load1 = provenance.load_average()
        retrains = sum(1 for x, y in zip(ks, ks[1:], strict=False) if x and y and x != y)
        with locked(a.lock):
            for q in queries[:20]:  # untimed pass
                ix.search(q, k=10, n_threads=1)
            lat_u, lat_f, rec_u, rec_f, viol = [], [], [], [], 0
            for i, q in enumerate(queries):
                t = time.perf_counter()
                _, h = ix.search(q, k=10, n_threads=1)
                lat_u.append(time.perf_counter() - t)
                got = [x for x in h[0] if x]
                want = {ids[int(j)] for j in sci_top[i]}
                rec_u.append(len(want & set(got)) / 10)
                for x in got:
                    if x.startswith("d"):
                        j = ns + int(x[1:])
                        d = doc(j)
                        sc = latix.maxsim(q, d, np.array([0, len(d)], np.int64))[0]
                        viol += int(sc > sci_10th[i])
                t = time.perf_counter()
                _, h = ix.search(q, k=10, n_threads=1, subset=allowed_ids)
                lat_f.append(time.perf_counter() - t)
                rec_f.append(len(f_top[i] & {x for x in h[0] if x}) / 10)
        load2 = provenance.load_average()
        ix.close()
        shutil.rmtree(out)
        r = {
            "config": name,
            "compression": kw,
            "n_tokens": n_tokens,
            "K": st["n_centroids"],
            "K_by_commit": ks,
            "retrains": retrains,
            "build_s": build_s,
            "commit_s": commits,
            "n_segments": st["n_segments"],
            "bytes_per_token": st["bytes_on_disk"] / n_tokens,  # type: ignore[operator]
            "scifact_recall_at_10": float(np.mean(rec_u)),
            "filter_0.1pct_recall_at_10": float(np.mean(rec_f)),
            "p50_ms": float(np.median(lat_u) * 1000),
            "filter_p50_ms": float(np.median(lat_f) * 1000),
            "distractor_violations": viol,
            "load": [load0, load1, load2],
        }
        rows.append(r)
        print(json.dumps(r), flush=True)
    md = [
        "# Codec drift with the growth settings (benches/growth_drift.py)",
        "",
        *prov,
        "",
        f"SciFact (5,183 docs) in one commit, then 100k distractors in commits of 20,000 "
        f"({n_tokens:,} tokens); {len(queries)} SciFact train queries, k = 10, search defaults, "
        "1 thread. Recall@10 against exact MaxSim (SciFact's documents; the 105 documents of "
        "the 0.1 % filter).",
        "",
        "| config | K (retrainings) | build s | SciFact recall@10 | p50 ms | 0.1 % filter "
        "recall@10 | filter p50 ms | load after build // after search |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['config']} `{r['compression']}` | {r['K']} ({r['retrains']}) | "
            f"{r['build_s']:.0f} | {r['scifact_recall_at_10']:.3f} | {r['p50_ms']:.2f} | "
            f"{r['filter_0.1pct_recall_at_10']:.3f} | {r['filter_p50_ms']:.2f} | "
            f"{r['load'][1]} // {r['load'][2]} |"
        )
    md += [
        "",
        "Distractors returned above a query's exact 10th SciFact score (would break the "
        "reference): " + ", ".join(f"{r['config']} {r['distractor_violations']}" for r in rows),
    ]
    Path(a.md).write_text("\n".join(md) + "\n")
    Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
