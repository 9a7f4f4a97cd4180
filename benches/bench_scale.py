"""How latix's compressed index grows with the corpus: build time, peak build memory, bytes per
token, search latency and quality at several corpus sizes (issue 18, item 4).

One command: `python benches/bench_scale.py [--sizes 2M,3M,10M,30M] [--lock FILE]`. Each size is
a corpus of that many tokens: SciFact's 5,183 documents (1.23M tokens, encoded with the default
model by benches/prepare_bench_data.py) spread evenly through a stream of generated documents
(benches/scale_gen.py: seeded mixtures of SciFact's and Vaswani's real token vectors at several
noise levels, made on the fly in batches, never stored) up to the size. SciFact's test queries
and qrels measure quality; since SciFact alone is 1.23M tokens, the smallest size is 2M.

Per size, through latix's public API as a user would build it: `latix.Index.create(...,
compression=latix.Compression())` (every default: codes only, K chosen automatically when the
first commit trains the codec, no compaction; --expected-tokens / --retrain-growth set those
`Compression` growth settings instead), documents added in commits of --commit-docs (5,000).
The build runs in a child process, which reports its own peak resident memory (`getrusage`),
including the generator's pools (SciFact and the Vaswani sample, loaded before
the index is created: that resident size is reported beside it), and the time spent generating
(excluded from the build time the exponent is fitted on). Then, in this process:

* bytes per token on disk: `Index.stats()["bytes_on_disk"]` / tokens;
* latency of k = 10 searches, one query at a time, 1 and 2 threads, over SciFact's 300 test
  queries (pre-encoded), after one untimed pass; p50 and p99;
* nDCG@10 of those searches on SciFact test (qrels);
* the median time of `Index.open` (5 opens) and the time to add the next 1,000 generated
  documents and commit them (the merge policy's merges included), after the searches;
* last (untimed, so that it never delays the timed phases), recall@10 against exact MaxSim on
  a fixed seeded sample of --exact-sample (50) test queries, and the share of the exact
  top-10 slots that generated documents take (how much they compete), plus exact and
  compressed nDCG@10 on that sample. The exact top 20 is computed once per size
  (`latix.maxsim`, the exact kernel, on both threads, over every document, SciFact's and
  generated batch by batch; --exact-kernel numpy uses a float32 GEMM independent of latix, ~1.6x
  the CPU) and cached under --work, keyed by a checksum of the generator's parameters and seed,
  its input files, the size, the queries and the sample; when loaded, each query's cached top 10
  is re-scored in float64 by numpy from documents regenerated one by one (which also checks that
  a document is the same alone as in a batch) and must match.

With --lock FILE, each timed or heavy phase of a size (exact reference, build, searches) runs
holding an exclusive flock on FILE, released between phases (and every 10 minutes during the
untimed exact reference), so other benchmarks on a shared machine are never timed beside this
one. Indexes go under --work (default
~/.cache/latix/bench-scale) and are deleted after measuring unless --keep. Results: every size
merged into --json (bench-results/scale.json, read by benches/plots.py) and the table written to
--md (bench-results/scale.md), each size with its provenance (benches/provenance.py) and load
average; the fitted growth exponents (log-log least squares) of p50 latency and build time
against tokens are printed and stored, with the build time they project for 100M tokens, fitted
only over the sizes measured with the same latix code (rust/, python/latix, the build files) as
the newest one; the others are named in the table's notes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import provenance
import scale_gen
from checksums import combined, file_digest

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")
SOURCE = os.environ.get("LATIX_DATA") or str(ROOT / ".." / "shared" / "data")
QUERY_FILES = ("query_vectors.npy", "query_offsets.npy", "query_ids.json")
#: Exact hits kept per sample query.
EXACT_K = 20
#: Documents per batch of the exact reference (the numpy kernel's float32 GEMM scratch: ~queries'
#: tokens x batch tokens x 4 bytes, ~0.3 GB).
EXACT_BATCH = 300


def parse_size(s: str) -> int:
    """`2M`, `300k` or a plain integer of tokens."""
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def size_name(n: int) -> str:
    return f"{n / 1e6:g}M"


#: Longest time (s) the exact reference holds the lock before letting others take it.
LOCK_SLICE = 600.0


class Lock:
    """An exclusive flock on a file (none if `path` is None), held by :meth:`hold`."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._f: Any = None
        self._since = 0.0
        self._what = ""

    def _acquire(self) -> None:
        if self.path is None:
            return
        self._f = open(self.path, "a")  # noqa: SIM115 (released in _release)
        t = time.time()
        fcntl.flock(self._f, fcntl.LOCK_EX)
        self._since = time.time()
        print(f"[lock] {self._what}: acquired after {self._since - t:.0f} s", flush=True)

    def _release(self) -> None:
        if self._f is None:
            return
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()
        self._f = None
        print(f"[lock] {self._what}: released after {time.time() - self._since:.0f} s", flush=True)

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        """Holds the lock for the block (a block inside another one's hold keeps it)."""
        if self._f is not None:
            yield
            return
        self._what = what
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def share(self) -> None:
        """Inside :meth:`hold` of an untimed phase: after `LOCK_SLICE` seconds, releases the lock
        for a moment so that others' timed runs are not kept waiting, then takes it again."""
        if self._f is not None and time.time() - self._since > LOCK_SLICE:
            self._release()
            time.sleep(5.0)
            self._acquire()


class Corpus:
    """The document stream of one size: SciFact's documents spread evenly through generated
    ones, in commits of `commit_docs` documents."""

    def __init__(self, pools: scale_gen.Pools, seed: int, n_tokens: int, commit_docs: int):
        self.gen = scale_gen.Generator(pools, seed)
        self.pools = pools
        sci_tokens = int(pools.offsets[pools.n_sci])
        if n_tokens <= sci_tokens:
            raise SystemExit(
                f"size {n_tokens:,} tokens: SciFact alone holds {sci_tokens:,}; ask for more"
            )
        self.n_gen = self.gen.n_docs_for(n_tokens - sci_tokens)
        # SciFact's non-empty documents (latix refuses empty ones), and the position in the
        # stream of each (distinct since n_docs >= their number).
        self.sci = pools.primaries
        self.n_docs = len(self.sci) + self.n_gen
        self.sci_pos = (np.arange(len(self.sci)) * self.n_docs) // len(self.sci)
        self.commit_docs = commit_docs
        self.n_tokens = sci_tokens + int(self.gen.lengths(0, self.n_gen).sum())

    def commits(
        self, sci_ids: list[str], piece: int = 500
    ) -> Iterator[tuple[list[str], list[np.ndarray], float, bool]]:
        """Pieces of at most `piece` documents: (ids, per-document arrays, seconds spent
        generating, whether the piece ends a commit). Pieces keep the generator's own memory
        (float32 vectors and their noise) to ~0.2 GB, so the build's peak is latix's."""
        p = self.pools
        g = 0
        for c0 in range(0, self.n_docs, self.commit_docs):
            c1 = min(self.n_docs, c0 + self.commit_docs)
            for s0 in range(c0, c1, piece):
                s1 = min(c1, s0 + piece)
                sj = self.sci[(self.sci_pos >= s0) & (self.sci_pos < s1)]
                n_gen = (s1 - s0) - len(sj)
                t = time.perf_counter()
                vec, off = self.gen.batch(g, g + n_gen)
                gen_s = time.perf_counter() - t
                ids = scale_gen.ids_of(g, g + n_gen) + [sci_ids[j] for j in sj]
                docs: list[np.ndarray] = list(np.split(vec, off[1:-1]))
                docs += [p.vectors[p.offsets[j] : p.offsets[j + 1]] for j in sj]
                g += n_gen
                yield ids, docs, gen_s, s1 == c1
        assert g == self.n_gen


def vm_rss_mb() -> float:
    """This process's current resident memory (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(
    n_tokens: int,
    out: str,
    data: str,
    source: str,
    vaswani: str,
    seed: int,
    commit_docs: int,
    growth: dict[str, int] | None = None,
) -> None:
    """Child process: builds the index of one size with latix's defaults (plus `growth`:
    `Compression` growth settings, see --expected-tokens / --retrain-growth) and writes
    `<out>.json` (times, peak memory, stats)."""
    import latix

    pools, _ = scale_gen.load_pools(data, source, seed, Path(vaswani), identify=False)
    sci_ids = json.load(open(f"{data}/scifact/doc_ids.json"))
    corpus = Corpus(pools, seed, n_tokens, commit_docs)
    base_mb = vm_rss_mb()
    if os.path.exists(out):
        shutil.rmtree(out)
    t0 = time.perf_counter()
    gen_s, commit_s, add_s = 0.0, [], []
    comp = latix.Compression(**(growth or {}))  # type: ignore[arg-type]
    ix = latix.Index.create(out, dim=pools.dim, compression=comp)
    adding = 0.0
    for ids, docs, g, ends in corpus.commits(sci_ids):
        gen_s += g
        t = time.perf_counter()
        ix.add(ids, docs)  # staged to a temporary file, not memory
        adding += time.perf_counter() - t
        del docs
        if ends:
            add_s.append(adding)
            adding = 0.0
            t = time.perf_counter()
            ix.commit()
            commit_s.append(time.perf_counter() - t)
    st = ix.stats()
    ix.close()
    wall = time.perf_counter() - t0
    info = {
        "wall_s": wall,
        "generate_s": gen_s,
        "build_s": wall - gen_s,  # latix's own time: adds and commits
        "add_s": add_s,
        "commit_s": commit_s,
        "n_commits": len(commit_s),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pools_rss_mb": base_mb,
        "n_generated_docs": corpus.n_gen,
        "add_piece_docs": 500,
        "stats": st,
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f, default=str)


def exact_topk(
    corpus: Corpus,
    sci_ids: list[str],
    qs: list[np.ndarray],
    k: int,
    lock: Lock,
    kernel: str = "latix",
) -> tuple[list[list[str]], list[list[float]]]:
    """Exact MaxSim top `k` of each query over every document of `corpus`, a batch of documents
    at a time. `kernel` "latix": `latix.maxsim` per query (both threads; no similarity matrix is
    materialised); "numpy": float32 GEMM of all queries' tokens against the batch, max over each
    document's rows, sum per query (independent of latix, ~1.6x the CPU)."""
    import latix

    qs = [np.ascontiguousarray(q, np.float32) for q in qs]
    qcat = np.concatenate(qs)
    qoff = np.concatenate([[0], np.cumsum([len(q) for q in qs])])
    best_s = [np.full(0, -np.inf, np.float32) for _ in qs]
    best_i: list[list[str]] = [[] for _ in qs]

    def consume(vec: np.ndarray, off: np.ndarray, ids: list[str]) -> None:
        if kernel == "latix":
            v, o = np.ascontiguousarray(vec), np.asarray(off, np.int64)
            per_q = np.stack([latix.maxsim(q, v, o, n_threads=2) for q in qs])
        else:
            sim = qcat @ np.asarray(vec, np.float32).T  # (query tokens, batch tokens)
            mx = np.maximum.reduceat(sim, off[:-1], axis=1)  # (query tokens, docs)
            per_q = np.add.reduceat(mx, qoff[:-1], axis=0)  # (queries, docs)
        for i in range(len(qs)):
            s = np.concatenate([best_s[i], per_q[i]])
            names = best_i[i] + ids
            top = np.argsort(-s, kind="stable")[:k]
            best_s[i], best_i[i] = s[top], [names[j] for j in top]

    p = corpus.pools
    for a in range(0, len(corpus.sci), EXACT_BATCH):
        keep = [int(j) for j in corpus.sci[a : a + EXACT_BATCH]]
        rows = np.concatenate([np.arange(p.offsets[j], p.offsets[j + 1]) for j in keep])
        off = np.concatenate([[0], np.cumsum([p.offsets[j + 1] - p.offsets[j] for j in keep])])
        consume(p.vectors[rows], off, [sci_ids[j] for j in keep])
    for g in range(0, corpus.n_gen, EXACT_BATCH):
        h = min(corpus.n_gen, g + EXACT_BATCH)
        vec, off = corpus.gen.batch(g, h)
        consume(vec, off, scale_gen.ids_of(g, h))
        lock.share()
    return best_i, [[float(x) for x in s] for s in best_s]


def reference(
    corpus: Corpus,
    ident: dict[str, str],
    data: str,
    work: str,
    sample: list[int],
    lock: Lock,
    kernel: str = "latix",
) -> tuple[dict[str, Any], bool]:
    """The cached exact top `EXACT_K` of the sample queries (computed if absent or stale),
    checked: each cached top 10 re-scored in float64 from documents regenerated alone."""
    sci = f"{data}/scifact"
    Q = np.load(f"{sci}/query_vectors.npy")
    qo = np.load(f"{sci}/query_offsets.npy")
    sci_ids = json.load(open(f"{sci}/doc_ids.json"))
    key = combined(
        [
            corpus.gen.params(),
            ident,
            {"n_tokens": corpus.n_tokens, "n_gen": corpus.n_gen, "k": EXACT_K, "format": 1},
            [file_digest(f"{sci}/{n}") for n in QUERY_FILES],
            sample,
        ]
    )
    path = f"{work}/exact-{corpus.n_tokens}-{key[:12]}.json"
    qs = [Q[qo[i] : qo[i + 1]] for i in sample]
    ref = json.load(open(path)) if os.path.exists(path) else None
    cached = ref is not None and ref.get("key") == key
    if not cached:
        with lock.hold(f"exact reference, {corpus.n_tokens:,} tokens"):
            t = time.time()
            ids, scores = exact_topk(corpus, sci_ids, qs, EXACT_K, lock, kernel)
            ref = {"key": key, "ids": ids, "scores": scores, "seconds": time.time() - t}
            ref["kernel"] = kernel
        with open(path + ".tmp", "w") as f:
            json.dump(ref, f)
        os.replace(path + ".tmp", path)
    assert ref is not None
    where = {d: j for j, d in enumerate(sci_ids)}
    p = corpus.pools
    for q, top_ids, top_s in zip(qs, ref["ids"], ref["scores"], strict=True):
        assert len(set(top_ids)) == len(top_ids) == EXACT_K and all(np.diff(top_s) <= 0)
        q64 = q.astype(np.float64)
        for d, s in zip(top_ids[:10], top_s[:10], strict=True):
            x: np.ndarray
            if d.startswith("gen-"):
                x = corpus.gen.doc(int(d[4:]))
            else:
                j = where[d]
                x = p.vectors[p.offsets[j] : p.offsets[j + 1]]
            want = float((q64 @ x.astype(np.float64).T).max(axis=1).sum())
            assert abs(want - s) <= 1e-3, f"{d}: cached {s} vs float64 {want}"
    return ref, cached


def pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.array(x) * 1000, p))


def measure(
    n_tokens: int,
    a: argparse.Namespace,
    pools: scale_gen.Pools,
    ident: dict[str, str],
) -> dict[str, Any]:
    """Every figure of one size (see the module's docstring)."""
    name = size_name(n_tokens)
    corpus = Corpus(pools, a.seed, n_tokens, a.commit_docs)
    nq = len(json.load(open(f"{a.data}/scifact/query_ids.json")))
    sample = sorted(
        np.random.default_rng(a.seed + 7).choice(nq, min(a.exact_sample, nq), replace=False)
    )
    sample = [int(i) for i in sample]
    disk = shutil.disk_usage(a.work)
    need = n_tokens * 60 + (4 << 30)  # ~30 B/token index + a commit's staging + margin
    if disk.free < need:
        raise SystemExit(f"{name}: {disk.free / 1e9:.1f} GB free under {a.work}, need {need / 1e9}")
    print(
        f"\n## {name}: {corpus.n_tokens:,} tokens, {corpus.n_docs:,} documents "
        f"({corpus.n_gen:,} generated); disk free {disk.free / 1e9:.1f} GB",
        flush=True,
    )
    prov = provenance.lines()
    lock = Lock(a.lock)
    with lock.hold(f"size {name}") if a.lock_per_size else contextlib.nullcontext():
        return measure_locked(n_tokens, name, corpus, sample, prov, lock, ident, a)


def measure_locked(
    n_tokens: int,
    name: str,
    corpus: Corpus,
    sample: list[int],
    prov: list[str],
    lock: Lock,
    ident: dict[str, str],
    a: argparse.Namespace,
) -> dict[str, Any]:
    import ir_measures
    import latix
    from ir_measures import nDCG
    from latix.corpus import read_qrels

    sci = f"{a.data}/scifact"
    Q = np.load(f"{sci}/query_vectors.npy")
    qo = np.load(f"{sci}/query_offsets.npy")
    qids = json.load(open(f"{sci}/query_ids.json"))
    nq = len(qids)
    out = f"{a.work}/index-{name}"
    load_before = provenance.load_average()
    with lock.hold(f"build {name}"):
        t = time.time()
        cmd = [sys.executable, __file__, "--_build", str(n_tokens), "--work", a.work]
        cmd += ["--data", a.data, "--source", a.source, "--seed", str(a.seed)]
        cmd += ["--commit-docs", str(a.commit_docs), "--_vaswani", a._vaswani]
        cmd += ["--expected-tokens", a.expected_tokens, "--retrain-growth", str(a.retrain_growth)]
        subprocess.run(cmd, check=True)
        child_wall = time.time() - t
        load_build = provenance.load_average()
    info = json.load(open(out + ".json"))
    st = info["stats"]
    print(
        f"build: {info['build_s']:.1f} s latix (+ {info['generate_s']:.1f} s generating; child "
        f"wall {child_wall:.1f} s), {info['n_commits']} commits, peak RSS "
        f"{info['peak_rss_mb']:,.0f} MB (generator pools {info['pools_rss_mb']:,.0f} MB of it); "
        f"load {load_before} -> {load_build}",
        flush=True,
    )
    qrels = read_qrels(Path(a.source) / "scifact" / "qrels" / "test.tsv")
    sub_qrels = {q: dict(qrels[q]) for q in qids if q in qrels}
    with lock.hold(f"search {name}"):
        load_search0 = provenance.load_average()
        ix = latix.Index.open(out)
        queries = [Q[qo[i] : qo[i + 1]] for i in range(nq)]
        for q in queries:  # untimed pass: steady-state latency, not first page touches
            ix.search(q, k=10, n_threads=1)
        lat: dict[int, list[float]] = {1: [], 2: []}
        run10: dict[str, dict[str, float]] = {}
        for i, q in enumerate(queries):
            for th in (1, 2):
                t = time.perf_counter()
                s, h = ix.search(q, k=10, n_threads=th)
                lat[th].append(time.perf_counter() - t)
            run10[qids[i]] = {str(d): float(x) for x, d in zip(s[0], h[0], strict=True) if d}
        ix.close()
        load_search = provenance.load_average()
        open_s, add_commit_s = open_and_add(out, corpus)
    print(
        f"open {open_s * 1000:.1f} ms (median of {OPENS}); add + commit {ADD_DOCS:,} documents "
        f"{add_commit_s:.2f} s",
        flush=True,
    )
    print(
        f"p50/p99 1T {pct(lat[1], 50):.2f}/{pct(lat[1], 99):.2f} ms, 2T {pct(lat[2], 50):.2f}/"
        f"{pct(lat[2], 99):.2f} ms (load {load_search0} -> {load_search})",
        flush=True,
    )
    # The untimed exact reference last, so that a size's timed phases (build, searches) are
    # measured first and a long reference (~1 h at 100M tokens) never delays them.
    ref, cached = reference(corpus, ident, a.data, a.work, sample, lock, a.exact_kernel)
    gen_share = float(
        np.mean([sum(d.startswith("gen-") for d in ids[:10]) / 10 for ids in ref["ids"]])
    )
    how = "cached" if cached else f"computed, {ref['seconds']:.0f} s"
    print(
        f"exact reference ({how}): "
        f"generated documents take {gen_share:.1%} of the exact top-10 slots of "
        f"{len(sample)} sample queries",
        flush=True,
    )
    ev = ir_measures.calc_aggregate([nDCG @ 10], sub_qrels, run10)
    rec = [len(set(run10[qids[i]]) & set(ref["ids"][j][:10])) / 10 for j, i in enumerate(sample)]
    sq = {qids[i]: sub_qrels[qids[i]] for i in sample if qids[i] in sub_qrels}
    ex_run = {
        qids[i]: dict(zip(ref["ids"][j][:10], ref["scores"][j][:10], strict=True))
        for j, i in enumerate(sample)
    }
    ev_ex = ir_measures.calc_aggregate([nDCG @ 10], sq, ex_run)
    ev_cs = ir_measures.calc_aggregate([nDCG @ 10], sq, {q: run10[q] for q in ex_run})
    r = {
        "size": name,
        "n_tokens": corpus.n_tokens,
        "n_docs": corpus.n_docs,
        "n_generated_docs": corpus.n_gen,
        "n_centroids": st.get("n_centroids"),
        "n_segments": st.get("n_segments"),
        "build_s": info["build_s"],
        "generate_s": info["generate_s"],
        "n_commits": info["n_commits"],
        "first_commit_s": info["commit_s"][0],
        "peak_rss_mb": info["peak_rss_mb"],
        "pools_rss_mb": info["pools_rss_mb"],
        # Documents per add() call; absent: the whole commit's float32 batch at once (runs
        # before a0ef0eb), whose ~1.8 GB (and its noise while made) counted in the peak RSS.
        "add_piece_docs": info.get("add_piece_docs"),
        "bytes_on_disk": st["bytes_on_disk"],
        "bytes_per_token": st["bytes_on_disk"] / corpus.n_tokens,
        "open_ms": open_s * 1000,
        "add_commit_1000_s": add_commit_s,
        "p50_1t_ms": pct(lat[1], 50),
        "p99_1t_ms": pct(lat[1], 99),
        "p50_2t_ms": pct(lat[2], 50),
        "p99_2t_ms": pct(lat[2], 99),
        "ndcg_at_10": ev[nDCG @ 10],
        "recall_at_10_vs_exact": float(np.mean(rec)),
        "generated_share_exact_top10": gen_share,
        "sample_ndcg_at_10_exact": ev_ex[nDCG @ 10],
        "sample_ndcg_at_10": ev_cs[nDCG @ 10],
        "exact_sample": len(sample),
        "exact_kernel": ref.get("kernel", "numpy"),  # absent: computed before the option
        "exact_s": ref.get("seconds"),
        "exact_key": ref["key"],
        "growth": growth_settings(a, n_tokens),
        "load": {"build": [load_before, load_build], "search": [load_search0, load_search]},
        "provenance": prov,
    }
    print(
        f"bytes/token {r['bytes_per_token']:.1f}; p50/p99 1T {r['p50_1t_ms']:.2f}/"
        f"{r['p99_1t_ms']:.2f} ms, 2T {r['p50_2t_ms']:.2f}/{r['p99_2t_ms']:.2f} ms (load "
        f"{load_search0} -> {load_search}); nDCG@10 {r['ndcg_at_10']:.4f}; recall@10 vs exact "
        f"{r['recall_at_10_vs_exact']:.3f}; sample nDCG@10 exact {r['sample_ndcg_at_10_exact']:.4f}"
        f" / compressed {r['sample_ndcg_at_10']:.4f}",
        flush=True,
    )
    if not a.keep:
        shutil.rmtree(out)
    return r


#: Opens timed per size (median reported).
OPENS = 5
#: Documents added and committed to the built index, timed.
ADD_DOCS = 1000


def open_and_add(path: str, corpus: Corpus) -> tuple[float, float]:
    """(median seconds of `Index.open(path)` over `OPENS` opens, seconds to add the next
    `ADD_DOCS` generated documents to the index and commit them, the merge policy's merges
    included). Changes the index: run after every other measurement of it."""
    import latix

    opens = []
    for _ in range(OPENS):
        t = time.perf_counter()
        ix = latix.Index.open(path)
        opens.append(time.perf_counter() - t)
        ix.close()
    g0 = corpus.n_gen
    vec, off = corpus.gen.batch(g0, g0 + ADD_DOCS)
    docs = list(np.split(vec, off[1:-1]))
    with latix.Index.open(path, "w") as ix:
        t = time.perf_counter()
        ix.add(scale_gen.ids_of(g0, g0 + ADD_DOCS), docs)
        ix.commit()
        add_s = time.perf_counter() - t
    return float(np.median(opens)), add_s


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(exponent, log intercept) of the least-squares line of log y against log x."""
    b, c = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(b), float(c)


#: What a size's figures depend on in the checkout: latix's code and build (not the benches).
LIBRARY_PATHS = ("rust", "python/latix", "Cargo.toml", "Cargo.lock", "pyproject.toml")


def commit_of(row: dict[str, Any]) -> str | None:
    """The commit a size was measured at, when its latix code was that commit's (None: unknown,
    or uncommitted changes under `LIBRARY_PATHS`; changes elsewhere, e.g. to bench-results/,
    do not change what was measured)."""
    for ln in row.get("provenance", []):
        if ln.startswith("- commit: "):
            c, _, rest = ln[len("- commit: ") :].strip().partition(" + uncommitted changes to ")
            if len(c) != 40 or any(x not in "0123456789abcdef" for x in c):
                return None
            changed = [x.strip() for x in rest.split(",")] if rest else []
            if any(x.endswith(" more") or x.startswith(LIBRARY_PATHS) for x in changed):
                return None
            return c
    return None


def same_library(a: str | None, b: str | None) -> bool:
    """True when commits `a` and `b` hold the same latix code (`LIBRARY_PATHS`), by git."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    cmd = ["git", "-C", str(ROOT), "diff", "--quiet", a, b, "--", *LIBRARY_PATHS]
    return subprocess.run(cmd, capture_output=True).returncode == 0  # 1: differ, 128: unknown


def fits(sizes: dict[str, Any]) -> dict[str, Any]:
    """Growth exponents against tokens of p50 latency (1 and 2 threads), build time, peak RSS
    and bytes per token, and what they project for 100M tokens, each fitted only over the sizes
    measured with the same latix code as the most recently measured size (a growth figure of
    different code is none); `same_code` names those sizes, `other_code` the rest."""
    rows = sorted(sizes.values(), key=lambda r: r["n_tokens"])
    if not rows:
        return {}
    dated = [(ln, r) for r in rows for ln in r.get("provenance", []) if ln.startswith("- date:")]
    newest = max(dated, key=lambda x: x[0])[1] if dated else rows[-1]
    ref = commit_of(newest)
    same = [r for r in rows if r is newest or same_library(commit_of(r), ref)]
    out: dict[str, Any] = {
        "sizes": [r["n_tokens"] for r in same],
        "same_code": [r["size"] for r in same],
        "other_code": [r["size"] for r in rows if not any(r is x for x in same)],
        "commit": ref,
    }
    for k in ("p50_1t_ms", "p50_2t_ms", "build_s", "peak_rss_mb", "bytes_per_token"):
        # Peak RSS only over builds that added in pieces (the others also held a whole batch).
        use = [r for r in same if k != "peak_rss_mb" or r.get("add_piece_docs")]
        if len(use) < 2:
            continue
        b, c = fit([r["n_tokens"] for r in use], [r[k] for r in use])
        out[k] = {"exponent": b, "at_100m": float(np.exp(c) * 1e8**b)}
    return out


def markdown(saved: dict[str, Any]) -> str:
    rows = sorted(saved["sizes"].values(), key=lambda r: r["n_tokens"])
    f = saved.get("fit", {})
    # Rows built with `Compression` growth settings say so (the table header says defaults).
    parts = []
    exp = {
        r["size"]: r["growth"]["expected_tokens"]
        for r in rows
        if "expected_tokens" in r.get("growth", {})
    }
    if exp:
        parts.append(
            "expected_tokens = each size's token count"
            if len(exp) == len(rows) and all(exp[r["size"]] == parse_size(r["size"]) for r in rows)
            else "expected_tokens " + ", ".join(f"{v:,} ({k})" for k, v in exp.items())
        )
    rg = sorted(
        {r["growth"]["retrain_growth"] for r in rows if "retrain_growth" in r.get("growth", {})}
    )
    if rg:
        parts.append("retrain_growth " + " / ".join(str(g) for g in rg))
    config = (
        "latix defaults but the `Compression` growth settings " + "; ".join(parts)
        if parts
        else "latix defaults"
    )
    md = [
        f"# Scale: latix's compressed index from {rows[0]['size']} to {rows[-1]['size']} tokens",
        "",
        "`python benches/bench_scale.py` (benches/bench_scale.py: SciFact + generated competing "
        f"documents from benches/scale_gen.py; {config}, commits of 5,000 documents, no "
        "compaction). Build time is latix's own (adds and commits; generating the documents "
        "excluded, given beside it); peak RSS is the build child's, which includes the "
        "generator's pools (given beside it). Latency: k = 10, one query at a time, 300 SciFact "
        "test queries. recall@10 and the generated share are against exact MaxSim on a fixed "
        "sample of 50 test queries.",
        "",
        "| tokens | docs (generated) | K | segments | build s (+ generate) | peak RSS MB (pools) "
        "| bytes/token | p50 / p99 1T ms | p50 / p99 2T ms | nDCG@10 | recall@10 vs exact "
        "| generated share of exact top 10 | sample nDCG@10 exact / compressed "
        "| build tokens/s | open ms | add + commit 1,000 docs s | load (build; search) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- | --- |",
    ]
    for r in rows:
        # Sizes measured before the open and add figures existed show "-".
        open_ms = f"{r['open_ms']:.1f}" if "open_ms" in r else "-"
        add_s = f"{r['add_commit_1000_s']:.2f}" if "add_commit_1000_s" in r else "-"
        md.append(
            f"| {r['n_tokens']:,} | {r['n_docs']:,} ({r['n_generated_docs']:,}) | "
            f"{r['n_centroids']} | {r['n_segments']} | {r['build_s']:.1f} "
            f"(+ {r['generate_s']:.1f}) | {r['peak_rss_mb']:,.0f}"
            f"{'' if r.get('add_piece_docs') else ' *'} ({r['pools_rss_mb']:,.0f}) | "
            f"{r['bytes_per_token']:.1f} | "
            f"{r['p50_1t_ms']:.2f} / {r['p99_1t_ms']:.2f} | {r['p50_2t_ms']:.2f} / "
            f"{r['p99_2t_ms']:.2f} | {r['ndcg_at_10']:.4f} | {r['recall_at_10_vs_exact']:.3f} | "
            f"{r['generated_share_exact_top10']:.1%} | {r['sample_ndcg_at_10_exact']:.4f} / "
            f"{r['sample_ndcg_at_10']:.4f} | {r['n_tokens'] / r['build_s']:,.0f} | {open_ms} | "
            f"{add_s} | {r['load']['build'][1]}; {r['load']['search'][1]} |"
        )
    if any(not r.get("add_piece_docs") for r in rows):
        md += [
            "",
            "\\* built before a0ef0eb: each commit's 5,000 generated documents were added as one "
            "float32 batch, so the peak RSS also holds the generator's ~1.8 GB batch (and its "
            "noise while it was made): an overestimate of latix's peak. Later builds add pieces "
            "of 500 documents.",
        ]
    if f.get("other_code"):
        md += [
            "",
            f"Growth exponents are fitted only over sizes measured with the latix code of the "
            f"newest one ({', '.join(f.get('same_code', []))}; commit {f.get('commit')}): "
            f"{', '.join(f['other_code'])} were measured with other code (see their "
            f"provenance) and are left out.",
        ]
    if any(k in f for k in ("p50_1t_ms", "build_s")):
        md += ["", "Fitted growth exponents (log-log least squares against tokens):", ""]
        for k, what in (
            ("p50_1t_ms", "p50 latency, 1 thread"),
            ("p50_2t_ms", "p50 latency, 2 threads"),
            ("build_s", "build time"),
            ("peak_rss_mb", "peak build RSS"),
        ):
            if k not in f:
                continue
            unit = {"build_s": "s", "peak_rss_mb": "MB"}.get(k, "ms")
            md.append(
                f"- {what}: exponent **{f[k]['exponent']:.2f}** (projected at 100M tokens: "
                f"{f[k]['at_100m']:,.1f} {unit})"
            )
    elif f.get("other_code"):
        md += ["", "No growth exponent: fewer than two sizes measured with the same code."]
    ex = [r for r in rows if r.get("exact_s") is not None]
    if ex:
        md += [
            "",
            "Exact reference (computed once per size, cached): "
            + "; ".join(
                f"{r['size']} {r['exact_s']:,.0f} s ({r.get('exact_kernel', 'numpy')})" for r in ex
            )
            + ".",
        ]
    md += ["", "Provenance of each size:", ""]
    for r in rows:
        md.append(f"*{r['size']}:*")
        md += r["provenance"]
        md.append("")
    md += policy_markdown(saved)
    md += colpali_markdown(saved)
    return "\n".join(md) + "\n"


def policy_markdown(saved: dict[str, Any]) -> list[str]:
    """The merge policy run (benches/bench_merge.py --scale-json, key "policy_run"), or []."""
    r = saved.get("policy_run")
    if not r:
        return []
    off, on, cc = r["off"], r["on"], r["compact_codes"]
    ce = r.get("compact_reencode", {})
    n, tok = r["commits"], r.get("commit_tokens")
    p0 = off["search"]["p50_ms"]
    made = len(on["build"].get("commit_s", [])) or n
    total = on["build"].get("stats", {}).get("n_tokens")
    asked = f" of {tok:,} tokens" if tok else ""
    what = f"{made} commits" + (f" of {total / made:,.0f} tokens on average" if total else "")
    if made != n:  # bench_merge before 1273671 sized commits by the pools' mean length
        what += f" (asked: {n} commits{asked})"
    elif tok:
        what = f"{n} commits{asked}"
    md = [
        "",
        f"## The merge policy: {what}",
        "",
        "`python benches/bench_merge.py` (benches/bench_merge.py: this benchmark's corpus, "
        f"SciFact spread through generated documents, added in {made} commits, each build in a "
        "child process; latix defaults; k = 10 searches, one query at a time, 1 thread, over "
        "SciFact's test queries). Commit CPU: process CPU seconds of a commit (merges included), "
        "median over the first and the last third of the commits (equal tokens each).",
        "",
        "| build | segments | p50 / p99 1T ms | p50 vs no policy | commit median / max s "
        "| commit CPU s, first / last third | load (build; search) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in (("no merge policy", off), ("merge policy (default)", on)):
        s = x["search"]
        md.append(
            f"| {name} | {s['segments']} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | "
            f"{s['p50_ms'] / p0:.2f}x | {x['commit_median_s']:.2f} / {x['commit_max_s']:.2f} | "
            f"{x.get('commit_cpu_first_third_median_s', float('nan')):.2f} / "
            f"{x.get('commit_cpu_last_third_median_s', float('nan')):.2f} | "
            f"{_load(x.get('build_load'))}; {_load(s.get('load'))} |"
        )
    s = cc["search"]
    md.append(
        f"| no policy, then compact() ({cc['compact_s']:.2f} s, peak RSS "
        f"{cc['peak_rss_mb']:,.0f} MB) | {s['segments']} | {s['p50_ms']:.2f} / "
        f"{s['p99_ms']:.2f} | {s['p50_ms'] / p0:.2f}x | - | - | {_load(s.get('load'))} |"
    )
    if ce:
        md += [
            "",
            f"Re-encoding compaction of the same index (`_inner.compact(reencode=True)`): "
            f"{ce['compact_s']:.2f} s, peak RSS {ce['peak_rss_mb']:,.0f} MB; codes-domain: "
            f"identical results {cc['identical']}.",
        ]
    segs = on["build"].get("segments_after_commit", [])
    if segs:
        md += ["", f"Segments after each commit with the policy: {segs}."]
    md += ["", "Provenance:", ""] + r["provenance"] + [""]
    return md


def _load(x: Any) -> str:
    """A load-average triple as "a / b / c" (a string is kept)."""
    if isinstance(x, (list, tuple)):
        return " / ".join(f"{float(v):.2f}" for v in x)
    return str(x) if x is not None else "-"


def colpali_markdown(saved: dict[str, Any]) -> list[str]:
    """The ColPali-shaped table (benches/bench_colpali.py's rows under "colpali"), or []."""
    rows = sorted(saved.get("colpali", {}).values(), key=lambda r: r["n_tokens"])
    if not rows:
        return []
    md = [
        "",
        "## ColPali-shaped pages",
        "",
        "`python benches/bench_colpali.py` (benches/bench_colpali.py: pages of 1,030 patch "
        "vectors, 128-d, seeded synthetic clustered data from benches/scale_gen.py's "
        "`PageGenerator`, made on the fly; one index grown through the sizes in commits of 1,000 "
        "pages, latix defaults, merge policy on, no compaction). Build time is latix's own, "
        "summed over the sizes so far (generating excluded); peak RSS the largest of the build "
        "children's. Latency: k = 10, one query (20 tokens) at a time. recall@10 against exact "
        "MaxSim on 50 queries; *target in top 10*: the share of queries whose page (each query "
        "is aimed at one) latix / exact MaxSim ranks in the top 10. Add + commit: 1,000 further "
        "pages (1.03M tokens) through a fresh writer handle, wall (process CPU). The peak RSS "
        "includes file-backed pages: the build child calls `Index.stats()` after each commit, "
        "which maps and verifies every inverted-list file (~20 B/token here); each row's "
        "provenance gives the run it comes from.",
        "",
        "| pages | tokens | K | segments | build s (+ generate) | peak RSS MB | bytes/token "
        "| p50 / p99 1T ms | p50 / p99 2T ms | recall@10 vs exact | target in top 10 "
        "(exact) | build tokens/s | open ms | add + commit 1,000 pages s (CPU s) "
        "| largest commit s | load (build; search) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['n_pages']:,} | {r['n_tokens']:,} | {r['n_centroids']} | {r['n_segments']} "
            f"| {r['build_s']:.1f} (+ {r['generate_s']:.1f}) | {r['peak_rss_mb']:,.0f} | "
            f"{r['bytes_per_token']:.1f} | {r['p50_1t_ms']:.2f} / {r['p99_1t_ms']:.2f} | "
            f"{r['p50_2t_ms']:.2f} / {r['p99_2t_ms']:.2f} | {r['recall_at_10_vs_exact']:.3f} | "
            f"{r['target_in_top10']:.2f} ({r['exact_target_in_top10']:.2f}) | "
            f"{r['n_tokens'] / r['build_s']:,.0f} | {r['open_ms']:.1f} | "
            f"{r['add_commit_1000_s']:.2f} ({r['add_commit_1000_cpu_s']:.2f}) | "
            f"{r['commit_s_max']:.1f} | {r['load']['build'][1]}; {r['load']['search'][1]} |"
        )
    names = list(dict.fromkeys(k for r in rows for k in r.get("add_stages", {})))
    if names:
        md += [
            "",
            "Stages of the add + commit of 1,000 pages (`LATIX_PROFILE_COMMIT`), CPU s (wall s):",
            "",
            "| stage | " + " | ".join(r["size"] for r in rows) + " |",
            "| --- | " + " | ".join("---" for _ in rows) + " |",
        ]
        for n in names:
            cells = []
            for r in rows:
                s = r.get("add_stages", {}).get(n)
                cells.append(f"{s['cpu_s']:.2f} ({s['wall_s']:.2f})" if s else "-")
            md.append(f"| {n} | " + " | ".join(cells) + " |")
    f = saved.get("colpali_fit", {})
    if f:
        md += ["", "Fitted growth exponents against tokens (over the rows above):", ""]
        for k, what in (
            ("p50_1t_ms", "p50 latency, 1 thread"),
            ("p50_2t_ms", "p50 latency, 2 threads"),
            ("build_s", "build time"),
            ("add_commit_1000_cpu_s", "add + commit of 1,000 pages, CPU"),
        ):
            if k in f:
                md.append(f"- {what}: exponent **{f[k]['exponent']:.2f}**")
    ex = [r for r in rows if r.get("exact_s")]
    if ex:
        md += [
            "",
            "Exact reference (extended size by size, cached): "
            + "; ".join(f"{r['size']} {r['exact_s']:,.0f} s in all" for r in ex)
            + ".",
        ]
    md += ["", "Provenance of each size:", ""]
    for r in rows:
        md.append(f"*{r['size']}:*")
        md += r["provenance"]
        md.append("")
    return md


def growth_settings(a: argparse.Namespace, n_tokens: int) -> dict[str, int]:
    """The `Compression` growth settings of --expected-tokens / --retrain-growth for a corpus of
    `n_tokens` tokens (empty: latix's defaults)."""
    g: dict[str, int] = {}
    if a.expected_tokens != "none":
        g["expected_tokens"] = n_tokens if a.expected_tokens == "size" else int(a.expected_tokens)
    if a.retrain_growth:
        g["retrain_growth"] = a.retrain_growth
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="2M,3M,10M,30M", help="corpus sizes in tokens")
    ap.add_argument("--data", default=DATA, help="bench data root (scifact/)")
    ap.add_argument("--source", default=SOURCE, help="evaluation collections (qrels)")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/latix/bench-scale"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit-docs", type=int, default=5000, help="documents per commit")
    ap.add_argument("--exact-sample", type=int, default=50, help="queries with exact reference")
    ap.add_argument(
        "--exact-kernel",
        choices=("latix", "numpy"),
        default="latix",
        help="exact reference: latix.maxsim, or a float32 GEMM independent of latix",
    )
    ap.add_argument("--lock", default=None, help="flock this file during each heavy phase")
    ap.add_argument(
        "--lock-per-size",
        action="store_true",
        help="hold --lock for a whole size (exact reference, build and searches) at once",
    )
    ap.add_argument("--keep", action="store_true", help="keep the indexes")
    ap.add_argument(
        "--expected-tokens",
        default="none",
        help="Compression(expected_tokens=...): none (default), size (the corpus size) or a count",
    )
    ap.add_argument(
        "--retrain-growth", type=int, default=0, help="Compression(retrain_growth=...), 0 = off"
    )
    res = ROOT / "bench-results"
    ap.add_argument("--json", default=str(res / "scale.json"))
    ap.add_argument("--md", default=str(res / "scale.md"))
    ap.add_argument("--_build", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_vaswani", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--md-only", action="store_true", help="only rewrite --md from --json (no measuring)"
    )
    a = ap.parse_args()
    if a.md_only:
        saved = json.load(open(a.json))
        saved["fit"] = fits(saved["sizes"])  # for the table only: --json is left as it is
        with open(a.md, "w") as f:
            f.write(markdown(saved))
        return
    os.makedirs(a.work, exist_ok=True)
    if a._build is not None:
        build(
            a._build,
            f"{a.work}/index-{size_name(a._build)}",
            a.data,
            a.source,
            a._vaswani,
            a.seed,
            a.commit_docs,
            growth_settings(a, a._build),
        )
        return
    provenance.print_header()
    a._vaswani = str(scale_gen.vaswani_entry(Path(a.source)))
    pools, ident = scale_gen.load_pools(a.data, a.source, a.seed, Path(a._vaswani))
    saved = json.load(open(a.json)) if os.path.exists(a.json) else {"sizes": {}}
    for s in a.sizes.split(","):
        n = parse_size(s)
        saved["sizes"][size_name(n)] = measure(n, a, pools, ident)
        saved["fit"] = fits(saved["sizes"])
        with open(a.json + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
        with open(a.md + ".tmp", "w") as f:
            f.write(markdown(saved))
        os.replace(a.md + ".tmp", a.md)
    f = saved["fit"]
    if f:
        print("\nfitted growth exponents against tokens (log-log least squares):")
        for k in [k for k in ("p50_1t_ms", "p50_2t_ms", "build_s", "peak_rss_mb") if k in f]:
            print(
                f"  {k}: {f[k]['exponent']:.3f} (projected at 100M tokens: {f[k]['at_100m']:,.1f})"
            )


if __name__ == "__main__":
    main()
