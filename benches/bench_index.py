"""Open time and search heap of a latix index: ~1 GB vs a small one.

Checks two properties of the on-disk index: opening is O(1) in the size of the vector data
(files are mapped, never read at open) and the anonymous (heap) memory of a search does not grow
with the index (documents are scored in chunks with per-chunk top-k; vectors are read through the
page cache via the maps, which shows up as RssFile, not RssAnon).

Usage: python benches/bench_index.py [--gb 1.0] [--dir /tmp/latix-bench] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from pathlib import Path

import latix
import numpy as np


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(path: Path, n_tokens: int, dim: int, tokens_per_doc: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_docs = n_tokens // tokens_per_doc
    batch = 2000
    with latix.Index.create(path, dim=dim, dtype="float16") as ix:
        for start in range(0, n_docs, batch):
            n = min(batch, n_docs - start)
            x = rng.standard_normal((n, tokens_per_doc, dim), dtype=np.float32).astype(np.float16)
            ix.add([f"doc{start + i}" for i in range(n)], x)
        ix.commit()


def median_open_ms(path: Path, reps: int = 20) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ix = latix.Index.open(path)
        times.append(time.perf_counter() - t)
        ix.close()
    return statistics.median(times) * 1e3


def search_heap(path: Path, queries: list[np.ndarray], k: int) -> tuple[float, int, int]:
    """Returns (seconds, peak RssAnon growth KiB during search, RssFile growth KiB)."""
    ix = latix.Index.open(path)
    # Warm the thread pool only: the vectors the search reads then show up as RssFile growth.
    ix.search(queries[:1], k=k, n_threads=2, subset=["doc0", "doc1"])
    base_anon, base_file = rss_kib("RssAnon"), rss_kib("RssFile")
    peak = base_anon
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib("RssAnon"))
            time.sleep(0.0005)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    scores, _ = ix.search(queries, k=k, n_threads=2)  # the GIL is released: the sampler runs
    dt = time.perf_counter() - t0
    done.set()
    t.join()
    file_growth = rss_kib("RssFile") - base_file
    ix.close()
    assert scores.shape == (len(queries), k)
    return dt, peak - base_anon, file_growth


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big index in GB")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/latix-bench-index"))
    ap.add_argument("--keep", action="store_true", help="keep the indexes for the next run")
    args = ap.parse_args()
    dim, tpd = 128, 100
    big_tokens = int(args.gb * 1e9 / (dim * 2))
    sizes = {"small": 20_000, "big": big_tokens}
    args.dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((8, dim)).astype(np.float32) for _ in range(2)]
    rows = []
    for name, n_tok in sizes.items():
        path = args.dir / name
        if not (path / "CURRENT").exists():
            shutil.rmtree(path, ignore_errors=True)
            t = time.perf_counter()
            build(path, n_tok, dim, tpd, seed=1)
            print(
                f"built {name}: {dir_bytes(path) / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s"
            )
        open_ms = median_open_ms(path)
        secs, anon_kib, file_kib = search_heap(path, queries, k=10)
        n_docs = len(latix.Index.open(path))
        rows.append((name, dir_bytes(path), n_docs, open_ms, secs, anon_kib, file_kib))
    print(
        f"{'index':6} {'size MB':>9} {'docs':>8} {'open ms':>8} {'search s':>9} "
        f"{'RssAnon +KiB':>13} {'RssFile +KiB':>13}"
    )
    for name, size, n_docs, open_ms, secs, anon, filek in rows:
        print(
            f"{name:6} {size / 1e6:9.1f} {n_docs:8d} {open_ms:8.3f} {secs:9.3f} "
            f"{anon:13d} {filek:13d}"
        )
    (s, b) = rows
    print(
        f"size ratio big/small: {b[1] / s[1]:.0f}x; open time ratio: {b[3] / s[3]:.2f}x; "
        f"search heap growth: small {s[5]} KiB, big {b[5]} KiB"
    )
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
