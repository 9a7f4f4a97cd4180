"""Cost of lazy vector verification: first search (verifies every 1 MiB block it touches) vs
later searches (one bit test per block), and a full verify(). Run with two builds to compare.

Usage: python scripts/hardening/bench_verify.py [N_DOCS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import latix
import numpy as np


def main(n_docs: int) -> None:
    rng = np.random.default_rng(0)
    dim, tokens = 128, 64
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "ix"
        with latix.Index.create(p, dim=dim, dtype="float16") as ix:
            for s in range(0, n_docs, 1000):
                docs = rng.standard_normal((1000, tokens, dim)).astype(np.float16)
                ix.add([f"d{i}" for i in range(s, s + 1000)], docs)
            ix.commit()
        q = rng.standard_normal((32, dim)).astype(np.float32)
        mb = n_docs * tokens * dim * 2 / 1e6
        firsts, steadies = [], []
        for _ in range(3):
            with latix.Index.open(p) as ix:  # a fresh handle: nothing verified yet
                t = time.perf_counter()
                ix.search(q, k=10)
                firsts.append(time.perf_counter() - t)
                for _ in range(5):
                    t = time.perf_counter()
                    ix.search(q, k=10)
                    steadies.append(time.perf_counter() - t)
        with latix.Index.open(p) as ix:
            t = time.perf_counter()
            ix.verify()
            tv = time.perf_counter() - t
        print(
            f"{n_docs} docs, {mb:.0f} MB of vectors: "
            f"first search {statistics.median(firsts) * 1e3:.1f} ms, "
            f"later searches {statistics.median(steadies) * 1e3:.1f} ms (median), "
            f"verify() {tv * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
