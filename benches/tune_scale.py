"""Sizes the codes-only search depth of a large index on SciFact *train* queries only.

benches/bench_scale.py measures the index at each size with test queries; this script asks, on
train queries, which (nprobe, refine) a large index needs to keep recall@10 against exact MaxSim
near the small sizes' figure, and what each costs (the search defaults are chosen from its
tables, never from the benchmark's test queries).

What it does, in one command:
1. Opens the index that `python benches/bench_scale.py --sizes SIZE --keep` left under --work
   (same --seed, --commit-docs, data and source). That run adds and commits 1,000 further
   generated documents last (its add timing); they are deleted here first (one commit), so the
   index holds exactly the benchmark's corpus.
2. Computes the exact top 10 of the first --queries SciFact train queries over that corpus
   (bench_scale's `exact_topk`, latix.maxsim on both threads, the generated documents made
   again on the fly), cached under --work keyed by every input.
3. For every nprobe:refine of --grid and the library's defaults ("auto"): one untimed pass,
   then --repeats timed passes of k = 10 searches on 1 thread, one query at a time, the
   configurations interleaved query by query; p50 / p99 over every timed search, recall@10
   against exact, and nDCG@10 against SciFact's train qrels.

Usage:
    python benches/bench_scale.py --sizes 100M --keep      # the index, once
    python benches/tune_scale.py --size 100M --grid 8:16,8:32,8:64,12:32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import bench_scale as bs
import numpy as np
import provenance
import scale_gen
from checksums import combined, file_digest
from tune_compressed import train_qrels

TRAIN_FILES = ("train_query_vectors.npy", "train_query_offsets.npy", "train_query_ids.json")


def train_exact(
    corpus: bs.Corpus,
    ident: dict[str, str],
    data: str,
    work: str,
    qs: list[np.ndarray],
    lock: bs.Lock,
) -> tuple[list[list[str]], str]:
    """Exact top 10 of the train queries `qs` over `corpus` (cached, keyed by every input)."""
    sci = f"{data}/scifact"
    key = combined(
        [
            corpus.gen.params(),
            ident,
            {"n_tokens": corpus.n_tokens, "n_gen": corpus.n_gen, "k": 10, "n_queries": len(qs)},
            [file_digest(f"{sci}/{n}") for n in TRAIN_FILES],
        ]
    )
    path = f"{work}/train-exact-{corpus.n_tokens}-{key[:12]}.json"
    if os.path.exists(path):
        ref = json.load(open(path))
        if ref.get("key") == key:
            return ref["ids"], f"exact top 10: cached ({path})"
    sci_ids = json.load(open(f"{sci}/doc_ids.json"))
    with lock.hold(f"train exact reference, {corpus.n_tokens:,} tokens"):
        t = time.time()
        ids, _ = bs.exact_topk(corpus, sci_ids, qs, 10, lock)
        secs = time.time() - t
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "ids": ids, "seconds": secs}, f)
    os.replace(path + ".tmp", path)
    return ids, f"exact top 10: computed in this run, {secs:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="100M", help="the kept index's size (bench_scale --sizes)")
    ap.add_argument("--data", default=bs.DATA, help="bench data root (scifact/)")
    ap.add_argument("--source", default=bs.SOURCE, help="evaluation collections (qrels)")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench-scale"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit-docs", type=int, default=5000, help="bench_scale's --commit-docs")
    ap.add_argument("--queries", type=int, default=50, help="first N train queries")
    ap.add_argument("--grid", default="8:16,8:32,8:48,8:64,12:32", help="nprobe:refine pairs")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per configuration")
    ap.add_argument("--lock", default=None, help="flock this file around the heavy phases")
    a = ap.parse_args()
    import ir_measures
    import latix
    from ir_measures import nDCG

    n = bs.parse_size(a.size)
    name = bs.size_name(n)
    path = f"{a.work}/index-{name}"
    if not os.path.isdir(path):
        raise SystemExit(f"no index at {path}: run bench_scale.py --sizes {a.size} --keep first")
    provenance.print_header()
    vaswani = scale_gen.vaswani_entry(Path(a.source))
    pools, ident = scale_gen.load_pools(a.data, a.source, a.seed, vaswani)
    corpus = bs.Corpus(pools, a.seed, n, a.commit_docs)
    extra = scale_gen.ids_of(corpus.n_gen, corpus.n_gen + bs.ADD_DOCS)
    with latix.Index.open(path, "w") as ix:
        if len(ix) > corpus.n_docs:
            ix.delete(extra)
            ix.commit()
        if len(ix) != corpus.n_docs:
            raise SystemExit(f"{path} holds {len(ix):,} documents, the corpus {corpus.n_docs:,}")
    sci = f"{a.data}/scifact"
    Q = np.load(f"{sci}/train_query_vectors.npy")
    qo = np.load(f"{sci}/train_query_offsets.npy")
    qids = json.load(open(f"{sci}/train_query_ids.json"))[: a.queries]
    nq = len(qids)
    qs = [Q[qo[i] : qo[i + 1]] for i in range(nq)]
    lock = bs.Lock(a.lock)
    ref, line = train_exact(corpus, ident, a.data, a.work, qs, lock)
    print(line, file=sys.stderr)
    qrels = {q: r for q, r in train_qrels(a.source).items() if q in set(qids)}
    grid: list[tuple[int | None, int | None]] = [(None, None)]
    grid += [(int(x), int(y)) for x, y in (c.split(":") for c in a.grid.split(","))]
    ix = latix.Index.open(path)
    st = ix.stats()

    def search(i: int, cfg: tuple[int | None, int | None]) -> tuple[list[str], list[float]]:
        s, h = ix.search(qs[i], k=10, n_threads=1, nprobe=cfg[0], refine=cfg[1])
        return [str(d) for d in h[0] if d], [float(x) for x in s[0]]

    with lock.hold("timed passes"):
        for cfg in grid:  # untimed pass: every page of the probed lists touched once
            for i in range(nq):
                search(i, cfg)
        lat: dict[int, list[float]] = {j: [] for j in range(len(grid))}
        got: dict[int, list[tuple[list[str], list[float]]]] = {j: [] for j in range(len(grid))}
        for rep in range(a.repeats):
            for i in range(nq):
                for j, cfg in enumerate(grid):
                    t = time.perf_counter()
                    hits = search(i, cfg)
                    lat[j].append(time.perf_counter() - t)
                    if rep == 0:
                        got[j].append(hits)
    ix.close()
    print(
        f"\n## {name}: {corpus.n_tokens:,} tokens, {corpus.n_docs:,} documents, K = "
        f"{st.get('n_centroids')}, {st.get('n_segments')} segments; {nq} SciFact train queries, "
        f"k = 10, 1 thread, {a.repeats} timed passes each (interleaved) after one untimed pass\n"
    )
    print("| nprobe : refine | p50 ms | p99 ms | nDCG@10 (train) | recall@10 vs exact |")
    print("|---|---|---|---|---|")
    for j, cfg in enumerate(grid):
        label = "auto (default)" if cfg[0] is None else f"{cfg[0]} : {cfg[1]}"
        rec = np.mean([len(set(g[0]) & set(r)) / 10 for g, r in zip(got[j], ref, strict=True)])
        run = {q: dict(zip(*got[j][i], strict=True)) for i, q in enumerate(qids)}
        ev = ir_measures.calc_aggregate([nDCG @ 10], qrels, run)
        ms = np.array(lat[j]) * 1000
        print(
            f"| {label} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | "
            f"{ev[nDCG @ 10]:.4f} | {rec:.3f} |"
        )
    print(f"\nload average (1 / 5 / 15 min) at the end: {provenance.load_average()}")


if __name__ == "__main__":
    main()
