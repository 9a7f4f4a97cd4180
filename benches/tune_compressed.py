"""Sizes the compressed search's defaults (nprobe, refine) on SciFact's *train* queries only.

The defaults of `Index.search` on a compressed index (nprobe = K / 512 within 8..32, refine =
max(k, 16); with kept vectors and the exact re-rank, refine = max(4k, 48)) were chosen from the
tables this script prints; test queries are never used (benches/bench_compressed.py reports them).

What it does, in one command:
1. Builds the benchmark's index for --corpus (benches/bench_compressed.py's own builder, in a
   child process: same configuration, seed, chunks) under <work>/tune/: SciFact codes only
   (`keep_vectors=False`), or SciFact + 100k distractors with kept vectors for the re-rank grid.
2. Computes the exact top 10 of every train query (latix.maxsim over the f16 vectors, 2
   threads) once, cached under <work>/tune/ keyed by a checksum of every input, and re-scores the
   cached top 10 of each query in numpy float64 when it is loaded.
3. For every (nprobe, refine) of --grid, and for the library's automatic defaults ("auto"):
   one untimed pass, then --repeats timed passes of k = 10 searches on 1 thread, one query at a
   time, the configurations interleaved query by query (so that load changes hit them alike);
   p50 / p99 over every timed search, nDCG@10 against qrels/train.tsv, recall@10 against exact.

Data: the bench data root (--data, default $LATIX_BENCH_DATA or ~/.cache/latix/bench) with
scifact/ written by benches/prepare_bench_data.py (documents, test and train queries) and, for
--corpus distractors, distractors/ by benches/make_distractors.py (checked like the benchmark
checks it); qrels from <source>/scifact/qrels/train.tsv (--source, default $LATIX_DATA or
../shared/data). Output: provenance lines (benches/provenance.py), then a Markdown table.

Usage:
    python benches/tune_compressed.py                       # SciFact, 809 train queries
    python benches/tune_compressed.py --corpus distractors --queries 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import bench_compressed as bc
import numpy as np
import provenance
from checksums import combined, file_digest

TRAIN_FILES = ("train_query_vectors.npy", "train_query_offsets.npy", "train_query_ids.json")
SCIFACT_GRID = "8:0,8:16,8:24,8:32,10:16,12:16,12:24,16:0,16:16"
DISTRACTOR_GRID = "8:48,8:64,12:48,16:48,16:64,16:0"


TIER_GRID = "8:16:16,8:32:16,8:32:24,8:48:16,8:48:24,12:32:16,12:48:24,16:48:24,16:64:32"


def parse_grid(grid: str) -> list[tuple[int | None, ...]]:
    """ "8:16,12:24" -> [(8, 16), (12, 24)]; a third field is the re-rank depth."""
    return [tuple(int(v) for v in item.split(":")) for item in grid.split(",")]


def train_qrels(source: str) -> dict[str, dict[str, int]]:
    """qrels/train.tsv of SciFact: query id -> {doc id: relevance}."""
    q: dict[str, dict[str, int]] = {}
    with open(os.path.join(source, "scifact", "qrels", "train.tsv")) as f:
        for row in list(csv.reader(f, delimiter="\t"))[1:]:
            q.setdefault(row[0], {})[row[1]] = int(row[2])
    return q


def exact_top10(
    corpus: str, work: str, Q: np.ndarray, qo: np.ndarray, nq: int
) -> tuple[list[list[str]], str]:
    """Exact top 10 of the first `nq` train queries (cached, keyed by every input), checked."""
    import latix

    ids: list[list[str]] = []
    full = []
    for d, a, b in bc.chunks(corpus):
        off = np.load(d + "/doc_offsets.npy")
        mm = np.load(d + "/docs_vectors.npy", mmap_mode="r")
        full.append((mm[off[a] : off[b]], (off[a : b + 1] - off[a]).astype(np.int64)))
        with open(d + "/doc_ids.json") as f:
            ids.append(json.load(f)[a:b])
    key = combined(
        [
            bc.input_key(corpus),  # documents, chunks (and the test queries)
            [file_digest(f"{bc.SCIFACT}/{n}") for n in TRAIN_FILES],
            {"k": 10, "n_queries": nq},
        ]
    )
    path = f"{work}/{corpus}-train-exact-top10.json"
    ref = None
    if os.path.exists(path):
        with open(path) as f:
            ref = json.load(f)
    status = "cached"
    if ref is None or ref.get("key") != key:
        status = "computed in this run"
        ref = {"key": key, "ids": [], "scores": []}
        t = time.time()
        for i in range(nq):
            q = Q[qo[i] : qo[i + 1]]
            hits: list[tuple[float, str]] = []
            for (v, o), idl in zip(full, ids, strict=True):
                s = latix.maxsim(q, v, o, n_threads=2)
                hits += [(float(s[j]), idl[j]) for j in np.argsort(-s, kind="stable")[:10]]
            hits = sorted(hits, key=lambda h: -h[0])[:10]
            ref["ids"].append([h[1] for h in hits])
            ref["scores"].append([h[0] for h in hits])
        print(f"exact top 10 of {nq} train queries: {time.time() - t:.0f} s", file=sys.stderr)
        with open(path + ".tmp", "w") as f:
            json.dump(ref, f)
        os.replace(path + ".tmp", path)
    where = {doc: (p, j) for p, idl in enumerate(ids) for j, doc in enumerate(idl)}
    for i in range(nq):
        q64 = Q[qo[i] : qo[i + 1]].astype(np.float64)
        assert all(np.diff(ref["scores"][i]) <= 0), f"train query {i}: cached order"
        for doc, sc in zip(ref["ids"][i], ref["scores"][i], strict=True):
            p, j = where[doc]
            v, o = full[p]
            x = np.asarray(v[o[j] : o[j + 1]], dtype=np.float64)
            want = float((q64 @ x.T).max(axis=1).sum())
            assert abs(want - sc) <= 1e-3, f"train query {i}, {doc}: cached {sc} vs {want}"
    line = (
        f"exact top 10: {status}, key {key}; every query's top 10 re-scored in float64 and matched"
    )
    return ref["ids"], line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", choices=["scifact", "distractors"], default="scifact")
    ap.add_argument("--data", default=bc.DATA, help="bench data root (scifact/, distractors/)")
    ap.add_argument("--source", default=bc.SOURCE, help="evaluation collections (qrels)")
    ap.add_argument("--work", default=None, help="indexes (default: <data>/bench-compressed/tune)")
    ap.add_argument("--grid", default=None, help="nprobe:refine pairs, e.g. 8:16,12:24")
    ap.add_argument("--queries", type=int, default=None, help="first N train queries (all)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per configuration")
    ap.add_argument("--seed", type=int, default=0, help="codec seed (the benchmark's: 0)")
    ap.add_argument("--no-build", action="store_true", help="reuse the index in --work")
    ap.add_argument(
        "--train-sample-tokens",
        type=int,
        default=None,
        help="tokens sampled to train the codec (default: the library's)",
    )
    ap.add_argument(
        "--fidelity",
        choices=["codes", "balanced", "high"],
        default="codes",
        help="storage tier; a tier's grid is nprobe:refine:rerank_depth triples",
    )
    ap.add_argument(
        "--lock",
        default=None,
        help="hold an exclusive flock on this file around the timed passes only (a shared "
        "machine's benchmark lock; the build, the exact reference and the untimed pass run "
        "outside it)",
    )
    a = ap.parse_args()
    bc.LOCK = a.lock
    import ir_measures
    import latix
    from ir_measures import nDCG

    bc.SCIFACT = os.path.join(a.data, "scifact")
    bc.DISTRACTORS = os.path.join(a.data, "distractors")
    os.environ["LATIX_BENCH_DATA"] = os.path.abspath(a.data)  # the build child inherits it
    if a.train_sample_tokens:
        os.environ["LATIX_BENCH_TRAIN_SAMPLE"] = str(a.train_sample_tokens)
    work = a.work or os.path.join(a.data, "bench-compressed", "tune")
    os.makedirs(work, exist_ok=True)
    # The re-rank grid needs the kept vectors (or a tier's refinement data).
    keep = a.corpus == "distractors" and a.fidelity == "codes"
    tier = a.fidelity != "codes"
    provenance.print_header()
    corpus_line = bc.check_distractors() if keep else "SciFact documents only"
    ix_path = f"{work}/{bc.index_name(a.corpus, keep, a.fidelity)}"
    if not a.no_build or not os.path.exists(ix_path):
        t = time.time()
        cmd = [sys.executable, bc.__file__, "--_build", a.corpus, "--work", work]
        cmd += ["--seed", str(a.seed), "--data", a.data, "--_fidelity", a.fidelity]
        cmd += ["--_keep"] if keep else []
        subprocess.run(cmd, check=True)
        print(f"built {ix_path} in {time.time() - t:.0f} s", file=sys.stderr)
    Q = np.load(f"{bc.SCIFACT}/train_query_vectors.npy")
    qo = np.load(f"{bc.SCIFACT}/train_query_offsets.npy")
    with open(f"{bc.SCIFACT}/train_query_ids.json") as f:
        qids = json.load(f)
    nq = min(len(qids), a.queries or len(qids))
    qids = qids[:nq]
    exact, exact_line = exact_top10(a.corpus, work, Q, qo, nq)
    qrels = {q: r for q, r in train_qrels(a.source).items() if q in set(qids)}
    ix = latix.Index.open(ix_path)
    st = ix.stats()
    grid: list[tuple[int | None, ...]] = [(None, None, None)]
    default_grid = TIER_GRID if tier else DISTRACTOR_GRID if keep else SCIFACT_GRID
    grid += parse_grid(a.grid or default_grid)

    def search(i: int, cfg: tuple[int | None, ...]) -> list[str]:
        q = Q[qo[i] : qo[i + 1]]
        depth = cfg[2] if len(cfg) > 2 else None
        _, h = ix.search(
            q,
            k=10,
            n_threads=1,
            nprobe=cfg[0],
            refine=cfg[1],
            rerank=keep or tier,
            rerank_depth=depth,
        )
        return [str(d) for d in h[0] if d]

    for cfg in grid:  # untimed pass: every page of the lists touched once
        for i in range(nq):
            search(i, cfg)
    lat: dict[int, list[float]] = {j: [] for j in range(len(grid))}
    got: dict[int, list[list[str]]] = {j: [] for j in range(len(grid))}
    with bc.timed_phase("timed passes"):
        for r in range(a.repeats):
            for i in range(nq):
                for j, cfg in enumerate(grid):  # interleaved: each query under every config
                    t = time.perf_counter()
                    hits = search(i, cfg)
                    lat[j].append(time.perf_counter() - t)
                    if r == 0:
                        got[j].append(hits)
    print(corpus_line)
    print(exact_line)
    print(
        f"\n## {a.corpus}: {st['n_tokens']:,} tokens, K = {st['n_centroids']}, "
        f"{st['code_bytes_per_token']} B/token of codes, keep_vectors={keep}, "
        f"fidelity={a.fidelity}, rerank={keep or tier}, "
        f"{st['bytes_on_disk'] / st['n_tokens']:.1f} B/token on disk; {nq} SciFact train "
        f"queries, k = 10, 1 thread, {a.repeats} timed "
        "passes each (interleaved) after one untimed pass"
    )
    head = "nprobe : refine : rerank_depth" if tier else "nprobe : refine"
    print(f"| {head} | p50 ms | p99 ms | nDCG@10 (train) | recall@10 vs exact |")
    print("|---|---|---|---|---|")
    for j, cfg in enumerate(grid):
        run = {qids[i]: {d: 10.0 - r for r, d in enumerate(got[j][i])} for i in range(nq)}
        ndcg = ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]
        rec = float(np.mean([len(set(got[j][i]) & set(exact[i])) / 10 for i in range(nq)]))
        name = "auto (default)" if cfg[0] is None else " : ".join(str(v) for v in cfg)
        ms = np.array(lat[j]) * 1000
        print(
            f"| {name} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | "
            f"{ndcg:.4f} | {rec:.3f} |"
        )
    exact_run = {qids[i]: {d: 10.0 - r for r, d in enumerate(exact[i])} for i in range(nq)}
    ndcg_ex = ir_measures.calc_aggregate([nDCG @ 10], qrels, exact_run)[nDCG @ 10]
    print(f"| exact (latix.maxsim) | - | - | {ndcg_ex:.4f} | 1.000 |")
    print(f"load average (1 / 5 / 15 min) at the end: {provenance.load_average()}")
    ix.close()


if __name__ == "__main__":
    main()
