"""Benchmark latix.maxsim against maxsim-cpu (PyPI) and numpy's bare Q @ D.T.

One command: ``python benches/bench_maxsim.py`` (or ``make bench``); ``--quick`` for a smaller run.

Synthetic, seeded, L2-normalised data: 20,000 documents of 30-200 tokens (uniform), a 32-token
query, d = 128 and 384, f32 and f16 storage, 1 and 2 threads. Every engine runs in its own fresh
subprocess that regenerates exactly the same data from the seed, because two baselines fix their
configuration at load time: maxsim-cpu sizes its (rayon global) pool from RAYON_NUM_THREADS (and
its bundled OpenMP runtime from OMP_NUM_THREADS) on first use, and OpenBLAS reads
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when numpy is imported (both are unset for the benchmark).

Figures are the median wall time over repeats after a warm-up. GFLOP/s counts 2 * nq * n_tokens * d
for every engine (numpy's product does exactly these multiply-adds, without the max, and is the
arithmetic ceiling of a BLAS library on this machine). maxsim-cpu has no f16 input and numpy has no
fast f16 product, so f16 rows are compared with their f32 figures (marked). maxsim-cpu 0.1.0
returns wrong scores or crashes when query tokens x dim > 4096 (see DESIGN.md), so the query is
scored in chunks of tokens with chunk * dim <= 4096 and the chunk scores are added (MaxSim is a sum
over query tokens); its results are checked against a float64 numpy MaxSim on a sample.
Results go to stdout and bench-results/maxsim.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from provenance import git_commit

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261125
NQ = 32
MAXSIM_CPU_LIMIT = 4096  # query tokens x dim above which maxsim-cpu 0.1.0 misbehaves

F32Array = npt.NDArray[np.float32]


def make_data(
    dim: int, n_docs: int, seed: int = SEED
) -> tuple[F32Array, F32Array, npt.NDArray[np.int64]]:
    """Deterministic query (NQ, dim), documents (n_tokens, dim) and offsets (n_docs + 1,)."""
    rng = np.random.default_rng([seed, dim, n_docs])
    lengths = rng.integers(30, 201, size=n_docs)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    query = rng.standard_normal((NQ, dim), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    n_tok = int(offsets[-1])
    docs = np.empty((n_tok, dim), dtype=np.float32)
    step = 1 << 16  # generate and normalise in blocks to keep temporaries small
    for a in range(0, n_tok, step):
        block = rng.standard_normal((min(step, n_tok - a), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        docs[a : a + len(block)] = block
    return query, docs, offsets


def reference_scores(
    query: F32Array, docs: npt.NDArray[np.floating], offsets: npt.NDArray[np.int64], ids: list[int]
) -> npt.NDArray[np.float64]:
    """Float64 numpy MaxSim of the documents `ids` (the correctness reference)."""
    q = query.astype(np.float64)
    out = []
    for i in ids:
        d = docs[offsets[i] : offsets[i + 1]].astype(np.float64)
        out.append((q @ d.T).max(axis=1).sum())
    return np.array(out)


def sample_ids(n_docs: int) -> list[int]:
    return list(np.random.default_rng(1).choice(n_docs, size=min(200, n_docs), replace=False))


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of `fn`, after a warm-up."""
    fn()  # warm-up: page in the data, start thread pools
    walls, cpus = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def n_os_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


# ----------------------------------------------------------------------------------- workers


def worker_latix(dim: int, n_docs: int, repeats: int) -> dict[str, Any]:
    import latix

    query, docs, offsets = make_data(dim, n_docs)
    ids = sample_ids(n_docs)
    ref = reference_scores(query, docs, offsets, ids)
    docs16 = docs.astype(np.float16)
    res: dict[str, Any] = {"kernel": latix.kernel_name(), "n_tokens": int(offsets[-1])}
    scores: dict[str, F32Array] = {}
    for storage, d in (("f32", docs), ("f16", docs16)):
        scores[storage] = latix.maxsim(query, d, offsets, n_threads=1)
        for threads in (1, 2):
            s = latix.maxsim(query, d, offsets, n_threads=threads)
            assert np.array_equal(s, scores[storage]), "thread count changed the scores"
            call = functools.partial(latix.maxsim, query, d, offsets, n_threads=threads)
            t = median_time(call, repeats)
            res[f"{storage}_{threads}"] = t
    del docs16
    res["err_vs_numpy"] = float(np.abs(scores["f32"][ids] - ref).max())
    res["f16_vs_f32"] = float(np.abs(scores["f16"] - scores["f32"]).max())
    return res


def worker_maxsim_cpu(dim: int, n_docs: int, repeats: int, threads: int) -> dict[str, Any]:
    import maxsim_cpu

    query, docs, offsets = make_data(dim, n_docs)
    doc_list = [docs[offsets[i] : offsets[i + 1]] for i in range(n_docs)]
    chunk = max(1, MAXSIM_CPU_LIMIT // dim)
    parts = [np.ascontiguousarray(query[a : a + chunk]) for a in range(0, NQ, chunk)]

    def run() -> npt.NDArray[np.float32]:
        total = np.asarray(maxsim_cpu.maxsim_scores_variable(parts[0], doc_list), dtype=np.float32)
        for p in parts[1:]:
            total = total + np.asarray(maxsim_cpu.maxsim_scores_variable(p, doc_list))
        return total

    scores = run()
    ids = sample_ids(n_docs)
    err = float(np.abs(scores[ids] - reference_scores(query, docs, offsets, ids)).max())
    t = median_time(run, repeats)
    return {
        "time": t,
        "err_vs_numpy": err,
        "query_chunks": len(parts),
        "os_threads": n_os_threads(),
    }


def worker_numpy(dim: int, n_docs: int, repeats: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_info, threadpool_limits

    query, docs, _ = make_data(dim, n_docs)
    out = np.empty((NQ, docs.shape[0]), dtype=np.float32)
    res: dict[str, Any] = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            res[f"time_{threads}"] = median_time(lambda: np.matmul(query, docs.T, out=out), repeats)
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    res["blas"] = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel)" for i in blas
    )
    return res


def run_worker(args: list[str], env_extra: dict[str, str], drop: tuple[str, ...] = ()) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- driver


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 documents, 3 repeats")
    ap.add_argument("--docs", type=int, default=None, help="number of documents (default 20000)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7)")
    ap.add_argument("--dims", type=str, default="128,384")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "maxsim.md")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        kind, dim, n_docs, repeats, *rest = a.worker
        if kind == "latix":
            r = worker_latix(int(dim), int(n_docs), int(repeats))
        elif kind == "maxsim_cpu":
            r = worker_maxsim_cpu(int(dim), int(n_docs), int(repeats), int(rest[0]))
        else:
            r = worker_numpy(int(dim), int(n_docs), int(repeats))
        print(json.dumps(r))
        return

    n_docs = a.docs or (2000 if a.quick else 20000)
    repeats = a.repeats or (3 if a.quick else 7)
    dims = [int(x) for x in a.dims.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    rows: list[list[str]] = []  # wall clock
    cpu_rows: list[list[str]] = []  # process CPU time (all threads)
    notes: dict[str, Any] = {}
    for dim in dims:
        print(f"d={dim}: latix ...", flush=True)
        lx = run_worker(["latix", str(dim), str(n_docs), str(repeats)], {})
        mc = {}
        for th in (1, 2):
            print(f"d={dim}: maxsim-cpu, {th} thread(s) ...", flush=True)
            env = {"RAYON_NUM_THREADS": str(th), "OMP_NUM_THREADS": str(th)}
            mc[th] = run_worker(["maxsim_cpu", str(dim), str(n_docs), str(repeats), str(th)], env)
        print(f"d={dim}: numpy ...", flush=True)
        npy = run_worker(
            ["numpy", str(dim), str(n_docs), str(repeats)],
            {},
            drop=("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"),
        )
        notes["kernel"] = lx["kernel"]
        notes["blas"] = npy["blas"]
        notes.setdefault("checks", []).append(
            f"d={dim}: max |latix - numpy f64| = {lx['err_vs_numpy']:.2e}, "
            f"max |maxsim-cpu - numpy f64| = {mc[1]['err_vs_numpy']:.2e} "
            f"(query in {mc[1]['query_chunks']} chunk(s)); OS threads after maxsim-cpu ran: "
            f"{mc[1]['os_threads']} at 1, {mc[2]['os_threads']} at 2"
        )
        flops = 2.0 * NQ * lx["n_tokens"] * dim
        for storage in ("f32", "f16"):
            for th in (1, 2):
                mark = "" if storage == "f32" else " (f32)"
                diff = f"{lx['f16_vs_f32']:.1e}" if storage == "f16" else ""
                for which, table in ((0, rows), (1, cpu_rows)):
                    t = lx[f"{storage}_{th}"][which]
                    g = flops / t / 1e9
                    gm = flops / mc[th]["time"][which] / 1e9
                    gn = flops / npy[f"time_{th}"][which] / 1e9
                    table.append(
                        [
                            f"d={dim} {storage} {th}t",
                            f"{n_docs / t:,.0f}",
                            f"{g:.1f}",
                            f"{gm:.1f}{mark}",
                            f"{gn:.1f}{mark}",
                            f"{g / gm:.2f}x",
                            f"{g / gn:.2f}x",
                            diff,
                        ]
                    )
        print("wall clock:")
        print_table(rows)
        print("per CPU-second (process CPU time of all threads):")
        print_table(cpu_rows)
    header = [
        "config",
        "latix docs/s",
        "latix GFLOP/s",
        "maxsim-cpu GFLOP/s",
        "numpy Q@D.T GFLOP/s",
        "latix / maxsim-cpu",
        "latix / numpy",
        "f16-f32 max abs diff",
    ]
    load1 = os.getloadavg()
    md = [
        "# MaxSim benchmark",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; command: `python benches/bench_maxsim.py"
        f"{' --quick' if a.quick else ''}`",
        f"- commit: {git_commit()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); latix kernel: `{notes['kernel']}`",
        f"- data: {n_docs:,} documents of 30-200 tokens (uniform), {NQ}-token query, "
        "L2-normalised, seeded; median of "
        f"{repeats} runs after a warm-up, wall clock",
        f"- numpy: {notes['blas']} (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset), threads set "
        "with threadpoolctl; bare product Q @ D.T over all tokens, no max",
        "- maxsim-cpu 0.1.0: threads set with RAYON_NUM_THREADS and OMP_NUM_THREADS in a fresh "
        f"process; query scored in chunks of <= {MAXSIM_CPU_LIMIT} tokens x dim and summed "
        "(at d=384 that is 4 calls, each reading every document: its d=384 figures include the "
        "cost of this workaround for its bug)",
        "- f16 rows: latix reads f16 storage; the baselines have no f16 path, their f32 "
        "figures are shown (marked)",
        f"- load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} "
        "(shared machine: other jobs compete for the cores and memory bandwidth)",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "The same runs measured in process CPU time (all threads) instead of wall time: work per",
        "CPU-second, which a busy shared machine distorts much less (for 2 threads it also counts",
        "time a library's threads spend spinning while waiting).",
        "",
        "| "
        + " | ".join(header).replace("docs/s", "docs/CPU-s").replace("GFLOP/s", "GFLOP/CPU-s")
        + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in cpu_rows),
        "",
        "Correctness checks on a sample of 200 documents:",
        "",
        *(f"- {c}" for c in notes["checks"]),
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(md))
    print(f"\nwritten to {a.out}")


def print_table(rows: list[list[str]]) -> None:
    names = ["config", "docs/s", "GFLOP/s", "mxcpu", "numpy", "/mxcpu", "/numpy", "f16 diff"]
    widths = [max(len(n), *(len(r[i]) for r in rows)) for i, n in enumerate(names)]
    print("  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
