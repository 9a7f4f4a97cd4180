"""Benchmark of latix.Collection, the product API: retrieval quality of late / keyword / hybrid
search, filtered search at every selectivity, and indexing throughput against the encoder alone.

One command, ``python benches/bench_collection.py`` (``--only quality tune filtered throughput``
picks parts), prints markdown tables and writes them with the raw figures to
``bench-results/collection.md`` / ``collection.json``. Timed parts take the shared benchmark lock
(``/work/team/bench.lock``, or ``$LATIX_BENCH_LOCK``) only while timing; latency is measured one
query at a time on one thread, after a warm-up pass.

Parts:

* ``quality``: SciFact and Vaswani collections built the way ``latix index`` builds them
  (``Collection.create`` defaults: compressed ``"auto"``, long texts split into passages,
  ``index_corpus`` committing every 1,000 records), from cached encodings: nDCG@10 and R@100 of
  ``late``, ``keyword`` (FTS5 BM25) and ``hybrid`` (the defaults of
  ``latix.collection.HYBRID_DEFAULTS``) on the test queries, next to exact MaxSim over the same
  passages (a plain collection).
* ``tune``: the fusion grid (convex alpha, reciprocal-rank k, depth) on SciFact's 809 *train*
  queries (qrels/train.tsv): how the hybrid default was chosen.
* ``filtered``: SciFact + 100k distractors (benches/make_distractors.py) in one compressed
  collection, a seeded ``bucket`` field making filters of 50 / 10 / 1 / 0.1 / 0.01 %: p50/p99 of
  ``Collection.search`` (query vectors given; text and metadata fetched) and recall@10 against
  exact MaxSim over the filtered set, next to the unfiltered search of the same run; masks warm
  (the same filter for every query, as a service's common filters) and cold (rebuilt for every
  query); and the exhaustive-versus-probing switch point (allowed-set sizes 10 to 30,000).
* ``filtered-balanced`` (not run by default): the same on a collection with the balanced
  fidelity tier (``latix.Compression(fidelity="balanced")``); ``filtered-keep``: with kept f16
  vectors.
* ``throughput``: ``index_corpus`` with live encoding (what ``latix index`` runs) against the
  encoder alone on the same passages, on the first 600 SciFact documents, alternated, median.

Encodings come from latix.eval.EmbeddingCache (``$LATIX_CACHE_DIR``, shared): documents that fit
one passage reuse the cached document encodings; passages of longer documents are encoded once
into the cache. Collections and the exact reference are kept under --work (default
~/.cache/latix/coll).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("LATIX_DATA") or ROOT / ".." / "shared" / "data")
DATA = Path(os.environ.get("LATIX_BENCH_DATA") or Path.home() / ".cache" / "latix" / "bench")
WORK = Path.home() / ".cache" / "latix" / "coll"
LOCK = os.environ.get("LATIX_BENCH_LOCK", "/work/team/bench.lock")
SETS = {
    "scifact": ("scifact/corpus.jsonl.gz", "scifact/queries.jsonl", "scifact/qrels/test.tsv"),
    "vaswani": ("vaswani/doc-text.trec", "vaswani/query-text.trec", "vaswani/qrels"),
}
SELECTIVITIES = [0.5, 0.1, 0.01, 0.001, 0.0001]
# The filtered-search depths of rust/core/src/compressed/search/mod.rs (the table's caption).
FILTERED_REFINE, FILTERED_DEPTH, FILTERED_DEPTH_BROAD, EXHAUSTIVE_REFINE_ALL = 32, 384, 256, 128
REBUILD = False  # --rebuild: build collections again even if a previous run left them


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """The team's benchmark lock, held while timing (no two timed runs overlap)."""
    if not os.path.exists(os.path.dirname(LOCK) or "."):
        yield
        return
    with open(LOCK, "a") as f:
        t = time.time()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.time() - t
        if waited > 1:
            print(f"  (waited {waited:.0f} s for the benchmark lock)", file=sys.stderr)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(x, dtype=np.float64), p))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ data


def load_set(name: str) -> tuple[list[Any], dict[str, str], dict[str, dict[str, int]]]:
    from latix.corpus import read_corpus, read_qrels, read_queries

    c, q, r = SETS[name]
    docs = list(read_corpus(SOURCE / c))
    queries = read_queries(SOURCE / q)
    qrels = read_qrels(SOURCE / r)
    return docs, queries, qrels


def query_vectors(
    encoder: Any, cache: Any, queries: dict[str, str], qrels: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Judged queries' vectors through the embedding cache (queries.jsonl order)."""
    qids = [q for q in queries if q in qrels]
    v, o = cache.get_or_compute(encoder, qids, [queries[q] for q in qids], "query")
    return {q: np.asarray(v[o[i] : o[i + 1]], dtype=np.float32) for i, q in enumerate(qids)}


def passage_vectors(name: str, docs: list[Any], encoder: Any, cache: Any) -> dict[str, Any]:
    """Per document id, its passages' vectors as the collection would compute them: the cached
    document encoding when the text fits one passage, else each passage's (cached) encoding."""
    from latix.collection import Passages, _Splitter

    ids, texts = [d.id for d in docs], [d.text for d in docs]
    dv, do = cache.get_or_compute(encoder, ids, texts)
    cuts = _Splitter(encoder, Passages()).split(texts)
    pids, ptexts = [], []
    for d, (sp, _) in zip(docs, cuts, strict=True):
        for j, (a, b) in enumerate(sp or []):
            pids.append(f"{d.id}#{j}")
            ptexts.append(d.text[a:b])
    entry = cache.entry_dir(encoder, "document", pids, ptexts)
    if not (entry / "offsets.npy").is_file():
        log(f"{name}: encoding {len(ptexts)} passages of {sum(1 for c in cuts if c[0])} long docs")
    t0 = time.time()
    done = [0]

    def prog(n: int) -> None:
        done[0] += n
        if done[0] % 1024 < n:
            log(f"  {name} passages: {done[0]}/{len(ptexts)} ({time.time() - t0:.0f} s)")

    pv, po = cache.get_or_compute(encoder, pids, ptexts, progress=prog) if pids else (None, None)
    out: dict[str, Any] = {}
    k = 0
    for i, (d, (sp, _)) in enumerate(zip(docs, cuts, strict=True)):
        if sp is None:
            out[d.id] = np.asarray(dv[do[i] : do[i + 1]])
        else:
            assert pv is not None and po is not None
            out[d.id] = [np.asarray(pv[po[k + j] : po[k + j + 1]]) for j in range(len(sp))]
            k += len(sp)
    return out


def build_like_latix_index(
    out: Path, docs: list[Any], vecs: dict[str, Any], encoder: Any, compression: Any
) -> tuple[Any, float]:
    """A collection built through the code path of `latix index` (defaults), from vectors."""
    from latix.collection import Collection, index_corpus, remove_collection

    marker = out.with_name(out.name + ".built.json")
    if marker.is_file() and Collection.exists(out) and not REBUILD:
        return Collection.open(out, encoder=encoder), json.loads(marker.read_text())["build_s"]
    marker.unlink(missing_ok=True)
    remove_collection(out)
    t0 = time.time()
    col = Collection.create(out, encoder=encoder, compression=compression)
    index_corpus(col, docs, commit_every=1000, vectors_fn=lambda b: [vecs[d.id] for d in b])
    build_s = time.time() - t0
    marker.write_text(json.dumps({"build_s": build_s}))
    return col, build_s


# ------------------------------------------------------------------------------------ quality


def quality(encoder: Any, cache: Any, results: dict[str, Any]) -> list[str]:
    from latix.eval import evaluate_collection

    lines = [
        "| collection | mode | index | nDCG@10 | R@100 | MRR@10 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in SETS:
        docs, queries, qrels = load_set(name)
        qv = query_vectors(encoder, cache, queries, qrels)
        vecs = passage_vectors(name, docs, encoder, cache)
        n_pass = sum(len(v) if isinstance(v, list) else 1 for v in vecs.values())
        col, build_s = build_like_latix_index(WORK / f"{name}-auto", docs, vecs, encoder, "auto")
        exact, _ = build_like_latix_index(WORK / f"{name}-exact", docs, vecs, encoder, None)
        st = col.stats()
        results.setdefault("quality", {})[name] = {
            "docs": len(docs),
            "passages": n_pass,
            "build_s": build_s,
            "index_bytes_per_token": st["index_bytes_per_token"],
            "index": st["index"],
        }
        rows = [("late", exact, "exact (plain)"), ("late", col, "compressed")]
        rows += [("keyword", col, "FTS5 BM25"), ("hybrid", col, "compressed + BM25")]
        for mode, c, what in rows:
            res = evaluate_collection(c, queries, qrels, mode=mode, depth=100, query_vectors=qv)
            m = res.metrics
            results["quality"][name][f"{mode}/{what}"] = m
            lines.append(
                f"| {name} ({len(docs)} docs, {n_pass} passages) | {mode} | {what} | "
                f"{m['nDCG@10']:.4f} | {m['Recall@100']:.4f} | {m['MRR@10']:.4f} |"
            )
            log(lines[-1])
        exact.close()
        col.close()
    return lines


# ------------------------------------------------------------------------------------ tuning


def tune(encoder: Any, cache: Any, results: dict[str, Any]) -> list[str]:
    """The fusion grid on SciFact's train queries (the test queries are never used here)."""
    from latix.collection import Collection, _fts_query, _fuse
    from latix.corpus import read_qrels
    from latix.eval import score_run

    docs, queries, _ = load_set("scifact")
    train = read_qrels(SOURCE / "scifact" / "qrels" / "train.tsv")
    qv = query_vectors(encoder, cache, queries, train)
    path = WORK / "scifact-auto"
    if not Collection.exists(path):
        vecs = passage_vectors("scifact", docs, encoder, cache)
        build_like_latix_index(path, docs, vecs, encoder, "auto")[0].close()
    col = Collection.open(path, encoder=encoder)
    depth_max = 400
    gen, n_passages = col.index.generation_and_len()
    late: dict[str, list[tuple[int, float, int]]] = {}
    kw: dict[str, list[tuple[int, float]]] = {}
    for q, v in qv.items():
        late[q] = col._late([v], depth_max, None, None, 1, {}, gen, n_passages)[0]
        kw[q] = col._store.keyword(_fts_query(queries[q]), depth_max, gen)
    rk2id = {
        rk: r.id
        for rk, r in col._store.by_key(
            sorted(
                {rk for x in late.values() for rk, _, _ in x}
                | {rk for x in kw.values() for rk, _ in x}
            )
        ).items()
    }

    def run_of(fn: Any) -> dict[str, dict[str, float]]:
        return {q: {rk2id[rk]: s for rk, s in fn(q)} for q in qv}

    base = {
        "late": score_run(run_of(lambda q: [(rk, s) for rk, s, _ in late[q][:100]]), train),
        "keyword": score_run(run_of(lambda q: kw[q][:100]), train),
    }
    grid = []
    for depth in (50, 100, 200, 400):
        for fusion, params in [
            ("convex", {"alpha": a}) for a in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
        ] + [("rrf", {"rrf_k": c}) for c in (10, 30, 60)]:
            hp = {"fusion": fusion, "alpha": 0.7, "rrf_k": 60, "depth": depth, **params}
            run = run_of(
                lambda q, hp=hp, depth=depth: [
                    (r[0], r[1]) for r in _fuse(late[q][:depth], kw[q][:depth], 100, hp)
                ]
            )
            m = score_run(run, train)
            grid.append((m["nDCG@10"], hp, m))
    grid.sort(key=lambda g: -g[0])
    # The default: the best on train, except that a smaller fusion depth (a cheaper late
    # search) within 0.001 of it is preferred.
    best = grid[0][0]
    chosen = min((g for g in grid if g[0] >= best - 0.001), key=lambda g: (g[1]["depth"], -g[0]))
    results["tune"] = {
        "n_train_queries": len(qv),
        "late": base["late"],
        "keyword": base["keyword"],
        "grid": [{"params": hp, **m} for _, hp, m in grid],
        "chosen": chosen[1],
    }
    lines = [
        f"SciFact train queries: {len(qv)} (qrels/train.tsv); late alone nDCG@10 "
        f"{base['late']['nDCG@10']:.4f}, BM25 alone {base['keyword']['nDCG@10']:.4f}",
        "",
        "| fusion | parameter | depth | nDCG@10 (train) | R@100 (train) |",
        "| --- | --- | --- | --- | --- |",
    ]
    shown = grid[:10]
    shown += [g for g in grid[10:] if g[1]["alpha"] in (0.3, 0.4, 0.8, 0.9)][:6]
    shown += [g for g in grid[10:] if g[1]["fusion"] == "rrf"][:3]
    for nd, hp, m in shown:
        par = f"alpha {hp['alpha']}" if hp["fusion"] == "convex" else f"k {hp['rrf_k']}"
        mark = " (chosen)" if hp == chosen[1] else ""
        lines.append(
            f"| {hp['fusion']}{mark} | {par} | {hp['depth']} | {nd:.4f} | {m['Recall@100']:.4f} |"
        )
    c = chosen[1]
    lines += [
        "",
        f"Chosen (the best on train; a smaller depth within 0.001 of it preferred): "
        f"{c['fusion']} alpha {c['alpha']}, depth {c['depth']}, train nDCG@10 {chosen[0]:.4f} "
        f"(late alone {base['late']['nDCG@10']:.4f}, BM25 alone {base['keyword']['nDCG@10']:.4f}).",
    ]
    col.close()
    return lines


# ------------------------------------------------------------------------------------ filtered


def exact_scores(
    vec_parts: list[tuple[np.ndarray, np.ndarray]], qv: list[np.ndarray]
) -> np.ndarray:
    """Exact MaxSim of every query against every document: (n_queries, n_docs) float32,
    cached under --work (14 min for 300 queries x 105k documents on 2 cores)."""
    import latix

    path = WORK / f"exact-scores-{len(qv)}.npy"
    n_docs = sum(len(o) - 1 for _, o in vec_parts)
    if path.is_file():
        s = np.load(path)
        if s.shape == (len(qv), n_docs):
            return s
    log(f"exact reference: {len(qv)} queries x {n_docs} documents (once, cached in {path})")
    out = np.empty((len(qv), n_docs), np.float32)
    t0 = time.time()
    for i, q in enumerate(qv):
        col = 0
        for v, o in vec_parts:
            s = latix.maxsim(q, v, o)
            out[i, col : col + len(s)] = s
            col += len(s)
        if i % 20 == 0:
            log(f"  exact: {i + 1}/{len(qv)} queries ({time.time() - t0:.0f} s)")
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def filtered_parts() -> tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], int, int]:
    """The cached encodings of SciFact + the 100k distractors: (vectors, offsets, ids) per part,
    the documents and the tokens in all."""
    sci, dis = DATA / "scifact", DATA / "distractors"
    if not (dis / "params.json").is_file():
        raise SystemExit(f"{dis}: run benches/make_distractors.py first")
    parts = []
    for d in (sci, dis):
        parts.append(
            (
                np.load(d / "docs_vectors.npy", mmap_mode="r"),
                np.load(d / "doc_offsets.npy"),
                json.load(open(d / "doc_ids.json")),
            )
        )
    n_docs = sum(len(ids) for _, _, ids in parts)
    n_tokens = sum(int(o[-1]) for _, o, _ in parts)
    return parts, n_docs, n_tokens


def filtered_collection(keep: bool = False, fidelity: str = "codes") -> tuple[Path, int]:
    """Path and K of the filtered part's collection (codes only; ``keep``: f16 vectors kept;
    ``fidelity``: a storage tier), built from the cached encodings when a previous run did not
    finish one. A document's ``bucket`` is ``perm[i]`` of a seed-7 permutation."""
    import latix
    from latix.collection import Collection, remove_collection

    parts, n_docs, n_tokens = filtered_parts()
    perm = np.random.default_rng(7).permutation(n_docs)  # bucket of document i: perm[i]
    name = "keep" if keep else ("auto" if fidelity == "codes" else fidelity)
    path = WORK / f"distractors-{name}"
    # K for the final size, as benches/bench_compressed.py (the first commit holds 1/5 of it).
    k = 1 << round(np.log2(3 * np.sqrt(n_tokens / 2)))
    comp = latix.Compression(n_centroids=k, keep_vectors=keep, fidelity=fidelity)
    ready = Collection.exists(path) and (path / "built.json").is_file()
    if not ready:
        remove_collection(path)
        log(f"building the filtered-search collection: {n_docs} docs, {n_tokens} tokens, K={k}")
        t0 = time.time()
        col = Collection.create(
            path, model=None, dim=384, compression=comp, schema={"bucket": "int"}
        )
        g = 0
        for v, o, ids in parts:
            for a in range(0, len(ids), 20_000):
                b = min(len(ids), a + 20_000)
                x = np.asarray(v[o[a] : o[b]])
                docs = np.split(x, (o[a + 1 : b] - o[a]).astype(np.int64))
                recs = [(ids[i], "", {"bucket": int(perm[g + i - a])}) for i in range(a, b)]
                col.add(recs, vectors=docs)
                g += b - a
                log(f"  added {g}/{n_docs} ({time.time() - t0:.0f} s)")
        (path / "built.json").write_text(json.dumps({"build_s": time.time() - t0}))
        col.close()
    return path, k


def filtered(
    results: dict[str, Any], n_queries: int, keep: bool = False, fidelity: str = "codes"
) -> list[str]:
    import latix.collection as lc
    from latix.collection import Collection

    sci = DATA / "scifact"
    parts, n_docs, n_tokens = filtered_parts()
    qvec = np.load(sci / "query_vectors.npy")
    qoff = np.load(sci / "query_offsets.npy")
    qv = [np.asarray(qvec[qoff[i] : qoff[i + 1]], np.float32) for i in range(len(qoff) - 1)]
    qv = qv[:n_queries]
    perm = np.random.default_rng(7).permutation(n_docs)  # bucket of document i: perm[i]
    path, k = filtered_collection(keep, fidelity)
    col = Collection.open(path)
    st = col.stats()
    exact = exact_scores([(v, o) for v, o, _ in parts], qv)
    # bucket of document j (exact's column order) = perm[j]
    res: dict[str, Any] = {"n_docs": n_docs, "n_tokens": n_tokens, "index": st["index"]}

    all_ids = [x for _, _, ids in parts for x in ids]

    def measure(
        configs: list[tuple[str, Any, np.ndarray | None, int, bool]], nq: int
    ) -> dict[str, dict[str, float]]:
        """Latency and recall@10 of each (name, where, allowed, exhaustive_below, cold mask)
        configuration, interleaved query by query (each query runs every configuration in
        turn), so that all of them see the same machine load."""
        lat: dict[str, list[float]] = {c[0]: [] for c in configs}
        rec: dict[str, list[float]] = {c[0]: [] for c in configs}
        for i, q in enumerate(qv[:nq]):
            for name, where, allowed, below, cold in configs:
                lc.EXHAUSTIVE_BELOW = below
                if cold:
                    col._masks.clear()
                    col._mask_sets.clear()
                    col._mask_set_bytes = 0
                t = time.perf_counter()
                hits = col.search(query_vectors=q, k=10, where=where, n_threads=1)
                lat[name].append((time.perf_counter() - t) * 1e3)
                s = exact[i] if allowed is None else np.where(allowed, exact[i], -np.inf)
                n_ok = int(np.isfinite(s).sum())
                top = np.argsort(-s, kind="stable")[: min(10, n_ok)]
                want = {all_ids[j] for j in top}
                rec[name].append(len({h.id for h in hits} & want) / max(1, len(want)))
        lc.EXHAUSTIVE_BELOW = default_below
        return {
            n: {"p50": pct(lat[n], 50), "p99": pct(lat[n], 99), "recall@10": float(np.mean(rec[n]))}
            for n in lat
        }

    default_below = lc.EXHAUSTIVE_BELOW
    rows = [("unfiltered", None, None)]
    for s in SELECTIVITIES:
        t = int(round(s * n_docs))
        rows.append((f"{s * 100:g} % ({t} docs)", {"bucket": {"$lt": t}}, perm < t))
    with bench_lock():
        for q in qv[:30]:  # warm-up: maps, mirrors, masks
            col.search(query_vectors=q, k=10, n_threads=1)
        for _, where, _ in rows[1:]:
            col.search(query_vectors=qv[0], k=10, where=where, n_threads=1)
        # What the first filtered search after opening pays: the metadata mirror of every
        # segment (record keys from the index, one column from SQLite), then the masks.
        first = []
        for _ in range(3):
            col._mirrors.clear()
            col._masks.clear()
            col._mask_sets.clear()
            col._mask_set_bytes = 0
            t = time.perf_counter()
            col.search(query_vectors=qv[0], k=10, where=rows[1][1], n_threads=1)
            first.append((time.perf_counter() - t) * 1e3)
        res["first_filtered_search_ms"] = first
        configs = [(n, w, a, default_below, False) for n, w, a in rows]
        configs += [(n + " cold", w, a, default_below, True) for n, w, a in rows[1:]]
        m = measure(configs, len(qv))
        table = {n: {"warm": m[n], "cold": m.get(n + " cold")} for n, _, _ in rows}
        for n in table:
            log(f"  {n}: {table[n]}")
        # The switch point: exhaustive scoring against candidate generation by allowed-set size.
        switch = []
        sc = [("unfiltered", None, None, default_below, False)]
        for size in (10, 30, 100, 300, 1000, 2000, 3000, 10000):
            where = {"bucket": {"$lt": size}}
            sc.append((f"{size} exhaustive", where, perm < size, 10**9, False))
            sc.append((f"{size} probe", where, perm < size, 0, False))
        m = measure(sc, 100)
        for size in (10, 30, 100, 300, 1000, 2000, 3000, 10000):
            switch.append(
                {"size": size, "exhaustive": m[f"{size} exhaustive"], "probe": m[f"{size} probe"]}
            )
            log(f"  switch {switch[-1]}")
        switch_base = m["unfiltered"]
        res["load_avg_1min_after"] = os.getloadavg()[0]
    res["table"] = table
    res["switch"] = switch
    part = (
        "filtered-keep" if keep else ("filtered" if fidelity == "codes" else "filtered-" + fidelity)
    )
    results[part] = res
    base = table["unfiltered"]["warm"]
    store = (
        "f16 vectors kept, exact re-rank"
        if keep
        else "codes only"
        if fidelity == "codes"
        else f"fidelity tier {fidelity!r}, re-rank from the tier"
    )
    lines = [
        f"SciFact + 100k distractors: {n_docs} documents, {n_tokens} tokens, compressed "
        f"(K {k}, {store}, "
        f"{st['index_bytes_per_token']:.1f} B/token); {len(qv)} test "
        "queries, k = 10, one thread, query vectors given (no encoding); recall@10 against "
        "exact MaxSim over the filtered set. Collection built in "
        f"{json.loads((path / 'built.json').read_text())['build_s']:.0f} s; 1-minute load "
        f"average at the end of the timed part {res['load_avg_1min_after']:.1f} (2 cores, "
        "shared).",
        "",
        "Cold masks: the filter's bitmaps rebuilt for every query (from the cached columns); "
        f"the first filtered search after opening the collection, which also builds the "
        f"metadata mirror of every segment, took {np.median(first):.0f} ms (median of 3).",
        "",
        "| filter | p50 ms | p99 ms | p50 / unfiltered | recall@10 | cold-mask p50 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, _, _ in rows:
        w = table[name]["warm"]
        c = table[name]["cold"]
        lines.append(
            f"| {name} | {w['p50']:.2f} | {w['p99']:.2f} | {w['p50'] / base['p50']:.2f} | "
            f"{w['recall@10']:.3f} | {c['p50']:.2f} |"
            if c
            else f"| {name} | {w['p50']:.2f} | {w['p99']:.2f} | 1.00 | {w['recall@10']:.3f} | - |"
        )
    lines += [
        "",
        "Switch point: exhaustive (every allowed document refined from codes up to "
        f"{EXHAUSTIVE_REFINE_ALL}; above that centroid interaction over all of them, the best "
        f"{FILTERED_REFINE} refined) against probing (candidate generation over the probed "
        f"lists, its best {FILTERED_DEPTH} ranked by centroid interaction "
        f"({FILTERED_DEPTH_BROAD} when the filter keeps a quarter of the documents or more), "
        f"{FILTERED_REFINE} refined).",
        "",
        f"Interleaved with unfiltered searches (p50 {switch_base['p50']:.2f} ms in this part), "
        "100 queries; the default switch is `EXHAUSTIVE_BELOW` = "
        f"{default_below} allowed documents.",
        "",
        "| allowed docs | exhaustive p50 ms (x unfiltered) | exhaustive recall@10 "
        "| probing p50 ms (x unfiltered) | probing recall@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    b0 = switch_base["p50"]
    for r in switch:
        e, p = r["exhaustive"], r["probe"]
        lines.append(
            f"| {r['size']} | {e['p50']:.2f} ({e['p50'] / b0:.2f}x) | {e['recall@10']:.3f} | "
            f"{p['p50']:.2f} ({p['p50'] / b0:.2f}x) | {p['recall@10']:.3f} |"
        )
    col.close()
    return lines


# ------------------------------------------------------------------------------------ throughput


def throughput(encoder: Any, results: dict[str, Any], n_docs: int, reps: int) -> list[str]:
    """``index_corpus`` with live encoding (the code path of ``latix index``) against the encoder
    alone on the same passages, alternated ``reps`` times; medians. Two collection variants:
    a plain index (the collection layer's own cost: splitting, SQLite + FTS5, staging, commits)
    and the default compressed one (adds the codec's one-time training)."""
    from latix.collection import Collection, Passages, _Splitter, index_corpus, remove_collection

    docs, _, _ = load_set("scifact")
    docs = docs[:n_docs]
    sp = _Splitter(encoder, Passages())
    cuts = sp.split([d.text for d in docs])
    ptexts = [
        d.text[a:b] if c else d.text
        for d, (c, _) in zip(docs, cuts, strict=True)
        for a, b in (c or [(0, 0)])
    ]
    times: dict[str, list[float]] = {"encoder": [], "none": [], "auto": []}
    n_tok = 0
    with bench_lock():
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(0, len(ptexts), 512):
                encoder.encode_documents_packed(ptexts[i : i + 512])
            times["encoder"].append(time.perf_counter() - t)
            for comp in ("none", "auto"):
                out = WORK / f"throughput-{comp}"
                remove_collection(out)
                col = Collection.create(
                    out, encoder=encoder, compression=None if comp == "none" else "auto"
                )
                t = time.perf_counter()
                rep = index_corpus(col, docs, commit_every=1000)
                times[comp].append(time.perf_counter() - t)
                n_tok = rep.n_tokens
                col.close()
            log(f"  {[(k, round(v[-1], 1)) for k, v in times.items()]}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    results["throughput"] = {"docs": n_docs, "passages": len(ptexts), "tokens": n_tok, **times}
    e = med["encoder"]
    return [
        f"First {n_docs} SciFact documents ({len(ptexts)} passages, {n_tok} tokens), default "
        f"model, all cores, median of {reps} alternated runs:",
        "",
        "| what | seconds | docs/s | time vs encoder alone |",
        "| --- | --- | --- | --- |",
        f"| encoder alone (encode_documents_packed on the same passages) | {e:.1f} | "
        f"{n_docs / e:.1f} | - |",
        f"| `latix index` path, plain index (split, encode, SQLite + FTS5, stage, commit) | "
        f"{med['none']:.1f} | {n_docs / med['none']:.1f} | {100 * (med['none'] - e) / e:+.1f} % |",
        f"| `latix index` path, default compressed (+ codec training at the first commit) | "
        f"{med['auto']:.1f} | {n_docs / med['auto']:.1f} | {100 * (med['auto'] - e) / e:+.1f} % |",
    ]


def write_markdown(saved: dict[str, Any], out: str) -> None:
    """Writes ``out``.md from the saved sections (each part's lines and when it ran)."""
    import latix

    titles = {
        "quality": "Retrieval quality: late, keyword, hybrid (test queries)",
        "tune": "Choosing the hybrid default (SciFact train queries only)",
        "filtered": "Filtered search at every selectivity (codes only, the default)",
        "filtered-keep": "Filtered search with kept vectors (exact re-rank)",
        "filtered-balanced": 'Filtered search with the "balanced" fidelity tier',
        "throughput": "Indexing throughput: `latix index` vs the encoder alone",
    }
    with open(out + ".md", "w") as f:
        f.write(
            "# latix.Collection benchmark\n\n`python benches/bench_collection.py` "
            f"({os.cpu_count()} CPUs, kernel {latix.kernel_name()}); each section says when it "
            "last ran. Timed parts ran under the team's benchmark lock on a machine shared with "
            "other engineers' jobs: ratios within one run are the meaningful part.\n"
        )
        for part in (
            "quality",
            "tune",
            "filtered",
            "filtered-keep",
            "filtered-balanced",
            "throughput",
        ):
            if part in saved:
                f.write(f"\n## {titles[part]} ({saved[part]['when']})\n\n")
                f.write("\n".join(saved[part]["lines"]) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="*", default=["quality", "tune", "filtered", "throughput"])
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "latix" / "coll"))
    ap.add_argument("--queries", type=int, default=300, help="filtered part: test queries used")
    ap.add_argument("--throughput-docs", type=int, default=600)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rebuild", action="store_true", help="rebuild collections left by a run")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "collection"))
    a = ap.parse_args()
    global WORK, REBUILD  # noqa: PLW0603 - the data locations are module settings
    WORK = Path(a.work)
    REBUILD = a.rebuild
    WORK.mkdir(parents=True, exist_ok=True)
    import latix
    from latix.eval import EmbeddingCache

    encoder = latix.Encoder.default()
    cache = EmbeddingCache()
    results: dict[str, Any] = {}
    prev = Path(a.out + ".json")
    if prev.is_file():
        results = json.loads(prev.read_text())
    sections: dict[str, list[str]] = {}
    for part in a.only:
        log(f"== {part}")
        if part == "quality":
            sections[part] = quality(encoder, cache, results)
        elif part == "tune":
            sections[part] = tune(encoder, cache, results)
        elif part == "filtered":
            sections[part] = filtered(results, a.queries)
        elif part == "filtered-keep":
            sections[part] = filtered(results, a.queries, keep=True)
        elif part == "filtered-balanced":
            sections[part] = filtered(results, a.queries, fidelity="balanced")
        elif part == "throughput":
            sections[part] = throughput(encoder, results, a.throughput_docs, a.reps)
        else:
            raise SystemExit(f"unknown part {part}")
        print("\n".join(sections[part]) + "\n", flush=True)
    results["machine"] = {"cpus": os.cpu_count(), "kernel": latix.kernel_name()}
    stamp = time.strftime("%Y-%m-%d %H:%M")
    saved = results.setdefault("sections", {})
    for part, lines in sections.items():
        saved[part] = {"when": stamp, "lines": lines}
    Path(a.out + ".json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(saved, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
