"""Instruction count of 40 SciFact queries on the compressed index, under callgrind.

One command: ``python benches/callgrind_search.py``. Wall time on a shared machine is noisy; the
number of instructions a fixed search executes is not, so this is the figure a refactor of the
search path must keep equal or lower (issue 12).

What is counted: ``Index.search(q, k=10, n_threads=1)`` (default depths) for SciFact test queries
0-39, one at a time, on a codes-only compressed index (``Compression(n_centroids=2048)``, seed 0)
of all SciFact documents. Collection is toggled on inside the binding's search method
(``--toggle-collect`` on ``PyIndex::__pymethod_search__``, a function pointer PyO3 generates, so
never inlined whatever the core's inlining does), so Python, numpy and the index opening are not
counted: only the search, with its argument and result conversion.

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


def search(scifact: str, index: str) -> None:
    """The measured child: opens the index and runs the 40 queries; prints a digest of the hits."""
    import latix

    q = np.load(scifact + "/query_vectors.npy").astype(np.float32)
    qo = np.load(scifact + "/query_offsets.npy")
    ix = latix.Index.open(index)
    h = hashlib.sha256()
    for i in range(N_QUERIES):
        _, hits = ix.search(q[qo[i] : qo[i + 1]], k=10, n_threads=1)
        h.update("\n".join(hits[0]).encode())
    print("top-10 digest", h.hexdigest()[:16])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA, help="bench data root holding scifact/")
    ap.add_argument("--work", default=os.path.join(DATA, "callgrind-scifact"))
    ap.add_argument("--rebuild", action="store_true", help="build the index again")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    scifact = os.path.join(a.data, "scifact")
    index = os.path.join(a.work, "index")
    if a.child:
        search(scifact, index)
        return
    if a.rebuild or not os.path.exists(os.path.join(index, "CURRENT")):
        os.makedirs(a.work, exist_ok=True)
        build(scifact, index)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--collect-atstart=no",
            "--toggle-collect=*PyIndex::__pymethod_search__*",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            "--data",
            a.data,
            "--work",
            a.work,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            sys.exit(f"callgrind run failed:\n{r.stderr[-4000:]}")
        m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
        if not m or int(m.group(1)) == 0:
            sys.exit(f"no instructions collected (toggle pattern matched nothing?):\n{r.stderr}")
        digest = r.stdout.strip().splitlines()[-1]
    print(f"{N_QUERIES} SciFact queries, compressed index, k=10, 1 thread")
    print(f"instructions (Ir): {int(m.group(1)):,}")
    print(f"per query: {int(m.group(1)) // N_QUERIES:,}")
    print(digest)


if __name__ == "__main__":
    main()
