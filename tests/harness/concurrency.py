"""Concurrency harness: readers search while a writer adds, deletes, commits and compacts.

One writer thread performs ``ops`` seeded operations (add 1-3 documents, delete 1-2, commit,
compact) on a handle holding the write lock. Before each commit it records the state the commit
publishes (the set of live ids) in memory and in a journal file, so every committed state is
known before any reader can see it. Reader threads (one sharing the writer's handle, others with
their own read handles) and a reader *process* run searches with ``k`` larger than the index,
so a result lists every live document: its id set must equal exactly one committed state (the
generation it saw), every score must equal the numpy MaxSim of that document's known vectors
(no torn or foreign data), scores must be sorted, and a handle must never go back to an older
generation. Meanwhile a second writer — a thread with another handle, and a separate process —
must get ``IndexLockedError``. Compactions replace every file under the readers' feet.

``--compressed`` runs the same on a compressed index (:func:`compression`: kept vectors, a codec
trained once the index holds a few hundred tokens, compactions that sometimes retrain it).
Readers then search with every list probed and the exact re-rank (:data:`COMPRESSED_SEARCH`),
which makes the result exact MaxSim over the stored float16 vectors, so the same checks apply;
searches that saw a trained snapshot are counted (``compressed_searches``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import Stats, child_env, doc_vectors, maxsim_np, python

DIM = 16
MAX_LIVE = 120
K_ALL = 4 * MAX_LIVE  # more than the index can hold: a search lists every live document
N_CENTROIDS = 16
#: Search options of readers on a compressed index: every list probed (all documents reached)
#: and the exact re-rank, whose depth (from k = K_ALL) covers every live document.
COMPRESSED_SEARCH: dict[str, Any] = {"nprobe": N_CENTROIDS, "rerank": True}


def compression() -> Any:
    """The compressed configuration: 16 centroids, 4 code bytes per 16-d token, f16 vectors kept,
    training at the commit that brings 300 (pooled) tokens."""
    import latix

    return latix.Compression(
        bytes_per_token=4,
        n_centroids=N_CENTROIDS,
        keep_vectors=True,
        train_min_tokens=300,
        train_sample_tokens=4000,
        seed=2,
    )


def search_all(ix: Any, q: Any, compressed: bool) -> Any:
    """A search listing every live document of the snapshot it sees (exact scores)."""
    return ix.search(q, k=K_ALL, n_threads=1, **(COMPRESSED_SEARCH if compressed else {}))


class States:
    """Committed states, id set -> generation range, filled from the writer or a journal."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_set: dict[frozenset[str], list[int]] = {}
        self.live: set[str] = set()
        self.gen = 0
        #: First generation whose snapshot has a trained codec (compressed runs); readers count
        #: the searches that matched a state at or after it.
        self.trained_gen: int | None = None
        self.record(0)

    def record(self, gen: int) -> None:
        """Registers the current live set as the state of generation ``gen``."""
        key = frozenset(self.live)
        with self.lock:
            r = self.by_set.setdefault(key, [gen, gen])
            r[0], r[1] = min(r[0], gen), max(r[1], gen)

    def lookup(self, ids: frozenset[str]) -> list[int] | None:
        """The ``[min, max]`` generation range of a committed state with these ids, if any."""
        with self.lock:
            r = self.by_set.get(ids)
            return list(r) if r else None


class Checker:
    """Checks one search result against the known states and vectors."""

    def __init__(self, seed: int, states: States) -> None:
        self.seed = seed
        self.states = states
        self.vec_cache: dict[str, Any] = {}

    def vec(self, i: str) -> Any:
        v = self.vec_cache.get(i)
        if v is None:
            v = self.vec_cache[i] = doc_vectors(self.seed, i, 0, DIM).astype(np.float16)
        return v

    def check(self, q: Any, scores: Any, hits: Any, last_gen: int) -> tuple[int, int]:
        """Returns ``(generation lower bound, documents checked)``; raises on inconsistency."""
        ids = [h for h in hits[0] if h]
        got = frozenset(ids)
        assert len(got) == len(ids), "duplicate id in one result"
        r = self.states.lookup(got)
        if r is None:
            raise AssertionError(f"result with {len(ids)} ids matches no committed state")
        if r[1] < last_gen:
            raise AssertionError(f"went back in time: generation <= {r[1]} after {last_gen}")
        s = scores[0][: len(ids)]
        assert np.all(np.diff(s) <= 0), "scores not sorted"
        assert np.all(np.isneginf(scores[0][len(ids) :])), "padding is not -inf"
        for i, sc in zip(ids, s, strict=True):
            ref = maxsim_np(q, self.vec(i))
            assert abs(ref - sc) <= 1e-3 + 1e-4 * abs(ref), f"score of {i}: {sc} != {ref}"
        return r[0], len(ids)


def reader_loop(
    ix: Any,
    checker: Checker,
    seed: int,
    stop: threading.Event,
    stats: Stats,
    lock: threading.Lock,
    compressed: bool = False,
) -> None:
    """Searches until ``stop``; records figures and failures in ``stats``."""
    rng = np.random.default_rng(seed)
    last = 0
    n = docs = trained = 0
    while not stop.is_set():
        q = rng.standard_normal((int(rng.integers(1, 6)), DIM)).astype(np.float32)
        try:
            scores, hits = search_all(ix, q, compressed)
            last, d = checker.check(q, scores, hits, last)
            n += 1
            docs += d
            tg = checker.states.trained_gen
            trained += tg is not None and last >= tg
        except Exception as e:  # noqa: BLE001 - any error is a failure of the harness
            with lock:
                stats.fail(f"reader seed={seed}: {type(e).__name__}: {e}")
            return
    with lock:
        stats.count("searches", n)
        if compressed:
            stats.count("compressed_searches", trained)
        stats.docs_checked += docs


def second_writer_checks(path: Path, stats: Stats, lock: threading.Lock) -> None:
    """A second writer (another handle in a thread, and another process) must be refused."""
    import latix

    try:
        latix.Index.open(path, "w").close()
        with lock:
            stats.fail("a second writer handle opened the index in mode 'w'")
    except latix.IndexLockedError:
        with lock:
            stats.count("second_writer_refused")
    with latix.Index.open(path) as r:
        try:
            r.add(["intruder"], [np.ones((1, DIM), np.float32)])
            with lock:
                stats.fail("a read handle could stage an add while another writer holds the lock")
        except latix.IndexLockedError:
            with lock:
                stats.count("second_writer_refused")
    code = (
        "import sys, latix\n"
        "try:\n    latix.Index.open(sys.argv[1], 'w')\nexcept latix.IndexLockedError:\n"
        "    sys.exit(3)\nsys.exit(0)\n"
    )
    rc = subprocess.run([python(), "-c", code, str(path)], env=child_env()).returncode
    with lock:
        if rc == 3:
            stats.count("second_writer_process_refused")
        else:
            stats.fail(f"second writer process: exit status {rc}, expected IndexLockedError")


def reader_process(
    path: str, journal: str, seed: int, stopfile: str, compressed: bool = False
) -> None:
    """A reader in another process: replays the journal to know the committed states."""
    import latix

    states = States()
    checker = Checker(seed, states)
    pos = 0

    def refresh() -> None:
        nonlocal pos
        with open(journal) as f:
            f.seek(pos)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break
                pos = f.tell()
                rec = json.loads(line)
                states.live.difference_update(rec["del"])
                states.live.update(rec["add"])
                states.record(rec["gen"])
                if rec.get("trained_gen") is not None and states.trained_gen is None:
                    states.trained_gen = rec["trained_gen"]

    rng = np.random.default_rng([seed, 1000])  # queries differ from the threads'
    out: dict[str, Any] = {"searches": 0, "compressed_searches": 0, "docs": 0, "fail": None}
    last = 0
    with latix.Index.open(path) as ix:
        while not Path(stopfile).exists():
            q = rng.standard_normal((int(rng.integers(1, 6)), DIM)).astype(np.float32)
            try:
                scores, hits = search_all(ix, q, compressed)
                if states.lookup(frozenset(h for h in hits[0] if h)) is None:
                    refresh()
                last, d = checker.check(q, scores, hits, last)
                out["searches"] += 1
                tg = states.trained_gen
                out["compressed_searches"] += tg is not None and last >= tg
                out["docs"] += d
            except Exception as e:  # noqa: BLE001 - reported to the parent
                out["fail"] = f"{type(e).__name__}: {e}"
                break
    print(json.dumps(out))


def run(
    ops: int, seed: int, readers: int = 3, verbose: bool = False, compressed: bool = False
) -> Stats:
    """Runs the writer for ``ops`` operations against ``readers`` reader threads + 1 process
    (on a compressed index if ``compressed``)."""
    import latix

    stats = Stats("concurrency-compressed" if compressed else "concurrency")
    lock = threading.Lock()
    tmp = Path(tempfile.mkdtemp(prefix="latix-conc-"))
    path, journal, stopfile = tmp / "ix", tmp / "journal.jsonl", tmp / "stop"
    states = States()
    checker = Checker(seed, states)
    rng = np.random.default_rng(seed)
    comp = compression() if compressed else None
    w = latix.Index.create(path, dim=DIM, dtype="float16", compression=comp)
    journal.write_text(json.dumps({"gen": 0, "add": [], "del": []}) + "\n")
    proc = subprocess.Popen(
        [python(), "-m", "harness.concurrency", "--reader", str(path), str(journal), str(stopfile)]
        + ["--seed", str(seed)]
        + (["--compressed"] if compressed else []),
        stdout=subprocess.PIPE,
        env=child_env(),
        text=True,
    )
    stop = threading.Event()
    handles = [w] + [latix.Index.open(path) for _ in range(readers - 1)]
    threads = [
        threading.Thread(
            target=reader_loop, args=(h, checker, seed + 1 + i, stop, stats, lock, compressed)
        )
        for i, h in enumerate(handles)
    ]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    staged_add: list[str] = []
    staged_del: list[str] = []
    live: list[str] = []  # committed and staged-live ids, for choosing deletes
    counter = 0
    try:
        for op in range(ops):
            stats.trials += 1
            r = rng.random()
            if op % max(1, ops // 5) == ops // 10:
                second_writer_checks(path, stats, lock)
            if r < 0.08 or op == ops - 1:
                kind = "compact" if rng.random() < 0.1 else "commit"
                retrain = compressed and kind == "compact" and rng.random() < 0.5
                states.gen += 1
                states.live.difference_update(staged_del)
                states.live.update(staged_add)
                # Known before visible: recorded, journaled (flushed), then committed.
                states.record(states.gen)
                if kind == "compact":
                    states.gen += 1  # compact = commit (no-op here) + compaction commit
                    states.record(states.gen)
                rec = {"gen": states.gen, "add": staged_add, "del": staged_del}
                with open(journal, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if retrain:
                    w.compact(retrain=True)
                    stats.count("compact_retrain")
                else:
                    getattr(w, kind)()
                    stats.count(kind)
                if compressed and states.trained_gen is None and w.stats()["trained"]:
                    # Training happened in the commit just made (the first one past the
                    # threshold): from this generation on, snapshots search the codes.
                    first = states.gen - (1 if kind == "compact" else 0)
                    states.trained_gen = first
                    stats.details["trained_generation"] = first
                    with open(journal, "a") as f:
                        f.write(json.dumps({**rec, "add": [], "del": [], "trained_gen": first}))
                        f.write("\n")
                staged_add, staged_del = [], []
            elif r < 0.6 or len(live) < 10:
                if len(live) >= MAX_LIVE:
                    continue
                new = [f"d{counter + j}" for j in range(int(rng.integers(1, 4)))]
                counter += len(new)
                w.add(new, [doc_vectors(seed, i, 0, DIM) for i in new])
                staged_add += new
                live += new
                stats.count("add")
            else:
                pick = sorted(
                    {live[int(j)] for j in rng.integers(0, len(live), int(rng.integers(1, 3)))}
                )
                w.delete(pick)
                for p in pick:
                    live.remove(p)
                    if p in staged_add:
                        staged_add.remove(p)
                    else:
                        staged_del.append(p)
                stats.count("delete")
    except Exception as e:  # noqa: BLE001
        stats.fail(f"writer seed={seed} op={stats.trials}: {type(e).__name__}: {e}")
    finally:
        time.sleep(0.2)  # let readers see the last commit
        stop.set()
        for t in threads:
            t.join()
        stopfile.touch()
        out, _ = proc.communicate(timeout=600)
        for h in handles:
            h.close()
    try:
        res = json.loads(out.strip().splitlines()[-1])
        stats.count("process_searches", res["searches"])
        if compressed:
            stats.count("process_compressed_searches", res["compressed_searches"])
        stats.docs_checked += res["docs"]
        if res["fail"]:
            stats.fail(f"reader process seed={seed}: {res['fail']}")
    except (ValueError, IndexError):
        stats.fail(f"reader process exited {proc.returncode} without a report: {out[-500:]}")
    with latix.Index.open(path) as ix:
        if set(ix.ids()) != states.live:
            stats.fail("final index content differs from the writer's model")
        ix.verify()
    stats.details["generations"] = states.gen
    stats.details["seconds"] = int(time.monotonic() - t0)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.concurrency --ops 10000 --seed 1``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--compressed", action="store_true", help="run on a compressed index")
    ap.add_argument(
        "--reader", nargs=3, metavar=("PATH", "JOURNAL", "STOP"), help=argparse.SUPPRESS
    )
    a = ap.parse_args(argv)
    if a.reader:
        reader_process(a.reader[0], a.reader[1], a.seed, a.reader[2], a.compressed)
        return 0
    stats = run(a.ops, a.seed, a.readers, compressed=a.compressed)
    print(stats.summary())
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
