"""Encoder throughput and latency, against the machine's measured FLOP ceiling.

Encodes a slice of SciFact documents with the default int8 model (and, with ``--fp32 DIR``, an fp32
ONNX export of the same model, e.g. from ``latix export``), at 1 and 2 onnxruntime threads, and
reports docs/s, tokens/s, the fraction of the numpy sgemm ceiling that the model's FLOPs reach, and
the latency of one short query.

Model FLOPs per token (BERT encoder, L layers, hidden H, feed-forward F, sequence length S):
2 * L * (4 H^2 + 2 H F + 2 S H)  (Q, K, V, O projections; FFN; attention scores and mixing).
The sgemm ceiling is measured in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.

    python benches/bench_encoder.py [--docs 256] [--fp32 DIR] [--unsorted] [--corpus FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from latix.corpus import read_corpus
from latix.encoder import Encoder

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, FFN = 6, 384, 1536  # all-MiniLM-L6-v2

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


def bench(enc: Encoder, texts: list[str], reps: int) -> dict[str, float]:
    enc.encode_documents(texts[:16])  # warm-up (allocations, graph optimisation)
    best = 1e9
    n_tok = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        out = enc.encode_documents_packed(texts)
        best = min(best, time.perf_counter() - t0)
        # model input tokens: output vectors plus the dropped [CLS]/[SEP]
        n_tok = int(out.offsets[-1]) + (0 if enc.config.keep_special_tokens else 2 * len(texts))
    q = "what causes insulin resistance"
    enc.encode_queries([q])
    lat = []
    for _ in range(100):
        t0 = time.perf_counter()
        enc.encode_queries([q])
        lat.append((time.perf_counter() - t0) * 1e3)
    return {
        "docs_per_s": len(texts) / best,
        "tokens_per_s": n_tok / best,
        "avg_tokens": n_tok / len(texts),
        "query_p50_ms": float(np.percentile(lat, 50)),
        "query_p99_ms": float(np.percentile(lat, 99)),
    }


def _unsorted(enc: Encoder) -> Encoder:
    enc.sort_by_length = False
    return enc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=os.environ.get("LATIX_DATA", str(ROOT / "../shared/data")))
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--corpus", default=None, help="corpus file (default: SciFact under --data)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--fp32", default=None, help="fp32 model directory (latix export output)")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--unsorted", action="store_true", help="also measure unsorted batching")
    args = ap.parse_args()
    docs = []
    for d in read_corpus(args.corpus or Path(args.data) / "scifact/corpus.jsonl.gz"):
        docs.append(d.text)
        if len(docs) == args.docs:
            break
    models = {"int8 (default)": lambda t: Encoder.default(n_threads=t)}
    if args.unsorted:
        models["int8, batches in input order"] = lambda t: _unsorted(Encoder.default(n_threads=t))
    if args.fp32:
        models["fp32 export"] = lambda t: Encoder.load(args.fp32, n_threads=t)
    rows = []
    for t in args.threads:
        ceiling = sgemm_gflops(t)
        for name, make in models.items():
            r = bench(make(t), docs, args.reps)
            gflops = flops_per_token(r["avg_tokens"]) * r["tokens_per_s"] / 1e9
            rows.append(
                {
                    "model": name,
                    "threads": t,
                    **r,
                    "model_gflops": gflops,
                    "sgemm_gflops": ceiling,
                    "fraction_of_sgemm": gflops / ceiling,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| model | threads | docs/s | tokens/s | model GFLOP/s | sgemm GFLOP/s | fraction "
        "| query p50 ms | query p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['docs_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['model_gflops']:.1f} | {r['sgemm_gflops']:.1f} | {r['fraction_of_sgemm']:.2f} "
            f"| {r['query_p50_ms']:.2f} | {r['query_p99_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
