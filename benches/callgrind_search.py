"""Instruction count of 40 SciFact queries on the compressed index, under callgrind.

One command: ``python benches/callgrind_search.py``. Wall time on a shared machine is noisy; the
number of instructions a fixed search executes is not, so this is the figure a refactor of the
search path must keep equal or lower (issue 12).

What is counted: ``Index.search(q, k=10, n_threads=1)`` (default depths) for SciFact test queries
0-39, one at a time, on a codes-only compressed index (``Compression(n_centroids=2048)``, seed 0)
of all SciFact documents: the work of ``encoded_pipeline`` (collection toggled on for its
duration, ``PIPELINE``), every stage of a query's search: planning, candidate generation,
refinement and the final ranking (the result's assembly into arrays is left out). A search of
one thread runs on the calling thread (no hand-off to a pool since ``parallel::run``); this
script first toggled on rayon's job execution (``StackJob::execute``, when one-thread searches
still ran on a pool thread), which then counted nothing, and before that on the binding's
search method, which counted only the argument conversion and the wait. Callgrind's collection
state is per thread, so a search of more threads would count only its calling thread's share.
The child runs twice, each time
opening the index and running one warm-up query (the lazy loads: codec, lists, pool), then 0 and
then 40 queries; the figure is the difference (two runs of one build differ by ~0.01 %).

Inputs are the cached encodings under ``~/.cache/latix/bench/scifact`` (written by
benches/prepare_bench_data.py; nothing is re-encoded). The index is built once, outside
callgrind, under ``--work`` (default ``~/.cache/latix/bench/callgrind-scifact``) and reused: the
on-disk format is stable, so before/after runs search the same files. ``--rebuild`` builds again.
The 40 queries' top-10 ids are printed as a checksum so two runs can be compared for equal
results, not just equal cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")
N_QUERIES = 40
# Every stage of one query's search (called once per query, not recursive; large enough never
# to be inlined: callgrind sees it as a function of its own, which `parallel::run`, inlined into
# the binding, is not).
PIPELINE = "latix_core::compressed::search::encoded_pipeline"


def build(scifact: str, out: str) -> None:
    """Creates the compressed index of every SciFact document (one commit: trains the codec)."""
    import latix

    if os.path.exists(out):
        shutil.rmtree(out)
    off = np.load(scifact + "/doc_offsets.npy")
    ids = json.load(open(scifact + "/doc_ids.json"))
    x = np.load(scifact + "/docs_vectors.npy")
    docs = np.split(x, off[1:-1].astype(np.int64))
    ix = latix.Index.create(out, dim=x.shape[1], compression=latix.Compression(n_centroids=2048))
    ix.add(ids, docs)
    ix.commit()
    ix.close()


def search(scifact: str, index: str, n_queries: int) -> None:
    """The measured child: opens the index, runs one warm-up query, then ``n_queries`` queries;
    prints a digest of their hits."""
    import latix

    q = np.load(scifact + "/query_vectors.npy").astype(np.float32)
    qo = np.load(scifact + "/query_offsets.npy")
    ix = latix.Index.open(index)
    ix.search(q[qo[N_QUERIES] : qo[N_QUERIES + 1]], k=10, n_threads=1)
    h = hashlib.sha256()
    for i in range(n_queries):
        _, hits = ix.search(q[qo[i] : qo[i + 1]], k=10, n_threads=1)
        h.update("\n".join(hits[0]).encode())
    print("top-10 digest", h.hexdigest()[:16])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA, help="bench data root holding scifact/")
    ap.add_argument("--work", default=os.path.join(DATA, "callgrind-scifact"))
    ap.add_argument("--rebuild", action="store_true", help="build the index again")
    ap.add_argument(
        "--keep",
        default=None,
        help="directory to keep callgrind's output files in (for callgrind_annotate)",
    )
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    scifact = os.path.join(a.data, "scifact")
    index = os.path.join(a.work, "index")
    if a.child is not None:
        search(scifact, index, a.child)
        return
    if a.rebuild or not os.path.exists(os.path.join(index, "CURRENT")):
        os.makedirs(a.work, exist_ok=True)
        build(scifact, index)
    counts = {}
    digest = ""
    env = dict(os.environ, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (0, N_QUERIES):
            out = os.path.join(tmp, f"callgrind.{n}.out")
            cmd = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--collect-atstart=no",
                f"--toggle-collect={PIPELINE}",
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                str(n),
                "--data",
                a.data,
                "--work",
                a.work,
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if r.returncode != 0:
                sys.exit(f"callgrind run failed:\n{r.stderr[-4000:]}")
            m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
            if not m or int(m.group(1)) == 0:
                sys.exit(f"no instructions collected:\n{r.stderr[-4000:]}")
            counts[n] = int(m.group(1))
            digest = r.stdout.strip().splitlines()[-1]
            if a.keep:
                os.makedirs(a.keep, exist_ok=True)
                shutil.copy(out, os.path.join(a.keep, f"callgrind.{n}.out"))
    m_ir = counts[N_QUERIES] - counts[0]
    print(f"{N_QUERIES} SciFact queries, compressed index, k=10, 1 thread")
    runs = f"runs of {N_QUERIES} and 0 queries: {counts[N_QUERIES]:,} - {counts[0]:,}"
    print(f"instructions (Ir): {m_ir:,} ({runs})")
    print(f"per query: {m_ir // N_QUERIES:,}")
    print(digest)


if __name__ == "__main__":
    main()
