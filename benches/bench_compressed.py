"""Benchmark of latix's compressed index (codec + inverted lists + WARP-style search) against exact
exhaustive MaxSim, on SciFact alone and on SciFact + 100k distractors (benches/make_distractors.py).

One command: `python benches/bench_compressed.py` prints a table per corpus. Everything goes
through the product API: `latix.Index.create(..., compression=latix.Compression(...))`, documents
added in chunks of at most 20k with one commit per chunk (the first commit trains the codec), and
`Index.search`. Indexes built per corpus: the default one (`keep_vectors=False`, codes
only: its build time, peak memory and size are the headline figures), one with
`keep_vectors=True` for the exact re-rank row, and one per fidelity tier of --tiers
(`Compression(fidelity=...)`, default balanced and high). Query encoding is excluded
(pre-encoded query vectors); queries run one at a time. Each build runs in a child process so
that its peak memory (max RSS) is measured on its own; input vectors are read in chunks (not
memory-mapped) so the figure is the builder's, not the page cache's. Sizes are
`Index.stats()["bytes_on_disk"]`: every
file of the committed index.

Data: a data root (--data, default $LATIX_BENCH_DATA or ~/.cache/latix/bench) holding scifact/
(SciFact encoded with the default model, written by benches/prepare_bench_data.py) and
distractors/ (benches/make_distractors.py); qrels from <source>/scifact/qrels/test.tsv (--source,
default $LATIX_DATA or ../shared/data); indexes and the cached exact reference under --work
(default <data>/bench-compressed). `make bench-compressed` runs all three steps.

Checks before anything is measured: the distractor corpus must have been made with
benches/make_distractors.py's default parameters (params.json) and every file must match the
checksums it recorded (checksums.json). The cached exact top 100 is keyed by a checksum of every
input (document vectors, offsets and ids of each part, query vectors and ids); a cache whose key
differs is recomputed. When it is loaded, every query's cached top 10 is re-scored from the
document vectors in numpy float64 and must match (ids, scores, order), and the timed exact
searches (first --exact-queries queries) must return the cached top 10. The output starts with
the run's provenance (benches/provenance.py): command, commit, CPU, MaxSim kernel, date, load.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import provenance
from checksums import combined, digests, file_digest

DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")
SOURCE = os.environ.get("LATIX_DATA") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"
)
SCIFACT = os.path.join(DATA, "scifact")
DISTRACTORS = os.path.join(DATA, "distractors")
QRELS = os.path.join(SOURCE, "scifact", "qrels", "test.tsv")
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


def compression(corpus: str, keep_vectors: bool, seed: int, fidelity: str = "codes") -> Any:
    """The index configuration: K chosen for the corpus's final size (the codec is trained at the
    first commit, which holds SciFact only, so the automatic K would fit 1.2M tokens, not 14M),
    codec default code size, the default training threshold and sample."""
    import latix

    n_tokens = sum(
        int(np.load(d + "/doc_offsets.npy")[b] - np.load(d + "/doc_offsets.npy")[a])
        for d, a, b in chunks(corpus)
    )
    # The codec's automatic default (power of two nearest 3 * sqrt(vectors)) for the corpus's
    # final number of stored vectors, i.e. after pooling by the default factor 2.
    k = 1 << round(np.log2(3 * np.sqrt(n_tokens / 2)))
    # The codec's training sample: the library default unless a study sets it
    # (--train-sample-tokens, passed to the build children through the environment).
    sample = os.environ.get("LATIX_BENCH_TRAIN_SAMPLE")
    extra = {"train_sample_tokens": int(sample)} if sample else {}
    return latix.Compression(
        n_centroids=k, keep_vectors=keep_vectors, seed=seed, fidelity=fidelity, **extra
    )


def index_name(corpus: str, keep: bool, fidelity: str = "codes") -> str:
    """File name of a benchmark index: `<corpus>-keep0` / `-keep1`, or `<corpus>-<tier>`."""
    return f"{corpus}-keep{int(keep)}" if fidelity == "codes" else f"{corpus}-{fidelity}"


def build(corpus: str, out: str, seed: int, keep_vectors: bool, fidelity: str = "codes") -> None:
    """Child process: the product path. Creates a compressed index and adds the corpus in chunks
    of at most 20k documents, one commit per chunk (the first commit trains the codec; later ones
    encode their documents with it)."""
    import latix

    t0 = time.time()
    if os.path.exists(out):
        shutil.rmtree(out)
    ix = latix.Index.create(
        out, dim=384, compression=compression(corpus, keep_vectors, seed, fidelity)
    )
    commits = []
    for d, a, b in chunks(corpus):
        off = np.load(d + "/doc_offsets.npy")
        ids = json.load(open(d + "/doc_ids.json"))[a:b]
        x = read_rows(d + "/docs_vectors.npy", int(off[a]), int(off[b]))
        docs = np.split(x, (off[a + 1 : b] - off[a]).astype(np.int64))
        ix.add(ids, docs)
        del x, docs
        t = time.time()
        ix.commit()
        commits.append(time.time() - t)
    st = ix.stats()
    ix.close()
    info = {
        "build_s": time.time() - t0,
        "first_commit_s": commits[0],
        "commit_s": commits,
        # This build's own peak resident memory (Linux reports KiB).
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **st,
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f)


def check_distractors() -> str:
    """Checks the distractor corpus itself: made with make_distractors.py's default parameters,
    every file matching the checksums recorded when it was written. Returns a one-line summary
    (for the table header); exits on a mismatch."""
    from make_distractors import DATA_FILES, default_params

    try:
        with open(DISTRACTORS + "/params.json") as f:
            params = json.load(f)
        with open(DISTRACTORS + "/checksums.json") as f:
            recorded = json.load(f)
    except OSError as e:
        raise SystemExit(
            f"{DISTRACTORS}: {e}; run `python benches/make_distractors.py` (it records "
            "params.json and checksums.json)"
        ) from None
    if params != default_params():
        raise SystemExit(
            f"{DISTRACTORS}/params.json is {params}, not make_distractors.py's defaults "
            f"{default_params()}: rebuild with `python benches/make_distractors.py --force`"
        )
    t = time.time()
    got = digests(DISTRACTORS, DATA_FILES)
    if got != recorded:
        bad = [n for n in DATA_FILES if got[n] != recorded.get(n)]
        raise SystemExit(f"{DISTRACTORS}: {bad} differ from checksums.json: rebuild (--force)")
    print(f"distractor corpus checked: params and checksums ({time.time() - t:.0f} s)")
    return (
        f"distractor corpus: make_distractors.py defaults {json.dumps(params)}, "
        f"docs_vectors.npy blake2b-128 {got['docs_vectors.npy']}"
    )


DOC_FILES = ("docs_vectors.npy", "doc_offsets.npy", "doc_ids.json")
QUERY_FILES = ("query_vectors.npy", "query_offsets.npy", "query_ids.json")


def input_key(corpus: str) -> str:
    """Checksum of everything the exact reference depends on: each part's document vectors,
    offsets and ids, the chunking, the test queries' vectors, offsets and ids, and k."""
    key: list[object] = []
    for d in parts(corpus):
        if d == DISTRACTORS:
            with open(d + "/checksums.json") as f:
                sums = json.load(f)  # verified against the files by check_distractors()
        else:
            sums = digests(d, DOC_FILES)
        key.append([os.path.basename(d), [sums[n] for n in DOC_FILES]])
    key.append([[os.path.basename(d), a, b] for d, a, b in chunks(corpus)])
    key.append([file_digest(f"{SCIFACT}/{n}") for n in QUERY_FILES])
    key.append({"k": 100, "format": 2})
    return combined(key)


def load_qrels() -> dict[str, dict[str, int]]:
    q: dict[str, dict[str, int]] = {}
    for row in list(csv.reader(open(QRELS), delimiter="\t"))[1:]:
        q.setdefault(row[0], {})[row[1]] = int(row[2])
    return q


#: --lock FILE: the timed phases (exact latency, each variant's searches) hold an exclusive
#: flock on it, released between phases (builds and the exact reference run outside it).
LOCK: str | None = None


@contextlib.contextmanager
def timed_phase(what: str) -> Iterator[None]:
    """Holds the --lock file (if any) for one timed phase; prints the wait and the hold."""
    if LOCK is None:
        yield
        return
    t = time.time()
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        got = time.time()
        print(f"[lock] {what}: acquired after {got - t:.0f} s", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            print(
                f"[lock] {what}: released after {time.time() - got:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.array(x) * 1000, p))


def run(
    corpus: str,
    work: str,
    seed: int,
    exact_queries: int,
    nprobe: int | None,
    refine: int | None,
    tiers: list[str],
    with_keep: bool = True,
    reuse: bool = False,
) -> None:
    import ir_measures
    import latix
    from ir_measures import R, nDCG

    # The corpus itself first: a wrong distractor corpus leaves exact SciFact metrics unchanged,
    # so only its parameters and checksums can tell.
    corpus_line = check_distractors() if corpus == "distractors" else "SciFact documents only"
    wall: dict[Any, float] = {}

    def path_of(kind: Any) -> str:
        if isinstance(kind, str):
            return f"{work}/{index_name(corpus, False, kind)}"
        return f"{work}/{index_name(corpus, kind)}"

    # Index keys: False (codes only), True (kept vectors, unless `with_keep` is off), then each
    # fidelity tier by name.
    keys: list[Any] = [False, *([True] if with_keep else []), *tiers]
    for kind in keys:
        t0 = time.time()
        if reuse and os.path.exists(path_of(kind) + ".json"):
            # The build's own record (its wall time, taken in the child).
            wall[kind] = json.load(open(path_of(kind) + ".json"))["build_s"]
            continue
        cmd = [sys.executable, __file__, "--_build", corpus, "--work", work, "--seed", str(seed)]
        # Each build is its own child process, which records its own peak memory.
        if kind is True:
            cmd.append("--_keep")
        elif isinstance(kind, str):
            cmd += ["--_fidelity", kind]
        subprocess.run(cmd, check=True)
        wall[kind] = time.time() - t0

    info = {kind: json.load(open(path_of(kind) + ".json")) for kind in keys}
    peak_mb = {kind: info[kind]["peak_rss_mb"] for kind in keys}
    ixs = {kind: latix.Index.open(path_of(kind)) for kind in keys}
    n_tok = info[False]["n_tokens"]
    # Full vectors (memory-mapped f16) per part, for the exact baseline.
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

    def compressed(
        i: int, k: int, threads: int, key: Any, refine: int | None
    ) -> list[tuple[float, str]]:
        q = Q[qo[i] : qo[i + 1]]
        # A tier re-ranks from its refinement data by default (rerank=None).
        rerank = None if isinstance(key, str) else key
        s, h = ixs[key].search(
            q, k=k, n_threads=threads, nprobe=nprobe, rerank=rerank, refine=refine
        )
        return [(float(x), str(d)) for x, d in zip(s[0], h[0], strict=True) if d]

    def exact(i: int, k: int, threads: int) -> list[tuple[float, str]]:
        q = Q[qo[i] : qo[i + 1]]
        hits: list[tuple[float, str]] = []
        for (v, o), idl in zip(full, ids, strict=True):
            s = latix.maxsim(q, v, o, n_threads=threads)
            top = np.argsort(-s, kind="stable")[:k]
            hits += [(float(s[j]), idl[j]) for j in top]
        return sorted(hits, key=lambda h: -h[0])[:k]

    rows = []
    # Exact reference (top 100 of every query): computed once per corpus and cached next to the
    # benchmark indexes (it takes ~25 min for the 14M-token corpus); its latency is timed afresh
    # in this run on the first `exact_queries` queries, with 1 and 2 threads.
    # The cache is keyed by a checksum of every input; a different key means other data.
    ref_path = f"{work}/{corpus}-exact-top100.json"
    t = time.time()
    key = input_key(corpus)
    key_s = time.time() - t
    ref = json.load(open(ref_path)) if os.path.exists(ref_path) else None
    cached = ref is not None and ref.get("key") == key and len(ref["ids"]) == nq
    if not cached:
        ref = {"key": key, "ids": [], "scores": []}
        for i in range(nq):
            hits = exact(i, 100, 2)
            ref["ids"].append([h[1] for h in hits])
            ref["scores"].append([h[0] for h in hits])
        with open(ref_path + ".tmp", "w") as f:
            json.dump(ref, f)
        os.replace(ref_path + ".tmp", ref_path)
    assert ref is not None
    # Every query's top 10, re-scored independently: numpy float64 MaxSim over the f16 vectors
    # of each cached document must give the cached score, in non-increasing order.
    where = {doc: (p, j) for p, idl in enumerate(ids) for j, doc in enumerate(idl)}
    for i in range(nq):
        q64 = Q[qo[i] : qo[i + 1]].astype(np.float64)
        top_ids, top_s = ref["ids"][i][:10], ref["scores"][i][:10]
        assert len(set(top_ids)) == len(top_ids) == min(10, len(where)), f"query {i}: ids"
        assert all(np.diff(top_s) <= 0), f"query {i}: cached order"
        for doc, sc in zip(top_ids, top_s, strict=True):
            p, j = where[doc]
            v, o = full[p]
            x = np.asarray(v[o[j] : o[j + 1]], dtype=np.float64)
            want = float((q64 @ x.T).max(axis=1).sum())
            assert abs(want - sc) <= 1e-3, f"query {i}, {doc}: cached {sc} vs float64 {want}"
    n_ex = min(nq, exact_queries)
    exact_top10 = {i: set(ref["ids"][i][:10]) for i in range(nq)}
    exact_run = {
        qids[i]: dict(zip(ref["ids"][i], ref["scores"][i], strict=True)) for i in range(nq)
    }
    lat_ex: dict[int, list[float]] = {1: [], 2: []}
    lock_ex = timed_phase("exact latency")
    lock_ex.__enter__()
    for i in range(n_ex):
        for th in (1, 2):
            t = time.perf_counter()
            hits = exact(i, 100, th)
            lat_ex[th].append(time.perf_counter() - t)
        # This run's full scan returns the cached top 10 (positions may swap only between
        # equal scores).
        got_ids, got_s = [h[1] for h in hits[:10]], [h[0] for h in hits[:10]]
        np.testing.assert_allclose(got_s, ref["scores"][i][:10], rtol=0, atol=1e-5)
        for pos, (g, w) in enumerate(zip(got_ids, ref["ids"][i][:10], strict=True)):
            if g != w:  # only a swap of equal scores: w is elsewhere with the same score
                assert any(h[1] == w and abs(h[0] - got_s[pos]) < 1e-6 for h in hits[:10]), (
                    f"query {i}: exact top 10 differs from the cached reference at {pos}"
                )
    lock_ex.__exit__(None, None, None)
    sub_qrels = {q: qrels[q] for q in qids if q in qrels}
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
    # Compressed rows: quality of what a user asking for k = 10 gets (nDCG@10, recall@10 against
    # the exact top 10) and R@100 from k = 100 searches; latency of k = 10 searches, one query at
    # a time, with 1 and 2 threads, after a warm-up pass.
    variants = [
        ("compressed, codes only (keep_vectors=False)", False, refine),
        ("compressed, codes only, candidate generation alone (refine=0)", False, 0),
    ]
    if with_keep:
        variants.append(("compressed + exact re-rank (keep_vectors=True, f16)", True, refine))
    variants += [(f'compressed, fidelity="{t}" (tier re-rank)', t, refine) for t in tiers]
    for name, rerank, ref_n in variants:
        with timed_phase(name):
            # One untimed pass first: the figures are steady-state latency, not the first touch of
            # each page of the lists (and, with kept vectors, the first verification of each 1 MB
            # block of vectors a re-rank reads).
            for i in range(nq):
                compressed(i, 10, 1, rerank, ref_n)
            run10: dict[str, dict[str, float]] = {}
            run100: dict[str, dict[str, float]] = {}
            lat: dict[int, list[float]] = {1: [], 2: []}
            rec = []
            for i in range(nq):
                for th in (1, 2):
                    t = time.perf_counter()
                    hits = compressed(i, 10, th, rerank, ref_n)
                    lat[th].append(time.perf_counter() - t)
                run10[qids[i]] = {h[1]: h[0] for h in hits}
                rec.append(len({h[1] for h in hits} & exact_top10[i]) / 10)
                run100[qids[i]] = {h[1]: h[0] for h in compressed(i, 100, 2, rerank, ref_n)}
            ev10 = ir_measures.calc_aggregate([nDCG @ 10], sub_qrels, run10)
            ev100 = ir_measures.calc_aggregate([R @ 100], sub_qrels, run100)
            bpt = info[rerank]["bytes_on_disk"] / n_tok
            rows.append(
                (
                    name,
                    bpt,
                    ev10[nDCG @ 10],
                    ev100[R @ 100],
                    float(np.mean(rec)),
                    pct(lat[1], 50),
                    pct(lat[1], 99),
                    pct(lat[2], 50),
                    pct(lat[2], 99),
                )
            )
    # Adding 1,000 documents to each trained index: one add + commit (encoding with the
    # existing codec, new segment + its inverted lists, atomic publish), under new ids, then
    # deleted again; three times, the median reported (a commit fsyncs, and right after the
    # builds the disk may still be writing back gigabytes of them).
    d, a, b = chunks(corpus)[-1]
    off = np.load(d + "/doc_offsets.npy")
    b = min(b, a + 1000)
    x = read_rows(d + "/docs_vectors.npy", int(off[a]), int(off[b]))
    docs = np.split(x, (off[a + 1 : b] - off[a]).astype(np.int64))
    add_s: dict[Any, float] = {}
    add_all: dict[Any, str] = {}
    for keep in keys:
        ixs[keep].close()
        add_runs: list[float] = []
        for _ in range(3):
            with latix.Index.open(path_of(keep), "w") as w:
                t = time.perf_counter()
                w.add([f"added-{j}" for j in range(len(docs))], docs)
                w.commit()
                add_runs.append(time.perf_counter() - t)
                # Leave the benchmark index as it was built.
                w.delete([f"added-{j}" for j in range(len(docs))])
                w.commit()
        add_s[keep] = sorted(add_runs)[1]
        add_all[keep] = " / ".join(f"{r:.2f}" for r in add_runs)
    i0 = info[False]
    print(f"\n{corpus_line}")
    print(
        f"exact reference: {'cached' if cached else 'computed in this run'}, key {key} "
        f"(checksum of every input, {key_s:.0f} s); all {nq} queries' cached top 10 re-scored in "
        f"float64 and matched; the {n_ex} timed full scans returned the cached top 10"
    )
    print(
        f"\n## {corpus}: {n_tok:,} tokens, K = {i0['n_centroids']}, "
        f"{i0['code_bytes_per_token']} B/token of codes, nprobe = {nprobe or 'auto'}, "
        f"refine = {'auto' if refine is None else refine}"
    )
    print(
        f"build (codes only) {wall[False]:.1f} s wall ({len(i0['commit_s'])} commits, first "
        f"(training) commit {i0['first_commit_s']:.1f} s), peak build memory "
        f"{peak_mb[False]:,.0f} MB; "
        + (
            f"build with kept vectors {wall[True]:.1f} s, peak {peak_mb[True]:,.0f} MB; "
            if with_keep
            else ""
        )
        + f"adding 1,000 docs ({x.shape[0]:,} tokens, add + commit, "
        f"median of 3): {add_s[False]:.2f} s codes only ({add_all[False]})"
        + (f", {add_s[True]:.2f} s with kept vectors ({add_all[True]})" if with_keep else "")
        + f"; quality over all {nq} test queries (nDCG@10 and "
        f"recall@10 of k = 10 searches, R@100 of k = 100); latency of k = 10 searches after a "
        f"warm-up pass; exact latency over the first {n_ex}"
    )
    for t in tiers:
        print(
            f'fidelity="{t}": build {wall[t]:.1f} s wall, peak build memory {peak_mb[t]:,.0f} MB, '
            f"adding 1,000 docs {add_s[t]:.2f} s ({add_all[t]})"
        )
    print(
        "| method | bytes/token on disk | nDCG@10 | R@100 | recall@10 vs exact | p50 1T ms "
        "| p99 1T ms | p50 2T ms | p99 2T ms | p50 1T speed-up vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.3f} | {r[5]:.2f} | "
            f"{r[6]:.2f} | {r[7]:.2f} | {r[8]:.2f} | {rows[0][5] / r[5]:,.0f}x |"
        )
    print(f"load average (1 / 5 / 15 min) at the end: {provenance.load_average()}")
    sys.stdout.flush()
    keys = ("bytes_per_token", "ndcg_at_10", "r_at_100", "recall_at_10_vs_exact")
    keys += ("p50_1t_ms", "p99_1t_ms", "p50_2t_ms", "p99_2t_ms")
    RESULTS[corpus] = {
        "provenance": provenance.lines(),
        "n_tokens": n_tok,
        "n_centroids": i0["n_centroids"],
        "build_s": {
            "codes": wall[False],
            **({"keep_vectors": wall[True]} if with_keep else {}),
            **{t: wall[t] for t in tiers},
        },
        "peak_build_mb": {
            "codes": peak_mb[False],
            **({"keep_vectors": peak_mb[True]} if with_keep else {}),
            **{t: peak_mb[t] for t in tiers},
        },
        "add_1000_docs_s": {
            "codes": add_s[False],
            **({"keep_vectors": add_s[True]} if with_keep else {}),
            **{t: add_s[t] for t in tiers},
        },
        "rows": [{"method": r[0], **dict(zip(keys, r[1:], strict=True))} for r in rows],
    }


#: Each corpus's figures, written to --json (read by benches/plots.py for the docs' figures).
RESULTS: dict[str, Any] = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", choices=["scifact", "distractors", "all"], default="all")
    ap.add_argument("--data", default=DATA, help="bench data root (scifact/, distractors/)")
    ap.add_argument("--source", default=SOURCE, help="evaluation collections (qrels)")
    ap.add_argument("--work", default=None, help="indexes (default: <data>/bench-compressed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument(
        "--refine", type=int, default=None, help="documents re-scored from all their codes"
    )
    ap.add_argument(
        "--exact-queries",
        type=int,
        default=20,
        help="queries whose exact search is timed in this run (the exact top 100 of all "
        "queries is computed once and cached)",
    )
    ap.add_argument(
        "--json",
        default=os.path.join(os.path.dirname(__file__), "..", "bench-results", "compressed.json"),
        help="figures of each corpus run, merged into this file (default: %(default)s)",
    )
    ap.add_argument(
        "--tiers",
        default="balanced,high",
        help="fidelity tiers benchmarked beside codes only and kept vectors (comma-separated, "
        "empty for none)",
    )
    ap.add_argument(
        "--codes-only",
        action="store_true",
        help="only the codes-only index and its rows (no kept vectors, no tiers): the codec "
        "seed study, e.g. `--codes-only --seed 1`",
    )
    ap.add_argument(
        "--no-keep-vectors",
        action="store_true",
        help="no kept-vectors index and row (the tiers of --tiers still run)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="search the indexes already under --work (built by an earlier run or by "
        "tune_compressed.py with the same seed and options) instead of building them",
    )
    ap.add_argument(
        "--train-sample-tokens",
        type=int,
        default=None,
        help="tokens sampled to train the codec (default: the library's)",
    )
    ap.add_argument(
        "--lock",
        default=None,
        help="hold an exclusive flock on this file around each timed phase only (a shared "
        "machine's benchmark lock)",
    )
    ap.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_keep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_fidelity", default="codes", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global SCIFACT, DISTRACTORS, QRELS, LOCK
    LOCK = a.lock
    os.environ["LATIX_BENCH_DATA"] = os.path.abspath(a.data)  # the build children inherit it
    if a.train_sample_tokens:
        os.environ["LATIX_BENCH_TRAIN_SAMPLE"] = str(a.train_sample_tokens)
    SCIFACT, DISTRACTORS = os.path.join(a.data, "scifact"), os.path.join(a.data, "distractors")
    QRELS = os.path.join(a.source, "scifact", "qrels", "test.tsv")
    a.work = a.work or os.path.join(a.data, "bench-compressed")
    if a._build:
        name = index_name(a._build, a._keep, a._fidelity)
        build(a._build, f"{a.work}/{name}", a.seed, a._keep, a._fidelity)
        return
    provenance.print_header()
    corpora = ["scifact", "distractors"] if a.corpus == "all" else [a.corpus]
    for d in parts(corpora[-1]):
        if not os.path.exists(d + "/doc_offsets.npy"):
            raise SystemExit(f"{d} has no data: run `make bench-compressed` (or its steps) first")
    for c in corpora:
        tiers = [] if a.codes_only else [t for t in a.tiers.split(",") if t]
        keep = not (a.codes_only or a.no_keep_vectors)
        run(c, a.work, a.seed, a.exact_queries, a.nprobe, a.refine, tiers, keep, a.reuse)
        # Merged per corpus, so `--corpus scifact` then `--corpus distractors` keeps both.
        saved = json.load(open(a.json)) if os.path.exists(a.json) else {}
        saved[c] = RESULTS[c]
        with open(a.json + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
