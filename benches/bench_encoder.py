"""Encoder latency and throughput, against the exported-graph baseline and the machine's sgemm rate.

One command measures, in the same run:

1. **Query latency on 1 thread** (``encode_queries([q])``, one query per call, as a service sees
   it) for a fixed set of 10-word queries and for the SciFact test queries, p50 / p99, for

   * ``exported graph``: the default model's ONNX run as exported (the pre-fusion path, baseline),
   * ``fused fp32``: the fused graph of latix.bert_graph (same weights, float32 arithmetic),
   * ``fused int8``: the same with int8 linear layers (``query_precision="int8"``),

   interleaved (each query runs through every variant in turn, so load drift hits all alike),
   plus a per-step breakdown of one call (tokenize + prepare, forward, project + normalise).
2. **Document throughput** (docs/s, tokens/s) at 1 and 2 threads for the exported graph and the
   fused fp32 graph (documents always run in float32), and the share of the machine's numpy
   float32 sgemm rate (1024^3, best of 10, measured in a subprocess with the same thread count in
   this run) that the model's FLOPs reach. Model FLOPs per token (BERT encoder, L layers, hidden H,
   feed-forward F, sequence length S): 2 * L * (4 H^2 + 2 H F + 2 S H).
3. With ``--quality``: SciFact nDCG@10 on train and test queries for every query variant, exact
   MaxSim over the cached document vectors (latix.eval.EmbeddingCache; encoded once, ~6 min).

    python benches/bench_encoder.py [--docs 128] [--quality] [--corpus FILE] [--unsorted]
                                    [--fp32 DIR] [--threads 1 2] [--json FILE]

Timed runs belong under ``flock /work/team/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from latix.corpus import read_corpus
from latix.encoder import Encoder

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, FFN = 6, 384, 1536  # all-MiniLM-L6-v2

#: Fixed 10-word queries (whitespace words), a service's typical short question.
TEN_WORD_QUERIES = [
    "which drugs lower blood glucose in type 2 diabetes patients",
    "does vitamin d supplementation reduce the risk of bone fractures",
    "how do statins affect muscle pain in older heart patients",
    "what role does gut bacteria play in childhood asthma onset",
    "can regular aerobic exercise slow cognitive decline in early dementia",
    "is there a link between air pollution and lung cancer",
    "which genes are associated with resistance to malaria in africa",
    "how does sleep deprivation change insulin sensitivity in healthy men",
    "do antibiotics given during infancy increase later obesity risk significantly",
    "what causes antibiotic resistance to spread between hospital bacteria strains",
    "are mrna vaccines effective against severe influenza in elderly people",
    "how does smoking during pregnancy affect infant birth weight outcomes",
    "which proteins control cell division errors in human cancer cells",
    "does a mediterranean diet lower blood pressure in obese adults",
    "what is the effect of caffeine on memory consolidation tasks",
    "how do t cells recognise tumour antigens presented by macrophages",
    "can stem cell therapy repair damaged heart tissue after infarction",
    "why do some patients develop chronic pain after minor surgery",
    "does screen time in toddlers delay language development and speech",
    "what mutations in the spike protein increase viral transmission rates",
]
assert all(len(q.split()) == 10 for q in TEN_WORD_QUERIES)

_SGEMM = """
import time, numpy as np
n = 1024
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b
best = 1e9
for _ in range(10):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2 * n**3 / best / 1e9)
"""


def sgemm_gflops(threads: int) -> float:
    """Best-of-10 numpy float32 1024^3 matmul GFLOP/s with ``threads`` BLAS threads."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", _SGEMM], env=env, check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip())


def flops_per_token(seq_len: float) -> float:
    return 2.0 * LAYERS * (4 * HIDDEN**2 + 2 * HIDDEN * FFN + 2 * seq_len * HIDDEN)


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide int8 vs fp32 speed (Linux /proc/cpuinfo; else unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni")}


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "n": len(ms),
    }


def query_latency(
    variants: dict[str, Encoder], queries: list[str], passes: int
) -> dict[str, dict[str, float]]:
    """p50/p99 of one-query ``encode_queries`` calls, variants interleaved query by query."""
    for enc in variants.values():
        for q in queries[:10]:
            enc.encode_queries([q])
    lat: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(passes):
        for q in queries:
            for name, enc in variants.items():
                t0 = time.perf_counter_ns()
                enc.encode_queries([q])
                lat[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: pct(v) for k, v in lat.items()}


def breakdown(enc: Encoder, queries: list[str], passes: int) -> dict[str, float]:
    """Median microseconds of each step of a one-query call, measured separately."""
    steps: dict[str, list[float]] = {"prepare (tokenize, ids)": [], "forward": [], "post": []}
    total: list[float] = []
    for _ in range(passes):
        for q in queries:
            t0 = time.perf_counter_ns()
            p = enc._prepare([q], "query")[0]
            t1 = time.perf_counter_ns()
            ids = np.array([p.ids], np.int64)
            h = enc._forward("query", ids, np.ones_like(ids))
            t2 = time.perf_counter_ns()
            enc._project(h[0, p.keep])
            t3 = time.perf_counter_ns()
            enc.encode_queries([q])
            t4 = time.perf_counter_ns()
            steps["prepare (tokenize, ids)"].append((t1 - t0) / 1e3)
            steps["forward"].append((t2 - t1) / 1e3)
            steps["post"].append((t3 - t2) / 1e3)
            total.append((t4 - t3) / 1e3)
    out = {k: round(float(np.median(v)), 1) for k, v in steps.items()}
    out["whole encode_queries call"] = round(float(np.median(total)), 1)
    return out


def session_option_sweep(rounds: int) -> list[dict[str, Any]]:
    """One 14-token query through the fused int8 graph under onnxruntime setting variants.

    Every variant is a separate session over the same graph (or another way to call the base
    session), run interleaved round by round; p50 ratio to latix's own settings. Besides wall
    time, the process's CPU time per call (all threads: for 1-thread variants the caller's work
    alone, which other processes' load inflates far less than wall time; for 2-thread ones it
    includes the second thread's spinning), and the fused float32 graph for comparison.
    """
    import onnxruntime as ort
    from latix import bert_graph as bg
    from latix.models import default_model_files

    files = default_model_files()
    shape = bg.shape_from_config(files["config.json"])
    w = bg.weights_from_onnx(files["model.onnx"], shape)
    graph = bg.build(w, int8=True)
    level = ort.GraphOptimizationLevel

    def opts(threads: int = 1, **kw: Any) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = kw.pop("level", level.ORT_ENABLE_ALL)
        for k, v in kw.items():
            if k == "no_spinning":
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            else:
                setattr(so, k, v)
        return so

    variants = {
        "latix settings": opts(),
        "optimisation level basic": opts(level=level.ORT_ENABLE_BASIC),
        "optimisation level extended": opts(level=level.ORT_ENABLE_EXTENDED),
        "memory pattern off": opts(enable_mem_pattern=False),
        "CPU memory arena off": opts(enable_cpu_mem_arena=False),
        "intra-op spinning off": opts(no_spinning=True),
        "parallel execution mode": opts(execution_mode=ort.ExecutionMode.ORT_PARALLEL),
        "2 intra-op threads": opts(threads=2),
        "2 intra-op threads, spinning off": opts(threads=2, no_spinning=True),
    }
    prov = ["CPUExecutionProvider"]
    sess = {k: bg.session(ort, graph, so, prov) for k, so in variants.items()}
    sess["float32 graph (latix settings)"] = bg.session(ort, bg.build(w), opts(), prov)
    base = sess["latix settings"]
    ids = np.random.default_rng(0).integers(1000, shape.vocab, (1, 14)).astype(np.int32)
    mask = np.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": mask}
    ov = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
    io = base.io_binding()
    for k, v in ov.items():
        io.bind_ortvalue_input(k, v)
    io.bind_output("last_hidden_state")
    ids32 = np.zeros((1, 32), np.int32)
    ids32[0, :14] = ids[0]
    mask32 = (ids32 != 0).astype(np.int32)
    calls: dict[str, Callable[[], object]] = {
        k: (lambda s=s: s.run(None, feeds)) for k, s in sess.items()
    }
    calls["run(['last_hidden_state'])"] = lambda: base.run(["last_hidden_state"], feeds)
    calls["run_with_ort_values"] = lambda: base.run_with_ort_values(["last_hidden_state"], ov)[
        0
    ].numpy()
    calls["IO binding"] = lambda: (base.run_with_iobinding(io), io.copy_outputs_to_cpu())
    calls["padded to a fixed 32 tokens"] = lambda: base.run(
        None, {"input_ids": ids32, "attention_mask": mask32}
    )
    for f in calls.values():
        for _ in range(10):
            f()
    t: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            c0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            f()
            t[k].append((time.perf_counter_ns() - t0) / 1e3)
            cpu[k].append((time.process_time_ns() - c0) / 1e3)
    b = float(np.median(t["latix settings"]))
    bc = float(np.median(cpu["latix settings"]))
    rows = []
    for k, v in t.items():
        rows.append(
            {
                "variant": k,
                "p50_us": round(float(np.median(v))),
                "min_us": round(min(v)),
                "ratio_p50": round(float(np.median(v)) / b, 3),
                "cpu_p50_us": round(float(np.median(cpu[k]))),
                "cpu_ratio_p50": round(float(np.median(cpu[k])) / bc, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def doc_throughput(enc: Encoder, texts: list[str], reps: int) -> dict[str, float]:
    enc.encode_documents(texts[:16])  # warm-up (allocations)
    best = 1e9
    n_tok = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        out = enc.encode_documents_packed(texts)
        best = min(best, time.perf_counter() - t0)
        # model input tokens: output vectors plus the dropped [CLS]/[SEP]
        n_tok = int(out.offsets[-1]) + (0 if enc.config.keep_special_tokens else 2 * len(texts))
    return {
        "docs_per_s": len(texts) / best,
        "tokens_per_s": n_tok / best,
        "avg_tokens": n_tok / len(texts),
    }


def scifact_quality(
    data: Path, variants: dict[str, Callable[[], Encoder]], splits: list[str]
) -> list[dict[str, Any]]:
    """nDCG@10 (and the other latix.eval metrics) on SciFact train / test, exact MaxSim.

    Variants whose query vectors equal the exported graph's to float32 rounding rank the same way;
    :func:`max_query_difference` shows which those are without searching (a search of all
    1,109 queries takes minutes per variant).
    """
    from latix.eval import EmbeddingCache, evaluate
    from latix.index import Index

    ref = Encoder.default(n_threads=2, fused=False)
    docs = list(read_corpus(data / "scifact/corpus.jsonl.gz"))
    ids, texts = [d.id for d in docs], [d.text for d in docs]
    vecs, offs = EmbeddingCache().get_or_compute(ref, ids, texts)
    queries = {}
    for line in (data / "scifact/queries.jsonl").open():
        o = json.loads(line)
        queries[o["_id"]] = o["text"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="latix-bench-enc-") as tmp:
        index = Index.create(Path(tmp) / "idx", dim=ref.dim)
        for s in range(0, len(ids), 512):
            part = range(s, min(s + 512, len(ids)))
            index.add(
                [ids[i] for i in part], [np.asarray(vecs[offs[i] : offs[i + 1]]) for i in part]
            )
        index.commit()
        for split in splits:
            qrels: dict[str, dict[str, int]] = {}
            for line in (data / f"scifact/qrels/{split}.tsv").open():
                q, d, r = line.rstrip("\n").split("\t")[:3]
                if q == "query-id":
                    continue
                qrels.setdefault(q, {})[d] = int(r)
            for name, make in variants.items():
                res = evaluate(index, make(), queries, qrels, n_threads=2)
                rows.append({"split": split, "queries": name, **res.metrics})
                print(json.dumps(rows[-1]), flush=True)
        index.close()
    return rows


def max_query_difference(
    data: Path, variants: dict[str, Callable[[], Encoder]]
) -> dict[str, dict[str, float]]:
    """Per variant, over all SciFact queries: max |v - exported| and min cosine per token."""
    texts = [json.loads(line)["text"] for line in (data / "scifact/queries.jsonl").open()]
    ref = Encoder.default(n_threads=2, fused=False).encode_queries(texts)
    out = {}
    for name, make in variants.items():
        got = make().encode_queries(texts)
        diff = max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True))
        cos = np.concatenate([(g * r).sum(1) for g, r in zip(got, ref, strict=True)])
        out[name] = {
            "max_abs_diff": diff,
            "min_cos": float(cos.min()),
            "mean_cos": float(cos.mean()),
            "queries": len(texts),
        }
        print(json.dumps({"variant": name, **out[name]}), flush=True)
    return out


def int8_per_token(threads: int) -> Encoder:
    """The int8 query encoder with per-token activation scales (``bert_graph.build``'s
    ``activation_scales="token"``; batch-independent), measured here before the library offers
    it: the default encoder with its query session replaced."""
    import onnxruntime as ort
    from latix import bert_graph as bg
    from latix.encoder import _PROVIDERS, _session_options
    from latix.models import default_model_files

    enc = Encoder.default(n_threads=threads, query_precision="int8")
    f = default_model_files()
    w = bg.weights_from_onnx(f["model.onnx"], bg.shape_from_config(f["config.json"]))
    graph = bg.build(w, int8=True, activation_scales="token")
    enc._fused_query = bg.session(ort, graph, _session_options(ort, threads), _PROVIDERS)
    return enc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=os.environ.get("LATIX_DATA", str(ROOT / "../shared/data")))
    ap.add_argument("--docs", type=int, default=128)
    ap.add_argument("--corpus", default=None, help="corpus file (default: SciFact under --data)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--passes", type=int, default=3, help="passes over each query set")
    ap.add_argument("--fp32", default=None, help="also an fp32 model directory (latix export)")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--unsorted", action="store_true", help="also measure unsorted batching")
    ap.add_argument("--quality", action="store_true", help="SciFact nDCG@10 per query variant")
    ap.add_argument(
        "--quality-variants",
        nargs="*",
        default=["exported graph", "fused int8"],
        help="query variants searched for --quality (the others are compared vector by vector)",
    )
    ap.add_argument("--splits", nargs="*", default=["test", "train"])
    ap.add_argument("--no-latency", action="store_true", help="skip the query-latency part")
    ap.add_argument(
        "--session-options",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also sweep onnxruntime session options on the fused int8 graph (ROUNDS rounds)",
    )
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = ap.parse_args()
    data = Path(args.data)
    report: dict[str, Any] = {
        "cpu": {"machine": platform.machine(), **cpu_flags()},
        "nproc": os.cpu_count(),
    }
    print(json.dumps(report["cpu"]))

    def make_variants(t: int) -> dict[str, Callable[[], Encoder]]:
        v: dict[str, Callable[[], Encoder]] = {
            "exported graph": lambda: Encoder.default(n_threads=t, fused=False),
            "fused fp32": lambda: Encoder.default(n_threads=t),
            "fused int8": lambda: Encoder.default(n_threads=t, query_precision="int8"),
            "fused int8, per-token scales": lambda: int8_per_token(t),
        }
        if args.fp32:
            v["fp32 export (latix export)"] = lambda: Encoder.load(args.fp32, n_threads=t)
        return v

    # 1. Query latency, 1 thread.
    if not args.no_latency:
        scifact_q = []
        for line in (data / "scifact/queries.jsonl").open():
            scifact_q.append(json.loads(line)["text"])
        test_ids = set()
        for line in (data / "scifact/qrels/test.tsv").open():
            q = line.split("\t")[0]
            if q != "query-id":
                test_ids.add(q)
        scifact_test = [
            json.loads(line)["text"]
            for line in (data / "scifact/queries.jsonl").open()
            if json.loads(line)["_id"] in test_ids
        ]
        encs = {}
        load_s = {}
        for k, make in make_variants(1).items():
            t0 = time.perf_counter()
            encs[k] = make()
            load_s[k] = round(time.perf_counter() - t0, 2)
        report["load_s"] = load_s
        print(json.dumps({"load_s": load_s}), flush=True)
        tok = encs["fused fp32"]
        sets = {"10-word": TEN_WORD_QUERIES, "SciFact test": scifact_test}
        lat_rows = []
        for set_name, qs in sets.items():
            n_tok = np.mean([len(tok._prepare([q], "query")[0].ids) for q in qs])
            res = query_latency(encs, qs, args.passes)
            base = res["exported graph"]["p50_ms"]
            for name, r in res.items():
                row = {
                    "set": set_name,
                    "queries": len(qs),
                    "avg_tokens": round(float(n_tok), 1),
                    "variant": name,
                    **r,
                    "speedup_p50": round(base / r["p50_ms"], 2),
                }
                lat_rows.append(row)
                print(json.dumps(row), flush=True)
        report["query_latency_1_thread"] = lat_rows
        report["breakdown_us"] = {
            name: breakdown(encs[name], TEN_WORD_QUERIES, args.passes)
            for name in ("exported graph", "fused fp32", "fused int8")
        }
        print(json.dumps(report["breakdown_us"]), flush=True)
        del encs, tok
    if args.session_options:
        report["session_options"] = session_option_sweep(args.session_options)

    # 2. Document throughput.
    docs = []
    for d in read_corpus(args.corpus or data / "scifact/corpus.jsonl.gz"):
        if len(docs) == args.docs:
            break
        docs.append(d.text)
    doc_models: dict[str, Callable[[int], Encoder]] = {
        "exported graph": lambda t: Encoder.default(n_threads=t, fused=False),
        "fused fp32": lambda t: Encoder.default(n_threads=t),
    }
    if args.unsorted:

        def unsorted(t: int) -> Encoder:
            e = Encoder.default(n_threads=t)
            e.sort_by_length = False
            return e

        doc_models["fused fp32, batches in input order"] = unsorted
    if args.fp32:
        doc_models["fp32 export (latix export)"] = lambda t: Encoder.load(args.fp32, n_threads=t)
    doc_rows = []
    for t in args.threads if docs else []:
        ceiling = sgemm_gflops(t)
        base_rate = None
        for name, make in doc_models.items():
            r = doc_throughput(make(t), docs, args.reps)
            gflops = flops_per_token(r["avg_tokens"]) * r["tokens_per_s"] / 1e9
            base_rate = base_rate or r["docs_per_s"]
            doc_rows.append(
                {
                    "model": name,
                    "threads": t,
                    **{k: round(v, 1) for k, v in r.items()},
                    "model_gflops": round(gflops, 1),
                    "sgemm_gflops": round(ceiling, 1),
                    "fraction_of_sgemm": round(gflops / ceiling, 3),
                    "speedup": round(r["docs_per_s"] / base_rate, 2),
                }
            )
            print(json.dumps(doc_rows[-1]), flush=True)
    report["documents"] = doc_rows

    # 3. Quality.
    if args.quality:
        variants = {k: v for k, v in make_variants(2).items() if "latix export" not in k}
        report["query_vectors_vs_exported"] = max_query_difference(data, variants)
        report["quality"] = scifact_quality(
            data, {k: v for k, v in variants.items() if k in args.quality_variants}, args.splits
        )

    print()
    if "query_latency_1_thread" in report:
        print("| query set | avg tokens | variant | p50 ms | p99 ms | speed-up (p50) |")
        print("|---|---|---|---|---|---|")
        for r in report["query_latency_1_thread"]:
            print(
                f"| {r['set']} | {r['avg_tokens']} | {r['variant']} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['speedup_p50']:.2f} |"
            )
        print("\nload time (s): " + ", ".join(f"{k} {v}" for k, v in report["load_s"].items()))
        print(
            "\n| step (10-word queries, µs, median) | " + " | ".join(report["breakdown_us"]) + " |"
        )
        print("|---|" + "---|" * len(report["breakdown_us"]))
        steps = next(iter(report["breakdown_us"].values()))
        for step in steps:
            vals = " | ".join(f"{b[step]:.0f}" for b in report["breakdown_us"].values())
            print(f"| {step} | {vals} |")
    print(
        "\n| model | threads | docs/s | tokens/s | model GFLOP/s | sgemm GFLOP/s | share of sgemm "
        "| speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in doc_rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['docs_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['model_gflops']:.1f} | {r['sgemm_gflops']:.1f} "
            f"| {100 * r['fraction_of_sgemm']:.0f}% | {r['speedup']:.2f} |"
        )
    if "query_vectors_vs_exported" in report:
        print("\n| query encoder | max abs diff to exported graph | min cos | mean cos |")
        print("|---|---|---|---|")
        for k, r in report["query_vectors_vs_exported"].items():
            print(f"| {k} | {r['max_abs_diff']:.2e} | {r['min_cos']:.5f} | {r['mean_cos']:.5f} |")
    if "quality" in report:
        print("\n| split | query encoder | nDCG@10 | Recall@100 | MRR@10 |")
        print("|---|---|---|---|---|")
        for r in report["quality"]:
            print(
                f"| {r['split']} | {r['queries']} | {r['nDCG@10']:.4f} | {r['Recall@100']:.4f} "
                f"| {r['MRR@10']:.4f} |"
            )
    if "session_options" in report:
        print("\n| onnxruntime setting (fused int8, 14 tokens) | p50 µs | min µs | p50 ratio |")
        print("|---|---|---|---|")
        for r in report["session_options"]:
            print(f"| {r['variant']} | {r['p50_us']} | {r['min_us']} | {r['ratio_p50']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
