"""Concurrency (fast part): readers (threads and a process) search while a writer adds, deletes,
commits and compacts; every result must be exactly one committed snapshot; second writers get
IndexLockedError. The long run is ``make soak`` (``python -m harness.concurrency --ops 10000``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import latix
import numpy as np
from harness import concurrency

OPS = int(os.environ.get("LATIX_CONCURRENCY_OPS", "800"))


def test_readers_see_committed_snapshots() -> None:
    stats = concurrency.run(OPS, seed=31)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == OPS
    assert stats.details["searches"] > 0 and stats.details["process_searches"] > 0
    assert stats.details["second_writer_refused"] > 0
    assert stats.details["second_writer_process_refused"] > 0


def test_compressed_readers_see_committed_snapshots() -> None:
    # The same journal-checked run on a compressed index: the codec is trained during the run,
    # compactions sometimes retrain it, and readers (threads and a process) must keep seeing
    # exactly one committed snapshot, scores included, before and after training.
    stats = concurrency.run(OPS, seed=32, compressed=True)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == OPS
    assert stats.details.get("trained_generation") is not None, stats.summary()
    assert stats.details["searches"] > 0 and stats.details["process_searches"] > 0
    # Searches really ran on trained snapshots, in the threads and in the process.
    assert stats.details["compressed_searches"] > 0, stats.summary()
    assert stats.details["process_compressed_searches"] > 0, stats.summary()
    assert stats.details.get("compact_retrain", 0) + stats.details.get("compact", 0) > 0
    assert stats.details["second_writer_refused"] > 0
    assert stats.details["second_writer_process_refused"] > 0


def test_search_during_compaction_keeps_its_snapshot(tmp_path: Path) -> None:
    # Long multi-query searches run while the writer compacts (which removes every file the
    # searches map); each must return the full, correct result of one snapshot.
    rng = np.random.default_rng(3)
    docs = {f"d{i}": rng.standard_normal((50, 32)).astype(np.float32) for i in range(400)}
    ids = list(docs)
    p = tmp_path / "ix"
    w = latix.Index.create(p, dim=32, dtype="float32")
    for i in range(0, 400, 40):  # 10 segments
        w.add(ids[i : i + 40], [docs[j] for j in ids[i : i + 40]])
        w.commit()
    queries = [rng.standard_normal((8, 32)).astype(np.float32) for _ in range(16)]
    ref_scores, ref_ids = w.search(queries, k=400)
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()
    searches: list[tuple[float, float]] = []  # (start, end) of every checked search
    started = threading.Semaphore(0)

    def reader() -> None:
        with latix.Index.open(p) as r:
            while not stop.is_set():
                try:
                    t0 = time.monotonic()
                    started.release()
                    s, h = r.search(queries, k=400, n_threads=1)
                    t1 = time.monotonic()
                    np.testing.assert_array_equal(h, ref_ids)
                    np.testing.assert_allclose(s, ref_scores, rtol=1e-5, atol=1e-5)
                    with lock:
                        searches.append((t0, t1))
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                    return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    compactions: list[tuple[float, float]] = []
    for round_ in range(6):
        # Delete and re-add the same content so every snapshot has identical results.
        j = ids[round_ * 7]
        w.delete([j])
        w.add([j], [docs[j]])
        w.commit()
        assert started.acquire(timeout=60)  # a reader is searching (or about to)
        t0 = time.monotonic()
        w.compact()
        compactions.append((t0, time.monotonic()))
    stop.set()
    for t in threads:
        t.join()
    w.close()
    assert not errors, errors[0]
    # The readers really searched while the files were replaced: every compaction overlapped at
    # least one checked search (started before it ended, ended after it began).
    overlapping = [sum(a < c1 and b > c0 for a, b in searches) for c0, c1 in compactions]
    print("searches overlapping each compaction:", overlapping)
    assert all(n >= 1 for n in overlapping), (overlapping, len(searches))
    # Compaction left exactly one segment and one manifest: the replaced files were removed.
    left = sorted(os.listdir(p))
    assert [f for f in left if not f.startswith(("seg-", "MANIFEST-"))] == ["CURRENT", "LOCK"]
    assert len([f for f in left if f.startswith("seg-")]) == 1
    assert len([f for f in left if f.startswith("MANIFEST-")]) == 1


def test_second_writer_thread_gets_locked_error(tmp_path: Path) -> None:
    p = tmp_path / "ix"
    with latix.Index.create(p, dim=4) as w:
        w.add(["a"], [np.ones((1, 4), np.float32)])
        got: list[BaseException] = []

        def second() -> None:
            try:
                latix.Index.open(p, "w")
            except BaseException as e:  # noqa: BLE001
                got.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert len(got) == 1 and isinstance(got[0], latix.IndexLockedError)
        w.commit()
    with latix.Index.open(p, "w") as w2:  # released on close
        assert "a" in w2
