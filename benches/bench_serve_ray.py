"""``latix serve`` vs the same app as a Ray Serve deployment (latix.distributed.serve) on the same
SciFact collection: p50 / p99 latency and QPS over HTTP on 127.0.0.1.

``python benches/bench_serve_ray.py --work DIR`` builds the SciFact compressed collection from
the cached whole-document encodings (one passage per document, as ``bench_ray.py
--whole-docs``), then,
under the team's benchmark lock, loads each server with bench_serve.py's asyncio client (one
keep-alive connection per client, 1 and 4 clients, the SciFact test queries ``--rounds``
times): first ``latix serve`` (uvicorn subprocess, ``--workers 2``), then a local 2-CPU Ray
cluster with Serve's proxy and one replica of :func:`latix.distributed.serve.deployment`. Both
use fp32 queries and no lone-request threads (``lone_threads=1``), so the difference is the
serving path (Serve's proxy and its hop to the replica), not the encoder. The top-10 ids of
every answer are checked against in-process search. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import bench_serve as bs  # noqa: E402
import provenance  # noqa: E402


def _ids(out: dict[int, Any]) -> dict[int, list[str]]:
    return {i: [h["id"] for h in json.loads(b)["hits"]] for i, b in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", required=True, help="where the collection is built")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 4])
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix
    import numpy as np
    from latix.collection import index_corpus
    from latix.eval import EmbeddingCache

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    encoder = latix.Encoder.default()
    docs, queries, qrels = bc.load_set("scifact")
    # One passage per document: the cached whole-document encodings (bench_ray.py
    # --whole-docs; the passage encodings of long documents are not cached).
    cache = EmbeddingCache()
    entry = cache.entry_dir(encoder, "document", [d.id for d in docs], [d.text for d in docs])
    if not (entry / "offsets.npy").is_file():
        raise SystemExit(f"no cached document encodings at {entry}")
    dv, do = cache.get_or_compute(encoder, [d.id for d in docs], [d.text for d in docs])
    vecs = {d.id: np.asarray(dv[do[i] : do[i + 1]]) for i, d in enumerate(docs)}
    path = work / "scifact-whole-auto"
    if not latix.Collection.exists(path):
        col = latix.Collection.create(path, encoder=encoder, compression="auto")
        index_corpus(col, docs, commit_every=1000, vectors_fn=lambda b: [vecs[d.id] for d in b])
        col.close()
    qtexts = [queries[q] for q in queries if q in qrels][: a.queries]
    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in qtexts] * a.rounds
    col = latix.Collection.open(path, encoder=latix.Encoder.default(query_precision="fp32"))
    ref = {i: [h.id for h in col.search(q, 10)] for i, q in enumerate(qtexts * a.rounds)}
    col.close()
    rows: list[dict[str, Any]] = []

    def load(name: str, port: int) -> None:
        bs.http_load(port, bodies[:40], 1)  # warm up
        for c in a.levels:
            r, out = bs.http_load(port, bodies, c)
            got = _ids(out)
            same = sum(got[i] == ref[i] for i in ref)
            rows.append(
                {"server": name, "clients": c, **{k: v for k, v in r.items() if k[0] != "_"}}
            )
            rows[-1]["same_top10"] = f"{same}/{len(ref)}"
            bc.log(f"{name} {c} clients: {rows[-1]}")

    with bc.bench_lock():
        uptime0 = provenance.lines()[-1] if prov else ""
        port = bs.free_port()
        p = bs.start_server(
            path, port, ["--query-precision", "fp32", "--lone-threads", "1", "--threads", "1"]
        )
        try:
            load("latix serve", port)
        finally:
            bs.stop_server(p)
        import ray
        from latix.distributed.serve import deployment
        from ray import serve

        tmp = tempfile.mkdtemp(prefix="latix-ray-")
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tmp,
        )
        try:
            port = bs.free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            t0 = time.time()
            serve.run(deployment(path, workers=2, lone_threads=1), route_prefix="/")
            bc.log(f"deployment ready in {time.time() - t0:.1f} s")
            load("Ray Serve, 1 replica", port)
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"SciFact compressed collection, {len(qtexts)} test queries x {a.rounds}, k=10, "
        "fp32 queries, lone_threads=1, 2 search workers; load before: "
        f"{uptime0}",
        "",
        "| server | clients | p50 ms | p99 ms | QPS | same top 10 as in process |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['p50_ms']} | {r['p99_ms']} | {r['qps']} "
            f"| {r['same_top10']} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
