"""Writers harness: several threads write through ONE handle while another thread compacts it.

``writers`` threads share one writer handle. Each owns a disjoint id space (``t<k>-<n>``) and
replays a seeded sequence of operations on it: add 1-3 new documents, replace one (``add`` with
``replace=True``, a new version of its vectors), delete 1-2, commit. A compactor thread calls
``compact()`` in a loop and a reader thread searches the same handle, until the writers are done.

Each writer keeps a journal of what it was told succeeded: its model (id -> version). Since no
other thread touches its ids, whenever its own ``commit()`` returns, the committed index must
reflect that model exactly for its ids (every live id present with its latest vectors, every
deleted id absent), whatever other threads committed or compacted meanwhile. At the end the
whole index must equal the union of the models and pass ``verify()``. Any exception is a failure:
writes from any thread serialise with commit and compaction, so nothing may be lost or refused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import Stats, as_stored, doc_vectors

DIM = 16


def compression() -> Any:
    """Compressed runs: a codec trained after a few commits, vectors kept (exact ``get``)."""
    import latix

    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=True,
        train_min_tokens=400,
        train_sample_tokens=4000,
        seed=3,
    )


class Writer(threading.Thread):
    """One writer thread and its journal."""

    def __init__(self, ix: Any, k: int, seed: int, ops: int, dtype: str, stats: Stats) -> None:
        super().__init__(name=f"writer-{k}")
        self.ix, self.k, self.seed, self.ops, self.dtype = ix, k, seed, ops, dtype
        self.stats = stats
        self.model: dict[str, int] = {}  # acknowledged: id -> version
        self.dead: set[str] = set()  # acknowledged deletes
        self.counter = 0
        self.error: str | None = None
        self.n_ops = self.n_commits = self.n_checked = 0

    def vec(self, i: str, version: int) -> Any:
        return doc_vectors(self.seed, i, version, DIM, max_tokens=12)

    def check_committed(self) -> None:
        """After our commit: our ids in the index are exactly our model."""
        for i, ver in self.model.items():
            got = self.ix.get(i)  # NotFoundError if an acknowledged add was lost
            want = as_stored(self.vec(i, ver), self.dtype)
            if not np.array_equal(got, want):
                raise AssertionError(f"{i}: committed vectors are not version {ver}")
            self.n_checked += 1
        for i in self.dead:
            if i in self.ix:
                raise AssertionError(f"{i} was deleted (acknowledged) but is still committed")

    def run(self) -> None:
        rng = np.random.default_rng([self.seed, self.k])
        try:
            for _ in range(self.ops):
                r = rng.random()
                live = sorted(self.model)
                if r < 0.12:
                    self.ix.commit()
                    self.n_commits += 1
                    self.check_committed()
                elif r < 0.55 or len(live) < 4:
                    ids = [f"t{self.k}-{self.counter + j}" for j in range(int(rng.integers(1, 4)))]
                    self.counter += len(ids)
                    self.ix.add(ids, [self.vec(i, 0) for i in ids])
                    self.model.update(dict.fromkeys(ids, 0))
                elif r < 0.75:
                    i = live[int(rng.integers(len(live)))]
                    self.ix.add([i], [self.vec(i, self.model[i] + 1)], replace=True)
                    self.model[i] += 1
                else:
                    pick = sorted({live[int(j)] for j in rng.integers(0, len(live), 2)})
                    self.ix.delete(pick)
                    for i in pick:
                        del self.model[i]
                        self.dead.add(i)
                self.n_ops += 1
            self.ix.commit()
            self.n_commits += 1
            self.check_committed()
        except Exception as e:  # noqa: BLE001 - any error is a failure of the run
            self.error = f"writer {self.k} op {self.n_ops}: {type(e).__name__}: {e}"


def run(
    ops: int,
    seed: int,
    writers: int = 3,
    dtype: str = "float16",
    compressed: bool = False,
) -> Stats:
    """``writers`` threads of ``ops`` operations each against a compactor and a reader."""
    import latix

    stats = Stats("writers" + ("-compressed" if compressed else ""))
    tmp = Path(tempfile.mkdtemp(prefix="latix-writers-"))
    ix = latix.Index.create(
        tmp / "ix", dim=DIM, dtype=dtype, compression=compression() if compressed else None
    )
    done = threading.Event()
    counts = {"compactions": 0, "searches": 0}
    side_errors: list[str] = []

    def compactor() -> None:
        try:
            while not done.is_set():
                ix.compact(retrain=compressed and counts["compactions"] % 5 == 4)
                counts["compactions"] += 1
        except Exception as e:  # noqa: BLE001
            side_errors.append(f"compactor: {type(e).__name__}: {e}")

    def reader() -> None:
        q = np.random.default_rng(seed).standard_normal((4, DIM)).astype(np.float32)
        try:
            while not done.is_set():
                ix.search(q, k=20, n_threads=1)
                counts["searches"] += 1
        except Exception as e:  # noqa: BLE001
            side_errors.append(f"reader: {type(e).__name__}: {e}")

    ws = [Writer(ix, k, seed, ops, dtype, stats) for k in range(writers)]
    others = [threading.Thread(target=compactor), threading.Thread(target=reader)]
    t0 = time.monotonic()
    for t in others + ws:  # type: ignore[operator]
        t.start()
    for w in ws:
        w.join()
    done.set()
    for t in others:
        t.join()
    for w in ws:
        stats.trials += w.n_ops
        stats.count("commits", w.n_commits)
        stats.docs_checked += w.n_checked
        if w.error:
            stats.fail(w.error)
    for e in side_errors:
        stats.fail(e)
    stats.count("compactions", counts["compactions"])
    stats.count("searches", counts["searches"])
    stats.count("threads", writers + 2)
    try:
        ix.commit()
        model = {i: (w, v) for w in ws for i, v in w.model.items()}
        with latix.Index.open(tmp / "ix") as fresh:
            fresh.verify()
            if set(fresh.ids()) != set(model):
                diff = sorted(set(fresh.ids()) ^ set(model))
                stats.fail(f"final ids differ from the journals: {diff[:10]}")
            for i, (w, v) in model.items():
                if not np.array_equal(fresh.get(i), as_stored(w.vec(i, v), dtype)):
                    stats.fail(f"final vectors of {i} are not version {v}")
                stats.docs_checked += 1
            if compressed:
                stats.count("trained", int(bool(fresh.stats()["trained"])))
    except Exception as e:  # noqa: BLE001
        stats.fail(f"final check: {type(e).__name__}: {e}")
    finally:
        ix.close()
        shutil.rmtree(tmp, ignore_errors=True)
    stats.details["seconds"] = int(time.monotonic() - t0)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.writers --ops 5000 --seed 1 [--compressed]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=5000, help="operations per writer thread")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--compressed", action="store_true")
    a = ap.parse_args(argv)
    stats = run(a.ops, a.seed, a.writers, compressed=a.compressed)
    print(stats.summary())
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
