"""Search latency of a kept bench_scale index before and after `compact()` (issue 18).

One command: `python benches/compact_scale_index.py [INDEX]` (default: the 100M-token index that
`python benches/bench_scale.py --sizes 100M --keep` leaves under ~/.cache/latix/bench-scale).
300 SciFact test queries (pre-encoded, benches/prepare_bench_data.py), k = 10, 1 thread, one
untimed pass then one timed pass each side; prints p50 / p99 before and after, the compaction's
time and this process's peak RSS, and how many queries kept the same top 10. Compacts INDEX in
place (a codes-domain merge into one segment: the documents and their scores do not change).
"""

import os
import resource
import sys
import time

import latix
import numpy as np

DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")


def main() -> None:
    path = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.expanduser("~/.cache/latix/bench-scale/index-100M")
    )
    d = os.path.join(DATA, "scifact")
    qv = np.load(d + "/query_vectors.npy")
    qo = np.load(d + "/query_offsets.npy")
    qs = [np.asarray(qv[qo[i] : qo[i + 1]], np.float32) for i in range(len(qo) - 1)]

    def lat(ix: latix.Index) -> tuple[float, float, list[list[str]]]:
        for q in qs:
            ix.search(q, k=10, n_threads=1)
        t, top = [], []
        for q in qs:
            a = time.perf_counter()
            _, h = ix.search(q, k=10, n_threads=1)
            t.append(time.perf_counter() - a)
            top.append(list(h[0]))
        return float(np.median(t) * 1e3), float(np.percentile(t, 99) * 1e3), top

    ix = latix.Index.open(path)
    n0 = ix.stats()["n_segments"]
    b = lat(ix)
    ix.close()
    print(f"before: {n0} segments, p50 / p99 {b[0]:.2f} / {b[1]:.2f} ms", flush=True)
    ix = latix.Index.open(path)
    t = time.time()
    ix.compact()
    ct = time.time() - t
    n1 = ix.stats()["n_segments"]
    ix.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"compact: {ct:.1f} s -> {n1} segment(s); process peak RSS {rss:,.0f} MB", flush=True)
    ix = latix.Index.open(path)
    a = lat(ix)
    ix.close()
    same = sum(x == y for x, y in zip(b[2], a[2], strict=True))
    print(
        f"after: p50 / p99 {a[0]:.2f} / {a[1]:.2f} ms ({a[0] / b[0]:.3f}x); "
        f"same top 10 for {same} of {len(qs)} queries"
    )


if __name__ == "__main__":
    main()
