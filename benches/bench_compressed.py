"""Benchmark of latix's compressed index (codec + inverted lists + WARP-style search) against exact
exhaustive MaxSim, on SciFact alone and on SciFact + 100k distractors (benches/make_distractors.py).

One command: `python benches/bench_compressed.py` prints a table per corpus. Query encoding is
excluded (pre-encoded query vectors); queries run one at a time. The build runs in a child
process so that its peak memory (max RSS) is measured on its own; input vectors are read in
chunks (not memory-mapped) so the figure is the builder's, not the page cache's.

Data: /work/cache/scifact-minilm-int8 (SciFact encoded with the default model), qrels from
/work/shared/data/scifact/qrels/test.tsv, distractors from /work/cache/distractors.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SCIFACT = "/work/cache/scifact-minilm-int8"
DISTRACTORS = "/work/cache/distractors"
QRELS = "/work/shared/data/scifact/qrels/test.tsv"
CHUNK_DOCS = 20_000


def parts(corpus: str) -> list[str]:
    """Directories whose vectors make up `corpus`, one segment each (distractors in chunks)."""
    return [SCIFACT] if corpus == "scifact" else [SCIFACT, DISTRACTORS]


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a 2-D float16 .npy file, read (not mapped) into fresh memory."""
    mm = np.load(path, mmap_mode="r")
    offset = mm.offset if hasattr(mm, "offset") else 0
    dim = mm.shape[1]
    del mm
    with open(path, "rb") as f:
        f.seek(offset + start * dim * 2)
        return np.fromfile(f, dtype=np.float16, count=(stop - start) * dim).reshape(-1, dim)


def chunks(corpus: str) -> list[tuple[str, int, int]]:
    """(directory, first doc, end doc) of every segment of `corpus`."""
    out = []
    for d in parts(corpus):
        n = len(np.load(d + "/doc_offsets.npy")) - 1
        step = n if d == SCIFACT else CHUNK_DOCS
        out += [(d, a, min(n, a + step)) for a in range(0, n, step)]
    return out


def build(corpus: str, out: str, seed: int) -> None:
    """Child process: trains the codec on a sample, encodes every segment, writes the files."""
    import latix._core as C

    t0 = time.time()
    rng = np.random.default_rng(seed)
    segs = chunks(corpus)
    n_tokens = sum(
        int(np.load(d + "/doc_offsets.npy")[b] - np.load(d + "/doc_offsets.npy")[a])
        for d, a, b in segs
    )
    target = min(n_tokens, 262_144)
    sample = []
    for d, a, b in segs:  # pass 1: a seeded uniform sample of token vectors
        off = np.load(d + "/doc_offsets.npy")
        x = read_rows(d + "/docs_vectors.npy", int(off[a]), int(off[b]))
        take = rng.random(len(x)) < target / n_tokens
        sample.append(x[take].astype(np.float32))
    codec = C.Codec.train(np.concatenate(sample), n_tokens_hint=n_tokens, seed=seed)
    del sample
    t_train = time.time() - t0
    os.makedirs(out, exist_ok=True)
    with open(out + "/codec.bin", "wb") as f:
        f.write(codec.to_bytes())
    for i, (d, a, b) in enumerate(segs):  # pass 2: encode segment by segment
        off = np.load(d + "/doc_offsets.npy")
        x = read_rows(d + "/docs_vectors.npy", int(off[a]), int(off[b]))
        seg = C.CompressedSegment.build(codec, x, (off[a : b + 1] - off[a]).astype(np.int64))
        seg.save(f"{out}/seg-{i:04d}.ivf")
    info = {
        "train_s": t_train,
        "build_s": time.time() - t0,
        "n_tokens": n_tokens,
        "n_centroids": codec.n_centroids,
        "bytes_per_token_codes": codec.bytes_per_token,
    }
    with open(out + "/build.json", "w") as f:
        json.dump(info, f)


def load_qrels() -> dict[str, dict[str, int]]:
    q: dict[str, dict[str, int]] = {}
    for row in list(csv.reader(open(QRELS), delimiter="\t"))[1:]:
        q.setdefault(row[0], {})[row[1]] = int(row[2])
    return q


def pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.array(x) * 1000, p))


def run(corpus: str, work: str, seed: int, exact_queries: int, nprobe: int | None) -> None:
    import ir_measures
    import latix
    import latix._core as C
    from ir_measures import R, nDCG

    out = f"{work}/{corpus}"
    t0 = time.time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, __file__, "--_build", corpus, "--work", work, "--seed", str(seed)],
        check=True,
    )
    wall = time.time() - t0
    peak_mb = max(r0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    info = json.load(open(out + "/build.json"))
    codec = C.Codec.from_bytes(open(out + "/codec.bin", "rb").read())
    seg_files = sorted(f for f in os.listdir(out) if f.endswith(".ivf"))
    segs = [C.CompressedSegment.open(f"{out}/{f}", codec) for f in seg_files]
    disk = sum(os.path.getsize(f"{out}/{f}") for f in seg_files) + os.path.getsize(
        out + "/codec.bin"
    )
    n_tok = info["n_tokens"]
    # Ids and full vectors (memory-mapped f16) per segment, for re-ranking and the exact baseline.
    ids: list[list[str]] = []
    full = []
    for d, a, b in chunks(corpus):
        off = np.load(d + "/doc_offsets.npy")
        mm = np.load(d + "/docs_vectors.npy", mmap_mode="r")
        full.append((mm[off[a] : off[b]], (off[a : b + 1] - off[a]).astype(np.int64)))
        ids.append(json.load(open(d + "/doc_ids.json"))[a:b])
    Q = np.load(SCIFACT + "/query_vectors.npy")
    qo = np.load(SCIFACT + "/query_offsets.npy")
    qids = json.load(open(SCIFACT + "/query_ids.json"))
    qrels = load_qrels()
    nq = len(qids)

    def compressed(i: int, k: int, threads: int, rerank: bool) -> list[tuple[float, str]]:
        q = Q[qo[i] : qo[i + 1]]
        s, sg, dd = C.compressed_search(
            codec, segs, q, k, nprobe=nprobe, n_threads=threads, full=full if rerank else None
        )
        return [(float(x), ids[g][d]) for x, g, d in zip(s, sg, dd, strict=True)]

    def exact(i: int, k: int, threads: int) -> list[tuple[float, str]]:
        q = Q[qo[i] : qo[i + 1]]
        hits: list[tuple[float, str]] = []
        for (v, o), idl in zip(full, ids, strict=True):
            s = latix.maxsim(q, v, o, n_threads=threads)
            top = np.argsort(-s, kind="stable")[:k]
            hits += [(float(s[j]), idl[j]) for j in top]
        return sorted(hits, key=lambda h: -h[0])[:k]

    rows = []
    n_ex = min(nq, exact_queries)
    exact_top10 = {}
    exact_run = {}
    lat_ex: dict[int, list[float]] = {1: [], 2: []}
    for i in range(n_ex):
        for th in (1, 2):
            t = time.perf_counter()
            hits = exact(i, 100, th)
            lat_ex[th].append(time.perf_counter() - t)
        exact_top10[i] = {h[1] for h in hits[:10]}
        exact_run[qids[i]] = {h[1]: h[0] for h in hits}
    sub_qrels = {q: qrels[q] for q in qids[:n_ex] if q in qrels}
    ev = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], sub_qrels, exact_run)
    rows.append(
        (
            "exact exhaustive (latix.maxsim)",
            n_tok * 384 * 2 / n_tok,
            ev[nDCG @ 10],
            ev[R @ 100],
            1.0,
            pct(lat_ex[1], 50),
            pct(lat_ex[1], 99),
            pct(lat_ex[2], 50),
            pct(lat_ex[2], 99),
        )
    )
    for name, rerank in (
        ("compressed, codes only", False),
        ("compressed + exact re-rank (f16)", True),
    ):
        run_: dict[str, dict[str, float]] = {}
        lat: dict[int, list[float]] = {1: [], 2: []}
        rec = []
        for i in range(nq):
            for th in (1, 2):
                t = time.perf_counter()
                hits = compressed(i, 100, th, rerank)
                lat[th].append(time.perf_counter() - t)
            run_[qids[i]] = {h[1]: h[0] for h in hits}
            if i in exact_top10:
                rec.append(len({h[1] for h in hits[:10]} & exact_top10[i]) / 10)
        sub_run = {q: run_[q] for q in qids[:n_ex]}
        ev = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], sub_qrels, sub_run)
        bpt = disk / n_tok + (384 * 2 if rerank else 0)
        rows.append(
            (
                name,
                bpt,
                ev[nDCG @ 10],
                ev[R @ 100],
                float(np.mean(rec)),
                pct(lat[1], 50),
                pct(lat[1], 99),
                pct(lat[2], 50),
                pct(lat[2], 99),
            )
        )
    # Adding 1,000 documents with the trained codec (a new segment).
    d, a, b = chunks(corpus)[-1]
    off = np.load(d + "/doc_offsets.npy")
    b = min(b, a + 1000)
    x = read_rows(d + "/docs_vectors.npy", int(off[a]), int(off[b]))
    t = time.perf_counter()
    C.CompressedSegment.build(codec, x, (off[a : b + 1] - off[a]).astype(np.int64))
    add_s = time.perf_counter() - t
    print(
        f"\n## {corpus}: {n_tok:,} tokens, K = {info['n_centroids']}, "
        f"{info['bytes_per_token_codes']} B/token of codes, nprobe = {nprobe or 'auto'}"
    )
    print(
        f"build {wall:.1f} s wall (train {info['train_s']:.1f} s, encode+write "
        f"{info['build_s'] - info['train_s']:.1f} s), peak build memory {peak_mb:,.0f} MB, "
        f"adding 1,000 docs {add_s:.2f} s; quality on the first {n_ex} of {nq} test queries"
    )
    print(
        "| method | bytes/token on disk | nDCG@10 | R@100 | recall@10 vs exact | p50 1T ms "
        "| p99 1T ms | p50 2T ms | p99 2T ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.3f} | {r[5]:.2f} | "
            f"{r[6]:.2f} | {r[7]:.2f} | {r[8]:.2f} |"
        )
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", choices=["scifact", "distractors", "all"], default="all")
    ap.add_argument("--work", default="/work/cache/bench-compressed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument(
        "--exact-queries",
        type=int,
        default=300,
        help="queries with an exact reference (default all 300 test queries)",
    )
    ap.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build:
        build(a._build, f"{a.work}/{a._build}", a.seed)
        return
    for c in ["scifact", "distractors"] if a.corpus == "all" else [a.corpus]:
        run(c, a.work, a.seed, a.exact_queries, a.nprobe)


if __name__ == "__main__":
    main()
