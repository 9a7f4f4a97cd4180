"""Sharded collections on a local Ray cluster (latix.distributed) against one collection, on
SciFact, in one run.

One command, ``python benches/bench_ray.py``, writes ``bench-results/ray.md`` and ``ray.json``.
It starts a local Ray cluster of 2 CPUs (``ray.init(address="local", num_cpus=2)``, no
dashboard; 2 worker processes run the encoder sessions) and stops it at the end. Everything
timed runs under the team's benchmark lock (``/work/team/bench.lock``):

1. **Build, index part** (encoding not measured): the 5,183 SciFact documents with their cached
   encodings (latix.eval.EmbeddingCache, passages as ``latix index`` makes them), once through
   the single-process path of ``latix index`` (``index_corpus`` into one compressed ``"auto"``
   collection) and once through ``latix.distributed.build`` into 2 shards (the vectors sent
   from the driver to the shard actors): docs/s and the speed-up.
2. **Build with encoding**, on a bounded subset (``--encode-docs``, default the first 300
   documents: the encoder runs at ~8-10 docs/s here, so the whole corpus is never re-encoded):
   ``index_corpus`` with live encoding (one encoder session, onnxruntime's default threads)
   against ``build`` with 2 shards, each shard actor one encoder session of 1 thread.
3. **Quality**: nDCG@10 and R@100 (ir-measures) over the 300 test queries, and recall@10
   against exact MaxSim (a plain collection's top 10), for the single compressed collection and
   the 2-shard compressed one (each shard trains its own codec); plus exact 2-shard against
   exact single: identical top-10 ids and scores.
4. **Search**: p50 / p99 / QPS of one caller sending the test queries (query vectors given, k=10,
   hits with text and metadata, 1 search thread per shard) through the sharded handle with 1, 2
   and 4 shards, both through the handle's compiled fan-out graph (the default) and through
   plain Ray actor calls (``compiled=False``: one task per shard), and through the one
   collection in process; the fan-out overhead as the 1-shard handle's p50 minus the one
   collection's; its parts: the bare round trip to a shard actor both ways (an empty call),
   the pickled size of one shard's answer and the time to pickle and unpickle it. Every
   sharded top-10 is compared with the one collection's (ids and scores).

``--only codec`` (not part of the full run; writes ``ray-codec.md`` / ``ray-codec.json``):
recall@10 against exact MaxSim and nDCG@10 of compressed ``"auto"`` collections of SciFact at
the same configuration (so the same code bytes per token): one collection, and 2 and 4 shards
built by ``latix.distributed.build`` with one shared codec (``codec="shared"``) and with a
codec per shard (``codec="per-shard"``), on SciFact's 809 *train* queries (qrels/train.tsv: what
the default is chosen on) and its 300 test queries (reported). Untimed; bytes per token of all
files, centroids per shard.

``--only search`` runs part 4 alone, reusing the collections of an earlier run under ``--work``
when they hold every document (else building them); it updates the search part of
``ray.json`` / ``ray.md`` and keeps the other parts of the last full run.

Collections are kept under ``--work`` (default ``~/.cache/latix/ray``) and removed with
``--clean``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import provenance  # noqa: E402


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def fresh(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    return p


def search_timing(col: Any, qv: list[np.ndarray], rounds: int) -> dict[str, float]:
    """One caller, each query once per round, k=10 with text and metadata, 1 search thread."""
    for q in qv[:20]:
        col.search(query_vectors=q, k=10, n_threads=1)
    ms: list[float] = []
    t0 = time.perf_counter()
    for _ in range(rounds):
        for q in qv:
            t = time.perf_counter()
            col.search(query_vectors=q, k=10, n_threads=1)
            ms.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - t0
    return {**pct(ms), "qps": round(len(ms) / wall, 1), "n": len(ms)}


def top10(col: Any, qv: list[np.ndarray]) -> list[list[tuple[str, float]]]:
    out = []
    for q in qv:
        res = col.search_batch(query_vectors=[q], k=10, include=())
        out.append([(str(res.ids[0, j]), float(res.scores[0, j])) for j in range(res.n_hits(0))])
    return out


def interleaved(base: Any, sc: Any, qv: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """The in-process collection and the 1-shard handle searched alternately, query by query
    (the same load for both): p50 of each and the p50 of the per-query difference."""
    one: list[float] = []
    via: list[float] = []
    for _ in range(rounds):
        for i, q in enumerate(qv):
            pair = [(base, one), (sc, via)]
            for col, out in pair if i % 2 else pair[::-1]:
                t = time.perf_counter()
                col.search(query_vectors=q, k=10, n_threads=1)
                out.append((time.perf_counter() - t) * 1e3)
    diff = [b - a for a, b in zip(one, via, strict=True)]
    return {
        "one collection": pct(one),
        "1 shard": pct(via),
        "overhead_p50_ms": round(float(np.median(diff)), 3),
    }


def attribution(sc: Any, qv: list[np.ndarray], full: tuple[str, ...]) -> dict[str, Any]:
    """Where one search's time goes through the handle ``sc`` (compiled graph), per query:
    the fan-out call as a whole (request out, every shard's search, answers back), the
    slowest shard's search measured inside its actor, the empty round trip (a ``ready`` call
    through the same path), the merge, the conversion to hits, and the driver's CPU time (all
    its threads) per search. Transport = call - slowest shard's search."""
    import pickle

    from latix.distributed.results import ShardedHits, _merge

    call: list[float] = []
    inside: list[float] = []
    transport: list[float] = []
    merge: list[float] = []
    hits: list[float] = []
    cpu: list[float] = []
    empty: list[float] = []
    for q in qv[:20]:  # warm
        sc._fanout("timed", ("late_or_keyword", (None, [q], 10, None, "late", 1, {}, full)))
    for q in qv:
        t = time.perf_counter()
        sc._fanout("ready", ())
        empty.append((time.perf_counter() - t) * 1e3)
        c0 = time.process_time()
        t0 = time.perf_counter()
        res, _, _ = sc._fanout(
            "timed", ("late_or_keyword", (None, [q], 10, None, "late", 1, {}, full))
        )
        t1 = time.perf_counter()
        parts = [res[s][0] for s in sorted(res)]
        m = _merge(parts, 1, 10, full)
        t2 = time.perf_counter()
        ShardedHits(m.hits(0))
        t3 = time.perf_counter()
        cpu.append((time.process_time() - c0) * 1e3)
        slowest = max(res[s][1] for s in res) * 1e3
        call.append((t1 - t0) * 1e3)
        inside.append(slowest)
        transport.append((t1 - t0) * 1e3 - slowest)
        merge.append((t2 - t1) * 1e3)
        hits.append((t3 - t2) * 1e3)
    req = (None, [qv[0]], 10, None, "late", 1, {}, full)
    part = parts[0]
    ser: list[float] = []
    for _ in range(200):
        t = time.perf_counter()
        pickle.loads(pickle.dumps(("late_or_keyword", req), protocol=5))
        pickle.loads(pickle.dumps(part, protocol=5))
        ser.append((time.perf_counter() - t) * 1e3)
    return {
        "call": pct(call),
        "slowest_shard_in_actor": pct(inside),
        "transport": pct(transport),
        "empty_round_trip": pct(empty),
        "merge": pct(merge),
        "to_hits": pct(hits),
        "driver_cpu_per_search": pct(cpu),
        "pickle_request_and_one_answer": {
            "request_bytes": len(pickle.dumps(("late_or_keyword", req), protocol=5)),
            "answer_bytes": len(pickle.dumps(part, protocol=5)),
            **pct(ser),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "latix" / "ray"))
    ap.add_argument("--encode-docs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries per setup")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "ray"))
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    ap.add_argument("--docs", type=int, default=0, help="trial: first N documents only")
    ap.add_argument("--clean", action="store_true", help="remove --work at the end")
    ap.add_argument("--keep", action="store_true", help="--only codec: keep the shard builds")
    ap.add_argument(
        "--codec-exact", type=int, default=150, help="--only codec: queries per split vs exact"
    )
    ap.add_argument("--codec-shards", default="2,4", help="--only codec: shard counts")
    ap.add_argument(
        "--codec-k", type=int, default=0, help="--only codec: fix the shards' centroids K"
    )
    ap.add_argument(
        "--only", choices=["search", "codec", "encode"], help="run only this part (see above)"
    )
    ap.add_argument(
        "--whole-docs",
        action="store_true",
        help="one passage per document: the cached whole-document encodings (cut at the "
        "model's 256 tokens; no passage encodings needed) instead of the collection's passages",
    )
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix
    import ray
    from latix.eval import EmbeddingCache

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    encoder = latix.Encoder.default()
    cache = EmbeddingCache()
    docs, queries, qrels = bc.load_set("scifact")
    if a.docs:
        docs = docs[: a.docs]
    if a.whole_docs:
        entry = cache.entry_dir(encoder, "document", [d.id for d in docs], [d.text for d in docs])
        if not (entry / "offsets.npy").is_file():
            raise SystemExit(f"--whole-docs: no cached document encodings at {entry}")
        dv, do = cache.get_or_compute(encoder, [d.id for d in docs], [d.text for d in docs])
        vecs = {d.id: np.asarray(dv[do[i] : do[i + 1]]) for i, d in enumerate(docs)}
    else:
        vecs = bc.passage_vectors("scifact", docs, encoder, cache)
    qvd = bc.query_vectors(encoder, cache, queries, qrels)
    qids = list(qvd)
    qv = [qvd[q] for q in qids]
    test_q = {q: queries[q] for q in qids}

    def vfn(rs: list[Any]) -> list[Any]:
        return [vecs[r.id] for r in rs]

    # Ray runs its workers at nice 15 by default (the raylet first); the single-process
    # baseline runs at the benchmark's own priority, so the shard actors do too (a fair
    # comparison on a machine shared with other jobs).
    os.environ.setdefault("RAY_worker_niceness", "0")
    tmp = tempfile.mkdtemp(prefix="latix-ray-bench-")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
        _temp_dir=tmp,
    )
    r: dict[str, Any] = {"docs": len(docs), "queries": len(qv), "rounds": a.rounds}
    handles: list[Any] = []
    held = contextlib.ExitStack()
    try:

        def lock() -> Any:
            return contextlib.nullcontext() if a.no_lock else bc.bench_lock()

        if a.only == "codec":
            codec_part(a, r, work, docs, encoder, cache, vecs, vfn, qvd, queries, qrels, handles)
            out = Path(a.out)
            name = out.with_name(out.name + "-codec" + (f"-k{a.codec_k}" if a.codec_k else ""))
            name.with_suffix(".json").write_text(
                json.dumps({"provenance": prov, **r}, indent=2) + "\n"
            )
            name.with_suffix(".md").write_text(codec_report(r, prov))
            print(codec_report(r, prov))
            return 0
        if a.only == "encode":
            encode_part(a, r, work, sub_docs(docs, a), encoder, qv, lock)
            out = Path(a.out)
            name = out.with_name(out.name + "-encode")
            name.with_suffix(".json").write_text(
                json.dumps({"provenance": prov, **r}, indent=2) + "\n"
            )
            name.with_suffix(".md").write_text(encode_report(r, prov))
            print(encode_report(r, prov))
            return 0
        if a.only == "search":
            prev = json.loads(Path(a.out).with_suffix(".json").read_text())
            r.update({k_: prev[k_] for k_ in ("build_index", "build_encode", "quality")})
            r["previous_parts_provenance"] = prev["provenance"]
            one = reuse_or_build(work / "one-auto", docs, None, encoder, vecs, vfn)
        else:
            one = full_parts(
                a,
                r,
                work,
                docs,
                sub_docs(docs, a),
                encoder,
                vecs,
                vfn,
                qv,
                qids,
                qvd,
                test_q,
                qrels,
                handles,
                lock,
                held,
            )
        search_part(a, r, work, docs, encoder, vecs, vfn, qv, one, handles, lock, held)
        one.close()
    finally:
        held.close()
        for h in handles:
            h.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if a.clean:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"provenance": prov, **r}, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(r, prov))
    print(report(r, prov))
    return 0


def codec_part(
    a: Any,
    r: dict[str, Any],
    work: Path,
    docs: list[Any],
    encoder: Any,
    cache: Any,
    vecs: Any,
    vfn: Any,
    qvd: dict[str, np.ndarray],
    queries: dict[str, str],
    qrels: Any,
    handles: list[Any],
) -> None:
    """--only codec: shared vs per-shard codec at the same bytes (see the module docstring)."""
    import latix.distributed as ld
    from latix import Index
    from latix.collection import INDEX_DIR
    from latix.corpus import read_qrels
    from latix.eval import evaluate_collection

    train_qrels = read_qrels(bc.SOURCE / "scifact" / "qrels" / "train.tsv")
    sets = {
        "train": (train_qrels, bc.query_vectors(encoder, cache, queries, train_qrels)),
        "test": (qrels, qvd),
    }
    # Exact top 10 (exhaustive MaxSim over 1.2M tokens: ~1 s per query on this loaded
    # machine) for the first --codec-exact queries of each split, cached in --work.
    cached = work / "codec-exact-top10.json"
    exact: dict[str, dict[str, list[str]]] = {}
    r["codec"] = {"sets": {k: len(v[1]) for k, v in sets.items()}, "rows": {}}
    r["codec"]["exact_queries"] = a.codec_exact
    rows = r["codec"]["rows"]
    sub = {split: dict(list(qv.items())[: a.codec_exact]) for split, (_, qv) in sets.items()}
    if cached.is_file() and json.loads(cached.read_text()).get("n") == a.codec_exact:
        exact = json.loads(cached.read_text())["top10"]
    else:
        bc.log("codec: exact reference (one plain collection)")
        ex = reuse_or_build(work / "one-exact", docs, None, encoder, vecs, vfn, compression=None)
        for split, (qr, _) in sets.items():
            qv = sub[split]
            ev = evaluate_collection(
                ex, {q: queries[q] for q in qv}, qr, depth=10, query_vectors=qv
            )
            exact[split] = {
                q: [i for i, _ in sorted(ev.run[q].items(), key=lambda kv: -kv[1])[:10]] for q in qv
            }
        ex.close()
        cached.write_text(json.dumps({"n": a.codec_exact, "top10": exact}))
    for split, (qr, _) in sets.items():
        import ir_measures
        from ir_measures import nDCG

        run = {q: {d: 10.0 - j for j, d in enumerate(ids)} for q, ids in exact[split].items()}
        judged = {q: qr[q] for q in run}  # the subset only (others would count as 0)
        ndcg = ir_measures.calc_aggregate([nDCG @ 10], judged, run)[nDCG @ 10]
        rows.setdefault("exact", {})[split] = {"nDCG@10": round(float(ndcg), 4)}

    def measure(name: str, col: Any, n_shards: int, paths: list[Path]) -> None:
        row: dict[str, Any] = {}
        for split, (qr, qv) in sets.items():
            ev = evaluate_collection(
                col, {q: queries[q] for q in qv}, qr, depth=10, query_vectors=qv
            )
            rec = np.mean(
                [
                    len(set(ev.run[q]) & set(exact[split][q])) / max(1, len(exact[split][q]))
                    for q in exact[split]
                ]
            )
            row[split] = {
                "nDCG@10": round(ev.metrics["nDCG@10"], 4),
                "recall@10_vs_exact": round(float(rec), 4),
            }
        row["bytes_per_token"] = round(col.stats()["bytes_per_token"], 2)
        ks = []
        for p in paths:
            ix = Index.open(p / INDEX_DIR)
            ks.append(ix.stats()["n_centroids"])
            ix.close()
        row["n_centroids"] = ks
        row["n_shards"] = n_shards
        rows[name] = row
        bc.log(f"  {name}: {row}")

    bc.log("codec: one collection")
    one = reuse_or_build(work / "one-auto", docs, None, encoder, vecs, vfn)
    measure("one collection", one, 1, [work / "one-auto"])
    one.close()
    import latix

    comp: Any = "auto" if not a.codec_k else latix.Compression(n_centroids=a.codec_k)
    r["codec"]["n_centroids"] = a.codec_k or "auto"
    for n in [int(x) for x in a.codec_shards.split(",")]:
        for mode in ("per-shard", "shared"):
            bc.log(f"codec: {n} shards, {mode}")
            t = time.perf_counter()
            sc = ld.build(
                docs,
                fresh(work / f"sharded-{n}-{mode}"),
                n_shards=n,
                encoder=encoder,
                batch_size=500,
                vectors_fn=vfn,
                n_threads=1,
                codec=mode,
                compression=comp,
            )
            handles.append(sc)
            bc.log(f"  built in {time.perf_counter() - t:.1f} s")
            measure(f"{n} shards, {mode} codec", sc, n, list(sc.shard_paths))
            handles.remove(sc)
            sc.close()
            if not a.keep:
                shutil.rmtree(work / f"sharded-{n}-{mode}", ignore_errors=True)


def codec_report(r: dict[str, Any], prov: list[str]) -> str:
    c = r["codec"]
    lines = [
        "# Shared vs per-shard codec (latix.distributed.build)",
        "",
        "Provenance:",
        *prov,
        "",
        f'SciFact ({r["docs"]} documents), compressed `"auto"` collections (the same '
        "configuration everywhere, so the same code bytes per token; the number of centroids "
        "K, and with it the bytes of the codec and list files, follows the tokens each codec "
        "was trained for unless fixed), shards built by "
        "`latix.distributed.build(..., batch_size=500)` from cached encodings; recall@10 against "
        "the exact top 10 of one plain collection. Train queries "
        f"({c['sets']['train']}, qrels/train.tsv) choose the default; test queries "
        f"({c['sets']['test']}) are reported; nDCG@10 over all of them, recall@10 vs exact "
        f"over the first {c['exact_queries']} of each (the exact row's nDCG@10 too). Shards' "
        f"centroids: {c.get('n_centroids', 'auto')}. Untimed.",
        "",
        "| index | train nDCG@10 | train recall@10 vs exact | test nDCG@10 | test recall@10 vs "
        "exact | bytes/token (all files) | centroids per shard |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in c["rows"].items():
        if name == "exact":
            lines.append(
                f"| exact | {row['train']['nDCG@10']:.4f} | 1 | {row['test']['nDCG@10']:.4f} "
                "| 1 | | |"
            )
            continue
        tr, te = row["train"], row["test"]
        lines.append(
            f"| {name} | {tr['nDCG@10']:.4f} | {tr['recall@10_vs_exact']:.4f} | "
            f"{te['nDCG@10']:.4f} | {te['recall@10_vs_exact']:.4f} | {row['bytes_per_token']} | "
            f"{', '.join(str(k) for k in row['n_centroids'])} |"
        )
    lines.append("")
    return "\n".join(lines)


def encode_part(
    a: Any, r: dict[str, Any], work: Path, sub: list[Any], encoder: Any, qv: Any, lock: Any
) -> None:
    """--only encode: the build with encoding of the first --encode-docs documents, in one
    locked run: single-process ``index_corpus`` (the ``latix index`` path: one encoder session,
    onnxruntime's default threads), then 2 shards encoding in their actors (1 thread each),
    then the Ray Data pipeline of 2 encoder workers (1 thread each) writing 2 shards; each
    build's top 10 for the test queries compared with the single-process one's (exact
    collections, so the top 10 differs only if the vectors do)."""
    import latix.distributed as ld
    from latix.collection import Collection, index_corpus

    rows: dict[str, Any] = {}
    tops: dict[str, list[list[str]]] = {}

    def top(col: Any) -> list[list[str]]:
        return [[h.id for h in col.search(query_vectors=q, k=10)] for q in qv]

    with lock():
        r["load_before"] = [round(x, 2) for x in os.getloadavg()]
        bc.log(f"encode: {len(sub)} docs, single process")
        t = time.perf_counter()
        c1 = Collection.create(fresh(work / "enc-one"), encoder=encoder, compression=None)
        index_corpus(c1, sub, commit_every=1000)
        rows["single process"] = time.perf_counter() - t
        n_tok = c1.stats()["n_tokens"]
        tops["single process"] = top(c1)
        c1.close()
        for name, enc_mode in (
            ("2 shards, shard actors", "shards"),
            ("2 shards, Ray Data", "ray-data"),
        ):
            bc.log(f"encode: {name}")
            t = time.perf_counter()
            sc = ld.build(
                sub,
                fresh(work / f"enc-{enc_mode}"),
                n_shards=2,
                encoder=encoder,
                compression=None,
                batch_size=32,
                encoder_threads=1,
                encoding=enc_mode,
                n_encoders=2,
            )
            rows[name] = time.perf_counter() - t
            assert len(sc) == len(sub) and sc.stats()["n_tokens"] == n_tok
            tops[name] = top(sc)
            sc.close()
        r["load_after"] = [round(x, 2) for x in os.getloadavg()]
    base = rows["single process"]
    r["encode"] = {
        "docs": len(sub),
        "rows": {
            n: {
                "s": round(v, 2),
                "docs_s": round(len(sub) / v, 2),
                "speedup": round(base / v, 2),
                "same_top10": sum(
                    x == y for x, y in zip(tops[n], tops["single process"], strict=True)
                ),
            }
            for n, v in rows.items()
        },
        "queries": len(qv),
    }
    bc.log(f"  {r['encode']}")


def encode_report(r: dict[str, Any], prov: list[str]) -> str:
    e = r["encode"]
    lines = [
        "# Build with encoding: single process vs shard actors vs Ray Data",
        "",
        "Provenance:",
        *prov,
        "",
        f"The first {e['docs']} SciFact documents encoded and indexed (exact collections), one "
        "locked run; local Ray cluster of 2 CPUs; times include creating the shards and "
        "starting their actors (and the Ray Data workers). Load average before "
        f"{r['load_before']}, after {r['load_after']}. Same top 10: of the {e['queries']} test "
        "queries, those whose top-10 ids equal the single-process collection's.",
        "",
        "| build | seconds | docs/s | speed-up | same top 10 |",
        "|---|---|---|---|---|",
    ]
    for n, row in e["rows"].items():
        lines.append(
            f"| {n} | {row['s']} | {row['docs_s']} | {row['speedup']}x | "
            f"{row['same_top10']}/{e['queries']} |"
        )
    lines.append("")
    return "\n".join(lines)


def sub_docs(docs: list[Any], a: Any) -> list[Any]:
    return docs[: a.encode_docs]


def reuse_or_build(
    path: Path,
    docs: list[Any],
    n_shards: int | None,
    encoder: Any,
    vecs: Any,
    vfn: Any,
    compression: Any = "auto",
) -> Any:
    """The collection at ``path`` when an earlier run left it complete, else a new build."""
    import latix.distributed as ld
    from latix.collection import Collection, index_corpus

    if n_shards is None:
        if Collection.exists(path):
            c = Collection.open(path)
            if len(c) == len(docs):
                return c
            c.close()
        c = Collection.create(fresh(path), encoder=encoder, compression=compression)
        index_corpus(c, docs, commit_every=1000, vectors_fn=lambda b: [vecs[d.id] for d in b])
        return c
    if ld.ShardedCollection.exists(path):
        try:
            sc = ld.ShardedCollection.open(path, n_threads=1)
            if len(sc) == len(docs) and sc.n_shards == n_shards:
                return sc
            sc.close()
        except Exception:  # noqa: BLE001 - an unusable leftover: build it again
            pass
    return ld.build(
        docs,
        fresh(path),
        n_shards=n_shards,
        encoder=encoder,
        batch_size=500,
        vectors_fn=vfn,
        n_threads=1,
    )


def full_parts(
    a: Any,
    r: dict[str, Any],
    work: Path,
    docs: list[Any],
    sub: list[Any],
    encoder: Any,
    vecs: Any,
    vfn: Any,
    qv: list[np.ndarray],
    qids: list[str],
    qvd: dict[str, np.ndarray],
    test_q: dict[str, str],
    qrels: Any,
    handles: list[Any],
    lock: Any,
    held: contextlib.ExitStack,
) -> Any:
    """Parts 1-3 (build, build with encoding, quality); returns the one compressed collection."""
    import latix.distributed as ld
    from latix.collection import Collection, index_corpus
    from latix.eval import evaluate_collection

    if True:
        held.enter_context(lock())  # held around the timed parts only
        # 1. build, index part (cached encodings)
        bc.log("build from cached encodings: one collection")
        t = time.perf_counter()
        one = Collection.create(fresh(work / "one-auto"), encoder=encoder)
        index_corpus(one, docs, commit_every=1000, vectors_fn=lambda b: [vecs[d.id] for d in b])
        single_s = time.perf_counter() - t
        bc.log(f"  {single_s:.1f} s; 2 shards")
        t = time.perf_counter()
        s2 = ld.build(
            docs,
            fresh(work / "sharded-2-auto"),
            n_shards=2,
            encoder=encoder,
            batch_size=500,
            vectors_fn=vfn,
            n_threads=1,
        )
        shard_s = time.perf_counter() - t
        handles.append(s2)
        assert len(s2) == len(one) == len(docs)
        r["build_index"] = {
            "single_s": round(single_s, 2),
            "single_docs_s": round(len(docs) / single_s, 1),
            "sharded2_s": round(shard_s, 2),
            "sharded2_docs_s": round(len(docs) / shard_s, 1),
            "sharded2_add_s": round(s2.last_build.seconds, 2),
            "speedup": round(single_s / shard_s, 2),
        }
        bc.log(f"  {r['build_index']}")
        # 2. build with encoding, bounded subset
        bc.log(f"build with encoding: {len(sub)} docs, one collection")
        t = time.perf_counter()
        c1 = Collection.create(fresh(work / "enc-one"), encoder=encoder)
        index_corpus(c1, sub, commit_every=1000)
        enc_single = time.perf_counter() - t
        n_enc_tokens = c1.stats()["n_tokens"]
        c1.close()
        bc.log(f"  {enc_single:.1f} s; 2 shards")
        t = time.perf_counter()
        e2 = ld.build(
            sub,
            fresh(work / "enc-sharded-2"),
            n_shards=2,
            encoder=encoder,
            batch_size=32,
            encoder_threads=1,
        )
        enc_shard = time.perf_counter() - t
        assert len(e2) == len(sub) and e2.stats()["n_tokens"] == n_enc_tokens
        enc_add = e2.last_build.seconds if e2.last_build else enc_shard
        e2.close()
        r["build_encode"] = {
            "docs": len(sub),
            "single_s": round(enc_single, 2),
            "single_docs_s": round(len(sub) / enc_single, 2),
            "sharded2_s": round(enc_shard, 2),
            "sharded2_docs_s": round(len(sub) / enc_shard, 2),
            "sharded2_add_s": round(enc_add, 2),
            "speedup": round(enc_single / enc_shard, 2),
        }
        bc.log(f"  {r['build_encode']}")
        held.close()
        # 3. quality (not timed)
        bc.log("quality: exact references")
        ex1 = Collection.create(fresh(work / "one-exact"), encoder=encoder, compression=None)
        index_corpus(ex1, docs, commit_every=1000, vectors_fn=lambda b: [vecs[d.id] for d in b])
        ex2 = ld.build(
            docs,
            fresh(work / "sharded-2-exact"),
            n_shards=2,
            encoder=encoder,
            compression=None,
            batch_size=500,
            vectors_fn=vfn,
        )
        handles.append(ex2)
        # one exact pass per collection: exact top 100 of the single one (metrics, reference
        # top 10), top 10 of the exact shards (same ids and scores?)
        ev_exact = evaluate_collection(ex1, test_q, qrels, depth=100, query_vectors=qvd)
        t_ex1 = [sorted(ev_exact.run[qid].items(), key=lambda kv: -kv[1])[:10] for qid in qids]
        t_ex2 = top10(ex2, qv)
        same_ids = sum(
            [i for i, _ in x] == [i for i, _ in y] for x, y in zip(t_ex1, t_ex2, strict=True)
        )
        max_diff = max(
            abs(sx - sy)
            for x, y in zip(t_ex1, t_ex2, strict=True)
            for (_, sx), (_, sy) in zip(x, y, strict=True)
        )
        ex2.close()
        handles.remove(ex2)
        q: dict[str, Any] = {"exact_same_top10": same_ids, "exact_max_score_diff": max_diff}
        q["exact"] = {
            "nDCG@10": round(ev_exact.metrics["nDCG@10"], 4),
            "R@100": round(ev_exact.metrics["Recall@100"], 4),
            "recall@10_vs_exact": 1.0,
        }
        for name, col in (("one collection", one), ("2 shards", s2)):
            ev = evaluate_collection(col, test_q, qrels, depth=100, query_vectors=qvd)
            got = top10(col, qv)
            rec = float(
                np.mean(
                    [
                        len({i for i, _ in g} & {i for i, _ in e}) / max(1, len(e))
                        for g, e in zip(got, t_ex1, strict=True)
                    ]
                )
            )
            q[name] = {
                "nDCG@10": round(ev.metrics["nDCG@10"], 4),
                "R@100": round(ev.metrics["Recall@100"], 4),
                "recall@10_vs_exact": round(rec, 4),
            }
            bc.log(f"  {name}: {q[name]}")
        ex1.close()
        st1, st2 = one.stats(), s2.stats()
        q["bytes_per_token"] = {
            "one collection": round(st1["bytes_per_token"], 2),
            "2 shards": round(st2["bytes_per_token"], 2),
        }
        r["quality"] = q
        handles.remove(s2)
        s2.close()
        return one


def search_part(
    a: Any,
    r: dict[str, Any],
    work: Path,
    docs: list[Any],
    encoder: Any,
    vecs: Any,
    vfn: Any,
    qv: list[np.ndarray],
    one: Any,
    handles: list[Any],
    lock: Any,
    held: contextlib.ExitStack,
) -> None:
    """Part 4: search latency through the handle (compiled graph and plain calls)."""
    import pickle

    import latix.distributed as ld
    import ray

    bc.log("search latency")
    paths = {}
    for n in (1, 2, 4):
        sc = reuse_or_build(work / f"sharded-{n}-auto", docs, n, encoder, vecs, vfn)
        paths[n] = sc.path
        sc.close()
    from latix.collection import Collection

    # The in-process baseline is the 1-shard handle's own index (its shard directory opened by
    # Collection.open): the same codes, so the same top 10 and the difference is the fan-out.
    base = Collection.open(paths[1] / "shard-0000")
    handles.append(base)
    lat: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()]}
    held.enter_context(lock())  # held around the timed parts only
    lat["one collection"] = search_timing(base, qv, a.rounds)
    bc.log(f"  one collection: {lat['one collection']}")
    want = top10(base, qv)
    tops: dict[tuple[int, bool], list[Any]] = {}
    full = ("text", "metadata")
    for compiled in (True, False):
        for n in (1, 2, 4):
            sc = ld.ShardedCollection.open(paths[n], n_threads=1, compiled=compiled)
            handles.append(sc)
            name = f"{n} shard{'s' if n > 1 else ''}" + ("" if compiled else " (plain calls)")
            lat[name] = search_timing(sc, qv, a.rounds)
            lat[name]["graph"] = sc._graph is not None
            if compiled:
                if n == 1:
                    lat["interleaved"] = interleaved(base, sc, qv, a.rounds)
                    bc.log(f"    interleaved: {lat['interleaved']}")
                lat[name]["attribution"] = attribution(sc, qv, full)
                bc.log(f"    attribution: {lat[name]['attribution']}")
            tops[(n, compiled)] = top10(sc, qv)
            bc.log(f"  {name}: {lat[name]}")
            if n == 1:
                lat[name]["same_top10"] = sum(
                    x == y for x, y in zip(tops[(n, compiled)], want, strict=True)
                )
                actor = sc._actors[0]
                rt: list[float] = []
                for i in range(520):
                    t = time.perf_counter()
                    if compiled:
                        sc._call_all("ready")
                    else:
                        ray.get(actor.ready.remote())
                    if i >= 20:
                        rt.append((time.perf_counter() - t) * 1e3)
                lat["round_trip_compiled" if compiled else "round_trip_plain"] = pct(rt)
                # the same shard search as a whole call and as timed inside the actor
                whole: list[float] = []
                inside: list[float] = []
                for q in qv:
                    t = time.perf_counter()
                    (_, sec), *_ = sc._call_all(
                        "timed", "late_or_keyword", (None, [q], 10, None, "late", 1, {}, full)
                    )[0]
                    whole.append((time.perf_counter() - t) * 1e3)
                    inside.append(sec * 1e3)
                lat["split_compiled" if compiled else "split_plain"] = {
                    "call": pct(whole),
                    "in_actor": pct(inside),
                }
                part = ray.get(actor.late_or_keyword.remote(None, [qv[0]], 10, None, "late", 1, {}))
                blob = pickle.dumps(part)
                pk: list[float] = []
                for _ in range(200):
                    t = time.perf_counter()
                    pickle.loads(pickle.dumps(part))
                    pk.append((time.perf_counter() - t) * 1e3)
                lat["answer_pickle"] = {"bytes": len(blob), **pct(pk)}
            handles.remove(sc)
            sc.close()
    for n in (2, 4):
        lat[f"{n} shards"]["same_top10"] = sum(
            x == y for x, y in zip(tops[(n, True)], tops[(n, False)], strict=True)
        )
    handles.remove(base)
    base.close()
    held.close()
    lat["load_after"] = [round(x, 2) for x in os.getloadavg()]
    for key, name in (
        ("fanout_overhead_p50_ms", "1 shard"),
        ("fanout_overhead_plain_p50_ms", "1 shard (plain calls)"),
    ):
        lat[key] = round(lat[name]["p50_ms"] - lat["one collection"]["p50_ms"], 3)
    r["search"] = lat
    bc.log(
        f"  overhead p50 {lat['fanout_overhead_p50_ms']} ms (plain calls "
        f"{lat['fanout_overhead_plain_p50_ms']} ms)"
    )


def report(r: dict[str, Any], prov: list[str]) -> str:
    bi, be, q, s = r["build_index"], r["build_encode"], r["quality"], r["search"]
    lines = [
        "# Sharded collections on Ray (latix.distributed)",
        "",
        "Provenance:",
        *prov,
        "",
        f"SciFact ({r['docs']} documents, {r['queries']} test queries), local Ray cluster of 2 "
        'CPUs on this machine (`ray.init(address="local", num_cpus=2)`), compressed `"auto"` '
        "collections (the `latix index` defaults) unless marked exact.",
        "",
        "## Build",
        "",
        "| build | documents | single process (`latix index` path) | 2 shards on Ray | speed-up |",
        "|---|---|---|---|---|",
        f"| cached encodings (index part only) | {r['docs']} | {bi['single_s']} s, "
        f"{bi['single_docs_s']} docs/s | {bi['sharded2_s']} s, {bi['sharded2_docs_s']} docs/s "
        f"(of which streaming {bi['sharded2_add_s']} s) | **{bi['speedup']}x** |",
        f"| with encoding (first {be['docs']} documents) | {be['docs']} | {be['single_s']} s, "
        f"{be['single_docs_s']} docs/s (1 session, default threads) | {be['sharded2_s']} s, "
        f"{be['sharded2_docs_s']} docs/s (2 actors x 1 thread; streaming {be['sharded2_add_s']} s)"
        f" | **{be['speedup']}x** |",
        "",
        "The sharded times include creating the shards and starting their actors.",
        "",
        "## Quality (300 test queries)",
        "",
        "| index | nDCG@10 | R@100 | recall@10 vs exact | bytes/token (all files) |",
        "|---|---|---|---|---|",
    ]
    for name in ("exact", "one collection", "2 shards"):
        m = q[name]
        bpt = q["bytes_per_token"].get(name, "")
        lines.append(
            f"| {name} | {m['nDCG@10']:.4f} | {m['R@100']:.4f} | {m['recall@10_vs_exact']:.4f} "
            f"| {bpt} |"
        )
    lines += [
        "",
        f"Exact 2 shards vs exact one collection: identical top-10 ids for "
        f"**{q['exact_same_top10']}/{r['queries']}** queries, largest score difference "
        f"{q['exact_max_score_diff']:.3g}.",
        "",
        f"## Search (1 caller, k=10 with text and metadata, query vectors given, 1 search thread "
        f"per shard, {r['rounds']} passes)",
        "",
        f"Load average (1 / 5 / 15 min) before timing {s['load_before']}, after {s['load_after']}"
        + (
            "; the build and quality parts above are from the run of "
            + r["previous_parts_provenance"][3].removeprefix("- date: ").split(";")[0]
            if "previous_parts_provenance" in r
            else ""
        )
        + ".",
        "",
        "| through | p50 ms | p99 ms | QPS | same top 10 |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "one collection": "in process: the 1-shard collection's shard, Collection.open",
        "1 shard": "handle, compiled graph",
        "2 shards": "handle, compiled graph",
        "4 shards": "handle, compiled graph",
        "1 shard (plain calls)": "handle, one Ray task per shard",
        "2 shards (plain calls)": "handle, one Ray task per shard",
        "4 shards (plain calls)": "handle, one Ray task per shard",
    }
    for name, what in labels.items():
        m = s[name]
        same = ""
        if "same_top10" in m:
            ref = "in process" if name.startswith("1 ") else "plain calls"
            same = f"{m['same_top10']}/{r['queries']} (vs {ref})"
        label = name.replace(" (plain calls)", "")
        lines.append(f"| {label} ({what}) | {m['p50_ms']} | {m['p99_ms']} | {m['qps']} | {same} |")
    ap, rc, rp = s["answer_pickle"], s["round_trip_compiled"], s["round_trip_plain"]
    sc_, sp = s["split_compiled"], s["split_plain"]
    lines += [
        "",
        f"- fan-out overhead (1-shard handle p50 - one collection p50): "
        f"**{s['fanout_overhead_p50_ms']} ms** through the compiled graph (target <= 1 ms); "
        f"{s['fanout_overhead_plain_p50_ms']} ms through plain actor calls",
        f"- round trip to a shard actor (empty call): compiled graph p50 {rc['p50_ms']} ms, "
        f"p99 {rc['p99_ms']} ms; plain Ray call p50 {rp['p50_ms']} ms, p99 {rp['p99_ms']} ms",
        f"- one shard's answer (k=10 with text and metadata, one query): {ap['bytes']} bytes "
        f"pickled; pickle + unpickle p50 {ap['p50_ms']} ms",
        f"- the 1-shard search as one call (p50) vs its time inside the actor (p50): compiled "
        f"graph {sc_['call']['p50_ms']} vs {sc_['in_actor']['p50_ms']} ms, plain calls "
        f"{sp['call']['p50_ms']} vs {sp['in_actor']['p50_ms']} ms",
        "",
    ]
    if "interleaved" in s:
        iv = s["interleaved"]
        lines[-1:-1] = [
            f"- interleaved (the one collection and the 1-shard handle searched alternately, "
            f"query by query, {r['rounds']} passes): p50 {iv['one collection']['p50_ms']} vs "
            f"{iv['1 shard']['p50_ms']} ms; per-query difference p50 "
            f"**{iv['overhead_p50_ms']} ms**",
        ]
    if all("attribution" in s.get(n, {}) for n in ("1 shard", "2 shards", "4 shards")):
        lines += [
            "### Where a fan-out search's time goes (compiled graph, p50 ms per query)",
            "",
            "Per query through the handle's fan-out (`_fanout`, the shards' search timed "
            "inside their actors): transport = the call - the slowest shard's own search "
            "(request out, answers back, wake-ups); the empty round trip is a `ready` call "
            "through the same graph; driver CPU is the process time of all the driver's "
            "threads for the call, merge and hits.",
            "",
            "| shards | call | slowest shard's search | transport | empty round trip | merge "
            "| to hits | driver CPU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in (1, 2, 4):
            at = s[f"{n} shard{'s' if n > 1 else ''}"]["attribution"]
            lines.append(
                f"| {n} | {at['call']['p50_ms']} | {at['slowest_shard_in_actor']['p50_ms']} | "
                f"{at['transport']['p50_ms']} | {at['empty_round_trip']['p50_ms']} | "
                f"{at['merge']['p50_ms']} | {at['to_hits']['p50_ms']} | "
                f"{at['driver_cpu_per_search']['p50_ms']} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
