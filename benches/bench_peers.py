"""Latency against recall of latix's compressed index and of peer libraries' compressed
late-interaction indexes, on SciFact, from the same document token vectors, in the same run.

One command: `python benches/bench_peers.py` (under `flock /work/team/bench.lock` for figures you
quote). It builds, from SciFact's cached encodings (benches/prepare_bench_data.py; never
re-encoded):

* latix's compressed index at each fidelity tier (`Compression(fidelity=...)`: codes, balanced,
  high; K as in benches/bench_compressed.py), each searched at several `nprobe` values;
* every peer that is installed: ColBERT's PLAID index (`colbert-ai`, the Stanford reference
  implementation: k-means centroids + 2-bit residuals, centroid interaction and pruning), built
  through colbert-ai's own indexer (`CollectionIndexer`: sampling, faiss k-means, residual codec,
  chunk saver, IVF) with its encoder replaced by one that returns the cached vectors, and searched
  with its own `IndexScorer.rank` (candidate generation, `filter_pids` and `decompress_residuals`
  C++ kernels, exact MaxSim over the decompressed vectors), sweeping its search settings
  (ncells, centroid_score_threshold, ndocs), the three settings colbert-ai's Searcher uses for
  k <= 10 and <= 100 and two shallower ones.

Peers that cannot run here are listed with the reason (PEER_NOTES): the table says so.

Every point runs the same 300 SciFact test queries (pre-encoded; encoding excluded), one at a
time, k = 10, on one thread: latix with `n_threads=1`, colbert-ai with `torch.set_num_threads(1)`
(its C++ kernels split their work over `at::get_num_threads()`). Each point first runs the first
`--warmup` queries untimed (default 10), then `--passes` timed passes over all queries (default 1:
colbert-ai's CPU search takes up to a second a query here), back to back in the same process,
the points' order reversed every other pass so that a change of machine load falls on all of them
alike; p50 / p99 are over every timed query of every pass, quality from the first pass's answers.
Builds use the machine's default thread counts (both libraries) and run niced.

Quality: recall@10 against exact MaxSim (the exact top 100 that benches/bench_compressed.py
cached, checked against its input key: run that benchmark first if it is missing) and nDCG@10
against SciFact's test qrels. Size: every file of each index on disk, per original token.

Equal-recall ratio: for each peer point, latix's p50 at the same recall@10, read off latix's
curve (the lower envelope, over all tiers and nprobe values, of p50 against recall: the fastest
latix point reaching at least each recall), interpolated linearly in recall between the two
envelope points around the peer's recall and geometrically in latency (a straight line on the
plot's log axis); no ratio where the peer's recall is outside latix's range
(:func:`latency_at_recall`).

Writes bench-results/peers.md (the printed output) and peers.json (read by benches/plots.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

#: Peers that were considered and could not be measured on this machine, with the reason; printed
#: in the output and written to peers.json (checked when this benchmark ran; see the docstring).
PEER_NOTES = {
    "tachiom 0.4.0": "not measured: PyPI has only an sdist (no wheel of any version), whose "
    "Cargo.toml takes its crates kannolo and vectorium by git from github.com, which this machine "
    "cannot reach (PyPI and crates.io only); it also needs each token's vocabulary id, which the "
    "cached encodings do not keep. It needs no torch.",
    "fast-plaid 1.7.0.2110": "not measured: its wheel (2.1 MB) pins torch==2.11.0 and links "
    "libtorch; loaded against the torch 2.15 here it imports but segfaults in "
    "fast_plaid_rust.create (C++ ABI); no fast-plaid wheel is built for torch 2.15 and PyPI has "
    "no sdist, and installing torch 2.11 (about 6 GB with its CUDA libraries) is not allowed on "
    "this shared disk.",
    "pylate": "not measured: its PLAID index is fast-plaid (above); it also requires "
    "sentence-transformers and torch.",
    "maxsim-cpu 0.1.0": "exhaustive MaxSim (no compressed index): measured as a kernel peer in "
    "bench-results/maxsim.md.",
}

HERE = os.path.dirname(os.path.abspath(__file__))


def latency_at_recall(points: list[tuple[float, float]], recall: float) -> float | None:
    """Latency of a curve at a given recall, by interpolation on its lower envelope.

    Args:
        points: (latency, recall) pairs, any order; latencies > 0.
        recall: the recall to read the curve at.

    Returns:
        The interpolated latency, or None when ``recall`` is above the best recall of any
        point or below the recall of the fastest point (no extrapolation).

    The envelope keeps, for each point, the lowest latency of any point with at least its
    recall: walking the points by increasing latency, only those that raise the best recall
    so far are kept. Between two kept points the latency is interpolated geometrically (linear
    in log latency) against recall, which is a straight segment on a log latency axis.
    """
    env: list[tuple[float, float]] = []
    for lat, rec in sorted(points):
        if not env or rec > env[-1][1]:
            env.append((lat, rec))
    if not env or recall > env[-1][1] or recall < env[0][1]:
        return None
    for (l0, r0), (l1, r1) in zip(env, env[1:], strict=False):
        if r0 <= recall <= r1:
            t = (recall - r0) / (r1 - r0)
            return float(np.exp(np.log(l0) + t * (np.log(l1) - np.log(l0))))
    return env[0][0]  # recall equals the only (or first) point's


def dir_bytes(path: str) -> int:
    """Bytes of every file under ``path``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------------- colbert-ai (PLAID)

#: (ncells, centroid_score_threshold, ndocs): colbert-ai's Searcher defaults for k <= 10 and
#: k <= 100, and two shallower settings (its CPU path decompresses and scores the best ndocs / 4
#: candidates; its k > 100 default, ndocs 4096, took 3.6 s a query here, 1,024 of SciFact's
#: 5,183 documents).
PLAID_POINTS = [(1, 0.5, 64), (1, 0.5, 128), (1, 0.5, 256), (2, 0.45, 1024)]


def colbert_available() -> str | None:
    """None when colbert-ai and its torch can be imported, else the reason."""
    try:
        import colbert  # noqa: F401
        import faiss  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure makes the peer unavailable
        return f"{type(e).__name__}: {e}"
    return None


def colbert_build(
    path: str, scifact: str, nbits: int, n_partitions: int, seed: int
) -> dict[str, Any]:
    """Child process: builds a PLAID index with colbert-ai's CollectionIndexer from the cached
    vectors (the encoder is replaced; every other step is colbert-ai's own)."""
    import random
    import shutil

    import torch
    from colbert.data import Collection
    from colbert.indexing.collection_indexer import CollectionIndexer
    from colbert.indexing.index_saver import IndexSaver
    from colbert.infra import ColBERTConfig

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    x = np.load(scifact + "/docs_vectors.npy", mmap_mode="r")
    off = np.load(scifact + "/doc_offsets.npy").astype(np.int64)
    n_docs = len(off) - 1

    class CachedEncoder:
        """Stands in for colbert's CollectionEncoder: a passage is a document number, its
        embeddings the cached vectors (float32 on CPU, as CollectionEncoder returns them)."""

        def encode_passages(self, passages: list[str]) -> tuple[Any, list[int]]:
            idx = [int(p) for p in passages]
            embs = np.concatenate([x[off[i] : off[i + 1]] for i in idx]).astype(np.float32)
            return torch.from_numpy(embs), [int(off[i + 1] - off[i]) for i in idx]

    class Indexer(CollectionIndexer):  # type: ignore[misc]
        def __init__(self, config: Any, collection: Any) -> None:
            # CollectionIndexer.__init__ loads a checkpoint (the model) to build its encoder;
            # the rest of its state is set here as it sets it, on CPU, one rank.
            self.verbose = 0
            self.config = config
            self.rank, self.nranks = 0, 1
            self.use_gpu = False
            self.collection = Collection.cast(collection)
            self.encoder = CachedEncoder()
            self.saver = IndexSaver(config)

        def setup(self) -> None:
            super().setup()
            # colbert-ai's rule, 2^floor(log2(16 sqrt(tokens))), gives 16384 centroids for
            # SciFact's 1.2M tokens; faiss's k-means then clusters all 1.2M 384-d vectors, over
            # an hour on the shared 2 cores (512 centroids: 4.3 s per iteration here). The
            # partition count is given instead (--plaid-k, default 1024, what fits this run's
            # time; latix's K here is 2048, over 616k vectors pooled by 2).
            self.num_partitions = n_partitions
            self._save_plan()

    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    cfg = ColBERTConfig(
        dim=int(x.shape[1]),
        nbits=nbits,
        kmeans_niters=4,
        index_path=path,
        doc_maxlen=int(np.diff(off).max()),
        rank=0,
        nranks=1,
        gpus=0,
        avoid_fork_if_possible=True,
        resume=False,
    )
    t0 = time.time()
    Indexer(cfg, [str(i) for i in range(n_docs)]).run(shared_lists=[[[None]]])
    info = {"build_s": time.time() - t0, "n_partitions": n_partitions, "nbits": nbits}
    with open(path + ".json", "w") as f:
        json.dump(info, f)
    return info


class ColbertSearcher:
    """colbert-ai's IndexScorer over a built index, one query at a time on one thread."""

    def __init__(self, path: str) -> None:
        import torch
        from colbert.infra import ColBERTConfig
        from colbert.modeling.colbert import ColBERT
        from colbert.search.index_storage import IndexScorer

        torch.set_num_threads(1)
        # The Searcher's checkpoint (a ColBERT model) loads the MaxSim kernel that scoring uses
        # when it is constructed; no model is loaded here, so the kernel is loaded directly.
        ColBERT.try_load_torch_extensions(False)
        self.torch = torch
        self.scorer = IndexScorer(path, use_gpu=False, load_index_with_mmap=False)
        self.config = ColBERTConfig
        self.configs: dict[tuple[int, float, int], Any] = {}

    def search(self, q: np.ndarray, k: int, point: tuple[int, float, int]) -> list[int]:
        cfg = self.configs.get(point)
        if cfg is None:
            ncells, thr, ndocs = point
            cfg = self.config(
                ncells=ncells, centroid_score_threshold=thr, ndocs=ndocs, query_maxlen=512
            )
            self.configs[point] = cfg
        qt = self.torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))[None]
        pids, _ = self.scorer.rank(cfg, qt)
        return [int(p) for p in pids[:k]]


# ---------------------------------------------------------------------------- the run


def main() -> None:  # noqa: C901 - one linear benchmark
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="bench data root (default as bench_compressed)")
    ap.add_argument(
        "--source", default=None, help="evaluation collections (default as bench_compressed)"
    )
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench/bench-peers"))
    ap.add_argument("--tiers", default="codes,balanced,high")
    ap.add_argument("--nprobe", default="4,8,16,32", help="latix nprobe values swept per tier")
    ap.add_argument("--passes", type=int, default=1, help="timed passes over all queries")
    ap.add_argument("--warmup", type=int, default=10, help="untimed queries per point first")
    ap.add_argument("--queries", type=int, default=0, help="first N test queries (0 = all)")
    ap.add_argument("--plaid-nbits", type=int, default=2)
    ap.add_argument("--plaid-k", type=int, default=1024, help="PLAID centroids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="reuse built indexes (no build times)")
    ap.add_argument("--json", default=os.path.join(HERE, "..", "bench-results", "peers.json"))
    ap.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.data:
        os.environ["LATIX_BENCH_DATA"] = os.path.abspath(a.data)
    import bench_compressed as bc
    import provenance

    if a.source:
        bc.QRELS = os.path.join(a.source, "scifact", "qrels", "test.tsv")
    os.makedirs(a.work, exist_ok=True)
    if a._build:
        kind, _, tier = a._build.partition(":")
        if kind == "latix":
            bc.build("scifact", f"{a.work}/latix-{tier}", a.seed, False, tier)
        else:
            colbert_build(f"{a.work}/plaid", bc.SCIFACT, a.plaid_nbits, a.plaid_k, a.seed)
        return

    provenance.print_header()
    tiers = [t for t in a.tiers.split(",") if t]
    probes = [int(p) for p in a.nprobe.split(",") if p]
    peer_reason = colbert_available()

    # Builds, each in its own niced child process (its own threads, its own memory).
    # The build time is the child's own (index creation to the last commit or file written),
    # recorded in <index>.json; with --reuse it is that of the earlier build.
    builds: dict[str, float] = {}
    reused = []
    kinds = [f"latix:{t}" for t in tiers] + ([] if peer_reason else ["plaid:"])
    for kind in kinds:
        path = f"{a.work}/latix-{kind[6:]}" if kind.startswith("latix") else f"{a.work}/plaid"
        if a.reuse and os.path.exists(path + ".json"):
            reused.append(kind)
        else:
            cmd = ["nice", "-n", "10", sys.executable, __file__, "--_build", kind]
            cmd += ["--work", a.work, "--seed", str(a.seed), "--plaid-nbits", str(a.plaid_nbits)]
            cmd += ["--plaid-k", str(a.plaid_k)]
            subprocess.run(cmd, check=True, stdout=sys.stderr)
        with open(path + ".json") as f:
            builds[kind] = float(json.load(f)["build_s"])
        print(f"built {kind} in {builds[kind]:.1f} s", file=sys.stderr)

    import ir_measures
    import latix
    from ir_measures import nDCG

    sci = bc.SCIFACT
    Q = np.load(sci + "/query_vectors.npy")
    qo = np.load(sci + "/query_offsets.npy")
    qids = json.load(open(sci + "/query_ids.json"))
    doc_ids = json.load(open(sci + "/doc_ids.json"))
    n_tok = int(np.load(sci + "/doc_offsets.npy")[-1])
    nq = len(qids) if a.queries <= 0 else min(a.queries, len(qids))
    # The exact reference bench_compressed.py cached, for exactly these inputs.
    ref_path = f"{bc.DATA}/bench-compressed/scifact-exact-top100.json"
    key = bc.input_key("scifact")
    ref = json.load(open(ref_path)) if os.path.exists(ref_path) else None
    if ref is None or ref.get("key") != key:
        raise SystemExit(
            f"{ref_path}: missing or made from other inputs (key {key}); run "
            "`python benches/bench_compressed.py --corpus scifact` first"
        )
    exact10 = [set(ref["ids"][i][:10]) for i in range(nq)]
    qrels = bc.load_qrels()
    sub_qrels = {q: qrels[q] for q in qids[:nq] if q in qrels}

    # Every operating point: (method, family, label, search function returning doc ids).
    ixs = {t: latix.Index.open(f"{a.work}/latix-{t}") for t in tiers}
    points: list[tuple[str, str, str, Any]] = []
    for t in tiers:
        for p in probes:

            def f(i: int, t: str = t, p: int = p) -> list[str]:
                _, h = ixs[t].search(Q[qo[i] : qo[i + 1]], k=10, n_threads=1, nprobe=p)
                return [str(d) for d in h[0] if d]

            points.append((f"latix {t}", "latix", f"nprobe {p}", f))
    plaid = None
    if peer_reason is None:
        plaid = ColbertSearcher(f"{a.work}/plaid")
        for pt in PLAID_POINTS:

            def g(i: int, pt: tuple[int, float, int] = pt) -> list[str]:
                assert plaid is not None
                return [doc_ids[j] for j in plaid.search(Q[qo[i] : qo[i + 1]], 10, pt)]

            label = f"ncells {pt[0]}, threshold {pt[1]}, ndocs {pt[2]}"
            points.append((f"colbert-ai PLAID ({a.plaid_nbits}-bit)", "colbert-ai", label, g))

    # Each point: an untimed warm-up over the first --warmup queries, then --passes timed passes
    # over all queries (the first one's answers give the quality figures); every other pass runs
    # the points in reverse order.
    hits: dict[int, list[list[str]]] = {}
    lat: dict[int, list[float]] = {j: [] for j in range(len(points))}
    load_start = provenance.load_average()
    for _, _, _, fn in points:
        for i in range(min(a.warmup, nq)):
            fn(i)
    for ps in range(a.passes):
        order = list(range(len(points)))
        if ps % 2:
            order.reverse()
        for j in order:
            fn = points[j][3]
            got = []
            for i in range(nq):
                t = time.perf_counter()
                got.append(fn(i))
                lat[j].append(time.perf_counter() - t)
            hits.setdefault(j, got)
    load_end = provenance.load_average()

    sizes = {f"latix {t}": dir_bytes(f"{a.work}/latix-{t}") / n_tok for t in tiers}
    build_s = {f"latix {t}": builds.get(f"latix:{t}") for t in tiers}
    if plaid is not None:
        name = f"colbert-ai PLAID ({a.plaid_nbits}-bit)"
        sizes[name] = dir_bytes(f"{a.work}/plaid") / n_tok
        build_s[name] = builds.get("plaid:")
    rows = []
    for j, (method, family, label, _) in enumerate(points):
        run = {qids[i]: {d: float(10 - r) for r, d in enumerate(hits[j][i])} for i in range(nq)}
        ndcg = ir_measures.calc_aggregate([nDCG @ 10], sub_qrels, run)[nDCG @ 10]
        rec = float(np.mean([len(set(hits[j][i]) & exact10[i]) / 10 for i in range(nq)]))
        ms = np.array(lat[j]) * 1000
        rows.append(
            {
                "method": method,
                "library": family,
                "setting": label,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "recall_at_10_vs_exact": rec,
                "ndcg_at_10": float(ndcg),
                "bytes_per_token": sizes[method],
                "build_s": build_s[method],
            }
        )
    curve = [(r["p50_ms"], r["recall_at_10_vs_exact"]) for r in rows if r["library"] == "latix"]
    for r in rows:
        if r["library"] != "latix":
            at = latency_at_recall(curve, r["recall_at_10_vs_exact"])
            r["latix_p50_at_equal_recall_ms"] = at
            r["latix_over_peer_p50"] = None if at is None else at / r["p50_ms"]

    # Output.
    print(
        f"\nSciFact: {len(doc_ids):,} documents, {n_tok:,} tokens (384-d, the cached encodings); "
        f"{nq} test queries, k = 10, 1 thread, {a.passes} timed pass(es) after {a.warmup} "
        "untimed queries per point; "
        f"exact reference: {ref_path} (key {key})"
    )
    print(f"load average (1 / 5 / 15 min): timing start {load_start}, end {load_end}")
    if reused:
        print(f"indexes reused from an earlier build (--reuse): {', '.join(reused)}")
    if plaid is not None:
        print(
            f"colbert-ai PLAID: {a.plaid_nbits}-bit residuals, {a.plaid_k} centroids, "
            "torch.set_num_threads(1) for search"
        )
    print(
        "\n| method | setting | p50 ms | p99 ms | recall@10 vs exact | nDCG@10 | bytes/token | "
        "build s | latix p50 at equal recall | latix / peer p50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        at = r.get("latix_p50_at_equal_recall_ms")
        ratio = r.get("latix_over_peer_p50")
        peer = r["library"] != "latix"
        at_s = "-" if not peer else ("out of latix's range" if at is None else f"{at:.2f} ms")
        ratio_s = "-" if ratio is None else f"{ratio:.3f}"
        print(
            f"| {r['method']} | {r['setting']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['recall_at_10_vs_exact']:.3f} | {r['ndcg_at_10']:.4f} | "
            f"{r['bytes_per_token']:.1f} | {r['build_s']:.1f} | {at_s} | {ratio_s} |"
        )
    notes = dict(PEER_NOTES)
    if peer_reason is not None:
        notes["colbert-ai 0.2.22"] = f"not measured: cannot be imported here ({peer_reason})"
    print("\nPeers not measured here:")
    for k, v in notes.items():
        print(f"- {k}: {v}")
    sys.stdout.flush()
    out = {
        "provenance": provenance.lines(),
        "n_tokens": n_tok,
        "n_queries": nq,
        "passes": a.passes,
        "load_average": {"start": load_start, "end": load_end},
        "rows": rows,
        "not_measured": notes,
    }
    with open(a.json + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
