"""Would micro-batching int8 queries pay? (issue 11, item 3: the 16-client p99.)

``latix serve`` encodes int8 queries one per encoder call: the default int8 graph quantises a
linear layer's whole input with one scale (``DynamicQuantizeMatMul``), so a query batched with
others would get other vectors. Per-token activation scales (``bert_graph.build(...,
activation_scales="token")``) make every text's vectors independent of its batch-mates, at a
cost per call. This script measures, on the SciFact test queries taken in groups of ``B``
consecutive queries (what ``B`` concurrent clients would send at once), the encoder's **CPU
time per query** (``time.process_time``, 1 intra-op thread: comparable on a loaded machine)
for, interleaved group by group:

* ``tensor, 1 per call``: today's server (the default int8 graph, one query per call);
* ``token, 1 per call``: per-token scales, one query per call;
* ``token, B per call (sub-batches of S, sorted by length)``: per-token scales, the group in
  one ``encode_queries`` call; the encoder sorts the texts by length and pads each sub-batch
  of ``S`` to its longest (``Encoder.batch_size``);
* ``tensor, B per call``: the default graph batched (what batching would cost if the vectors
  were allowed to change; reference only).

And what the answers would be: max |v_batched - v_lone| of the per-token graph (batch
independence), and with ``--collection``, the share of queries whose top-10
(``Collection.search(query_vectors=...)``) equals today's (tensor, lone) for the per-token
graph lone and batched, and SciFact nDCG@10 of both graphs.

``python benches/int8_batching.py --collection DIR --out bench-results/int8-batching``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_collection as bc  # noqa: E402
import bench_encoder as be  # noqa: E402
import provenance  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--collection", default=None, help="SciFact collection (top-10 and nDCG)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--group", type=int, default=16, help="B: queries arriving together")
    ap.add_argument("--sub", type=int, nargs="*", default=[4, 16], help="S: sub-batch sizes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    ap.add_argument("--no-lock", action="store_true", help="trial run (not quoted)")
    a = ap.parse_args()
    prov = provenance.lines()
    print("\n".join(prov), flush=True)
    import latix

    _, queries, qrels = bc.load_set("scifact")
    qids = [q for q in queries if q in qrels][: a.queries]
    qs = [queries[q] for q in qids]
    tensor = latix.Encoder.default(n_threads=1, query_precision="int8")
    token = be.int8_per_token(1)
    b = a.group
    groups = [qs[s : s + b] for s in range(0, len(qs) - b + 1, b)]

    def lone(enc: Any, batch: int) -> Any:
        def run(g: list[str]) -> list[Any]:
            return [enc.encode_queries([q])[0] for q in g]

        return run

    def batched(enc: Any, sub: int) -> Any:
        def run(g: list[str]) -> list[Any]:
            enc.batch_size = sub
            try:
                return enc.encode_queries(g)
            finally:
                enc.batch_size = 32

        return run

    variants: dict[str, Any] = {
        "tensor, 1 per call (today)": lone(tensor, 1),
        "token, 1 per call": lone(token, 1),
    }
    for s in a.sub:
        variants[f"token, {b} per call (sub-batches of {s}, sorted)"] = batched(token, s)
    for s in a.sub:
        variants[f"tensor, {b} per call (sub-batches of {s}, sorted; vectors change)"] = batched(
            tensor, s
        )
    for g in groups[:2]:
        for f in variants.values():
            f(g)
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    loads = []
    with contextlib.nullcontext() if a.no_lock else bc.bench_lock():
        loads.append(provenance.load_average())
        for _ in range(a.rounds):
            for g in groups:
                for k, f in variants.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    f(g)
                    cpu[k].append((time.process_time() - c0) * 1e3 / len(g))
                    wall[k].append((time.perf_counter() - w0) * 1e3 / len(g))
        loads.append(provenance.load_average())
    res: dict[str, Any] = {"group": b, "queries": len(groups) * b, "load_averages": loads}
    base = float(np.median(cpu["tensor, 1 per call (today)"]))
    res["cpu_ms_per_query"] = {
        k: {
            "median": round(float(np.median(v)), 3),
            "mean": round(float(np.mean(v)), 3),
            "ratio_to_today": round(float(np.median(v)) / base, 3),
            "wall_median": round(float(np.median(wall[k])), 3),
        }
        for k, v in cpu.items()
    }
    # batch independence of the per-token graph
    flat = [q for g in groups for q in g]
    v_tok_lone = [token.encode_queries([q])[0] for q in flat]
    v_ten_lone = [tensor.encode_queries([q])[0] for q in flat]
    diffs = []
    v_tok_b: list[Any] = []
    v_ten_b: list[Any] = []
    for s in a.sub:
        vb = [v for g in groups for v in batched(token, s)(g)]
        diffs.append(max(float(np.max(np.abs(x - y))) for x, y in zip(vb, v_tok_lone, strict=True)))
        v_tok_b = vb
        v_ten_b = [v for g in groups for v in batched(tensor, s)(g)]
    res["token_batched_vs_lone_max_abs"] = dict(zip(map(str, a.sub), diffs, strict=True))
    res["tensor_batched_vs_lone_max_abs"] = max(
        float(np.max(np.abs(x - y))) for x, y in zip(v_ten_b, v_ten_lone, strict=True)
    )
    if a.collection:
        from latix.eval import score_run

        col = latix.Collection.open(a.collection)

        def top(vs: list[Any]) -> list[list[str]]:
            return [[h.id for h in col.search(query_vectors=v, k=10, n_threads=1)] for v in vs]

        today = top(v_ten_lone)
        for name, vs in (
            ("token, lone", v_tok_lone),
            ("token, batched", v_tok_b),
            ("tensor, batched", v_ten_b),
        ):
            t = top(vs)
            res[f"same_top10_as_today/{name}"] = sum(x == y for x, y in zip(t, today, strict=True))
        qsub = {qids[i]: qrels[qids[i]] for i in range(len(flat))}
        for name, vs in (("tensor", v_ten_lone), ("token", v_tok_lone)):
            run = {
                qids[i]: {h.id: float(h.score) for h in col.search(query_vectors=v, k=10)}
                for i, v in enumerate(vs)
            }
            res[f"ndcg@10/{name}"] = round(score_run(run, qsub)["nDCG@10"], 4)
        col.close()
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out + ".json").write_text(json.dumps({"provenance": prov, **res}, indent=1))
        Path(a.out + ".md").write_text(report(res, prov))
    return 0


def report(r: dict[str, Any], prov: list[str]) -> str:
    lines = ["# int8 query micro-batching: what it would save (issue 11)", "", "Provenance:"]
    loads = " ; ".join(r["load_averages"])
    lines += [*prov, "", f"Load averages (start / end of the timed part): {loads}."]
    lines += [
        "",
        f"SciFact test queries in groups of {r['group']} consecutive queries ({r['queries']} "
        "queries), variants interleaved group by group, 1 intra-op thread; encoder CPU time "
        "per query (`time.process_time`).",
        "",
        "| variant | CPU ms / query (median) | mean | ratio to today | wall ms / query |",
        "|---|---|---|---|---|",
    ]
    for k, v in r["cpu_ms_per_query"].items():
        lines.append(
            f"| {k} | {v['median']} | {v['mean']} | {v['ratio_to_today']} | {v['wall_median']} |"
        )
    lines += [
        "",
        f"- per-token graph, batched vs lone: max |diff| {r['token_batched_vs_lone_max_abs']} "
        f"(by sub-batch size); default graph batched vs lone: "
        f"{r['tensor_batched_vs_lone_max_abs']:.3g}.",
    ]
    for k, v in r.items():
        if k.startswith(("same_top10", "ndcg")):
            lines.append(f"- {k}: {v}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
