"""A/B timing of latix's compressed search across builds (e.g. two commits), interleaved.

Figures from different runs on a shared machine cannot tell a 10 % regression from load: this
script times several builds *in the same run*, alternating between them round by round, so that
load drifts over every build alike. Each build is a Python interpreter with latix installed (a
venv per commit: ``python3 -m venv v && v/bin/pip install <checkout>``).

Per build, a child process first builds its own codes-only SciFact index through the product
API (``Index.create(dim=384, compression=Compression(n_centroids=K, seed))``, one add and one
commit; K as benches/bench_compressed.py chooses it), so an older build reads only files it
wrote itself. Then ``--rounds`` rounds; in each, every build (in an order that alternates
between rounds) runs a child process that opens its index, makes one untimed pass over the
queries, then times every SciFact test query (one thread, k=10, query encoding excluded, each
query timed alone: wall time, and the process's CPU time, which on a loaded machine leaves out
the time spent waiting for a core), and times numpy's sgemm on a fixed shape in the same process
as a load probe. Printed per build: the median over rounds of its p50 / p99 / mean, the median
of its per-round p50 ratios to the first build's (same round; wall and CPU), the sgemm rate, and
a digest of its top-10 ids (equal digests: the builds rank alike).

``--index DIR`` times an existing index instead (every build opens the same one, read-only: a
kept ``bench_scale.py --keep`` index, say), and ``--env`` gives each build's children
environment settings (``LATIX_KERNEL=avx2`` against ``LATIX_KERNEL=avx512`` with one
interpreter, say).

One command: ``python benches/ab_search.py --python /venv-a/bin/python /venv-b/bin/python``.
Data: the SciFact encodings of benches/prepare_bench_data.py (``--data``, default
``$LATIX_BENCH_DATA`` or ~/.cache/latix/bench).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")


def child_build(data: str, out: str, seed: int) -> None:
    """Child: builds the codes-only SciFact index at `out` with this interpreter's latix."""
    import latix

    d = os.path.join(data, "scifact")
    off = np.load(d + "/doc_offsets.npy")
    ids = json.load(open(d + "/doc_ids.json"))
    x = np.load(d + "/docs_vectors.npy")
    n_tokens = int(off[-1])
    k = 1 << round(np.log2(3 * np.sqrt(n_tokens / 2)))
    t0 = time.time()
    ix = latix.Index.create(
        out, dim=x.shape[1], compression=latix.Compression(n_centroids=k, seed=seed)
    )
    ix.add(ids, np.split(x, off[1:-1].astype(np.int64)))
    ix.commit()
    st = ix.stats()
    ix.close()
    json.dump({"build_s": time.time() - t0, "bytes_on_disk": st.get("bytes_on_disk")}, sys.stdout)


def child_time(data: str, index: str) -> None:
    """Child: one warm-up pass, then every test query timed alone; prints a JSON record."""
    import latix

    d = os.path.join(data, "scifact")
    q = np.load(d + "/query_vectors.npy").astype(np.float32)
    qo = np.load(d + "/query_offsets.npy")
    queries = [q[qo[i] : qo[i + 1]] for i in range(len(qo) - 1)]
    ix = latix.Index.open(index)
    for v in queries:
        ix.search(v, k=10, n_threads=1)
    lat = []
    cpu = []
    digest = hashlib.sha256()
    for v in queries:
        c = time.process_time()
        t = time.perf_counter()
        _, h = ix.search(v, k=10, n_threads=1)
        lat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        digest.update("|".join(str(x) for x in h[0]).encode())
    ix.close()
    # Load probe: numpy sgemm on a fixed shape (median of 15), in GFLOP/s.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 384), dtype=np.float32)
    b = rng.standard_normal((384, 2048), dtype=np.float32)
    ts = []
    for _ in range(15):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    lat.sort()
    cpu.sort()
    json.dump(
        {
            "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "mean_ms": 1e3 * sum(lat) / len(lat),
            "cpu_p50_ms": 1e3 * cpu[len(cpu) // 2],
            "cpu_mean_ms": 1e3 * sum(cpu) / len(cpu),
            "sgemm_gflops": 2 * 256 * 384 * 2048 / statistics.median(ts) / 1e9,
            "digest": digest.hexdigest()[:16],
            "latix": getattr(latix, "__version__", "?"),
        },
        sys.stdout,
    )


def parse_env(spec: str) -> dict[str, str]:
    """``"A=1,B=2"`` as a dict (``"-"``: nothing)."""
    if spec == "-":
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env: {part!r} is not NAME=VALUE")
        out[key] = value
    return out


def run_child(python: str, *args: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, LATIX_NUM_THREADS="1", OMP_NUM_THREADS="1", **(extra_env or {}))
    out = subprocess.run(
        [python, os.path.abspath(__file__), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python", nargs="+", required=False, help="interpreters, one per build")
    ap.add_argument(
        "--env",
        nargs="+",
        default=None,
        help="per build, NAME=VALUE[,NAME=VALUE] for its children ('-': none); one --python "
        "is then repeated for every --env",
    )
    ap.add_argument(
        "--index",
        nargs="+",
        default=None,
        help="time this existing index (no build): one for every build, or one per build (the "
        "same documents written by each build's own format, say)",
    )
    ap.add_argument("--label", nargs="+", default=None, help="a name per build (default: buildN)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--work", default=None, help="where --keep-indexes keeps the indexes")
    ap.add_argument(
        "--keep-indexes", action="store_true", help="keep the indexes under --work and reuse them"
    )
    ap.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_time", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build:
        return child_build(a.data, a._build, a.seed)
    if a._time:
        return child_time(a.data, a._time)
    if not a.python:
        ap.error("--python is required")
    if a.keep_indexes and not a.work:
        ap.error("--keep-indexes needs --work")
    if a.env and len(a.python) == 1:
        a.python = a.python * len(a.env)
    envs = [parse_env(e) for e in a.env] if a.env else [{} for _ in a.python]
    if len(envs) != len(a.python):
        ap.error("--env needs one setting per --python")
    labels = a.label or [f"build{i}" for i in range(len(a.python))]
    if len(labels) != len(a.python):
        ap.error("--label needs one name per --python")
    import provenance

    provenance.print_header(sys.argv)
    for label, py, env in zip(labels, a.python, envs, strict=True):
        print(f"- {label}: {py}" + (f" with {env}" if env else ""))
    if a.index and len(a.index) not in (1, len(labels)):
        ap.error("--index needs one directory, or one per build")
    if a.index:
        print(f"- indexes timed: {', '.join(a.index)}")
    with contextlib.ExitStack() as stack:
        # --keep-indexes: under --work, one index per label and seed, reused by later runs.
        work = a.work if a.keep_indexes else stack.enter_context(tempfile.TemporaryDirectory())
        paths = (
            (a.index * len(labels) if len(a.index) == 1 else a.index)
            if a.index
            else [os.path.join(work, f"ix-{label}-seed{a.seed}") for label in labels]
        )
        for i, py in enumerate([] if a.index else a.python):
            marker = paths[i] + ".built.json"
            if os.path.exists(marker):
                print(f"reusing {paths[i]}: {open(marker).read()}", flush=True)
                continue
            if os.path.exists(paths[i]):
                shutil.rmtree(paths[i])
            info = run_child(
                py, "--_build", paths[i], "--data", a.data, "--seed", str(a.seed), extra_env=envs[i]
            )
            with open(marker, "w") as f:
                json.dump(info, f)
            print(f"built {labels[i]}: {info}", flush=True)
        rec: list[list[dict[str, Any]]] = [[] for _ in a.python]
        for r in range(a.rounds):
            order = list(range(len(a.python)))
            if r % 2:
                order.reverse()
            for i in order:
                rec[i].append(
                    run_child(a.python[i], "--_time", paths[i], "--data", a.data, extra_env=envs[i])
                )
            print(
                f"round {r + 1}: "
                + "  ".join(
                    f"{labels[i]} p50 {rec[i][-1]['p50_ms']:.3f} ms "
                    f"(cpu {rec[i][-1]['cpu_p50_ms']:.3f})"
                    for i in range(len(rec))
                ),
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    print(
        f"\n{'build':<24} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50/first':>10} "
        f"{'cpu p50':>8} {'cpu mean':>8} {'cpu/first':>10} {'sgemm GF/s':>11}  top-10 digest"
    )
    for i, rs in enumerate(rec):
        p50, p99, mean, cpu50, cpumean, gf = (
            statistics.median(x[key] for x in rs)
            for key in ("p50_ms", "p99_ms", "mean_ms", "cpu_p50_ms", "cpu_mean_ms", "sgemm_gflops")
        )
        ratio, cpu_ratio = (
            statistics.median(rs[j][key] / rec[0][j][key] for j in range(len(rs)))
            for key in ("p50_ms", "cpu_p50_ms")
        )
        digests = ",".join(sorted({x["digest"] for x in rs}))
        print(
            f"{labels[i]:<24} {p50:>8.3f} {p99:>8.3f} {mean:>8.3f} {ratio:>9.3f}x "
            f"{cpu50:>8.3f} {cpumean:>8.3f} {cpu_ratio:>9.3f}x {gf:>11.1f}  {digests}"
        )
    print(
        f"(medians over {a.rounds} rounds; ratios: per round, to the first build's; cpu: the "
        "process's CPU time per query, which waiting for a core does not inflate)"
    )


if __name__ == "__main__":
    main()
