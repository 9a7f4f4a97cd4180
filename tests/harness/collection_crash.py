"""Crash-consistency harness of collections: SIGKILL a writer at random moments, then check that
texts, metadata, the keyword index and the vectors describe exactly the same records.

A child process (``python -m harness.collection_crash --child``) replays a deterministic, seeded
sequence of transactions on a collection (pre-computed vectors, no model): durable ``add`` and
``upsert`` calls, batches of several calls (adds, upserts, deletes by id and by filter), records
of one or two passages, compactions and, on the compressed collection, the commit that trains
the codec and compactions that retrain it. Around each transaction it reports ``B <n> <kind>``
and ``D <n>`` on a pipe. The parent kills it with SIGKILL, mostly inside a transaction (a random
delay after ``B`` drawn over the measured duration of that kind), sometimes at an arbitrary
moment, then opens the collection and requires:

* before any recovery, a reader sees exactly the state after transaction ``D`` (or ``D + 1`` if
  ``B D+1`` was reported): ids, texts, metadata;
* after recovery (``Collection.recover``, what the next writer does): no row of any other
  version is left in the database, ``Collection.verify()`` passes (index checksums, SQLite and
  FTS5 integrity checks, index documents == passages of the records), every record's unique
  word finds exactly that record through the keyword index, every passage's stored vectors are
  the expected ones, and filters give the model's answer through SQL (``count``) and through
  the index bitmaps (``search``).

The next child continues from the recovered state, so each trial also checks that the collection
accepts writes after a crash.

    python -m harness.collection_crash --kills 200 --seed 1            # plain index
    python -m harness.collection_crash --kills 200 --seed 2 --compressed
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import ChildProc, Stats, doc_vectors, python

DIM = 16
KINDS = {"add": 0.35, "upsert": 0.15, "batch": 0.3, "where": 0.1, "compact": 0.06, "retrain": 0.04}


def compression() -> Any:
    """The compressed runs' configuration: trains once the collection holds 400 tokens (a dozen
    transactions in), 16 centroids, vectors kept (so stored vectors can be compared exactly),
    no pooling."""
    import latix

    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=True,
        train_min_tokens=400,
        train_sample_tokens=4000,
        seed=1,
        pool_factor=1,  # so that the model knows which commit trains (live tokens >= 400)
    )


def word(rid: str, version: int) -> str:
    """A word unique to one version of one record (its keyword-index probe)."""
    return f"w{zlib.crc32(f'{rid}/{version}'.encode()):08x}"


def record(seed: int, rid: str, version: int) -> tuple[str, dict[str, Any], list[Any]]:
    """Text, metadata and passage vectors of a record version: a pure function of its
    arguments, so any process can recompute what must be stored."""
    rng = np.random.default_rng([seed, zlib.crc32(rid.encode()), version])
    n_pass = 2 if rng.random() < 0.25 else 1
    vecs = [doc_vectors(seed, f"{rid}#{p}", version, DIM, 12) for p in range(n_pass)]
    meta: dict[str, Any] = {"bucket": int(rng.integers(0, 10)), "v": version}
    if rng.random() < 0.5:
        meta["tags"] = [str(t) for t in rng.choice(["a", "b", "c"], int(rng.integers(1, 3)))]
    text = f"record {rid} version {version} {word(rid, version)}"
    return text, meta, vecs


class Model:
    """The expected committed state after every transaction: id -> version."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.states: list[dict[str, int]] = [{}]

    def kind(self, n: int) -> str:
        rng = np.random.default_rng([self.seed, n, 1])
        names = list(KINDS)
        w = np.array([KINDS[k] for k in names])
        return names[int(rng.choice(len(names), p=w / w.sum()))]

    def steps(self, n: int) -> list[tuple[str, Any]]:
        """The calls of transaction ``n``: ``("add", ids)``, ``("upsert", ids)``,
        ``("delete", ids)``, ``("where", bucket_below)``, ``("compact", retrain)``."""
        kind = self.kind(n)
        prev = self.state(n - 1)
        live = sorted(prev)
        rng = np.random.default_rng([self.seed, n, 2])
        if kind in ("compact", "retrain"):
            return [("compact", kind == "retrain")]
        if kind == "where":
            return [("where", int(rng.integers(0, 2)))]

        def new_ids(m: int, tag: str) -> list[str]:
            return [f"r{n}{tag}{j}" for j in range(m)]

        big = rng.random() < 0.05
        if kind == "add":
            return [
                (
                    "add",
                    new_ids(int(rng.integers(60, 150)) if big else int(rng.integers(1, 12)), "a"),
                )
            ]
        pick = lambda m: sorted(  # noqa: E731
            live[i] for i in rng.choice(len(live), size=min(m, len(live)), replace=False)
        )
        if kind == "upsert":
            return [
                ("upsert", pick(int(rng.integers(1, 5))) + new_ids(int(rng.integers(0, 3)), "u"))
            ]
        # batch: several calls, ids never reused across its steps
        dels = pick(int(rng.integers(0, 6)))
        rest = sorted(set(live) - set(dels))
        reps = [rest[i] for i in rng.choice(len(rest), size=min(3, len(rest)), replace=False)]
        steps: list[tuple[str, Any]] = [("add", new_ids(int(rng.integers(1, 8)), "b"))]
        if dels:
            steps.append(("delete", dels))
        if reps:
            steps.append(("upsert", sorted(reps)))
        steps.append(("add", new_ids(int(rng.integers(1, 8)), "c")))
        return steps

    def tokens(self, n: int) -> int:
        """Token vectors of the records of state ``n``."""
        return sum(
            sum(int(v.shape[0]) for v in record(self.seed, r, ver)[2])
            for r, ver in self.state(n).items()
        )

    def training_commit(self, min_tokens: int) -> int:
        """The first transaction whose committed state holds ``min_tokens`` tokens: the one
        whose commit trains the codec of a compressed collection."""
        n = 1
        while self.tokens(n) < min_tokens or self.kind(n) in ("compact", "retrain", "where"):
            n += 1
        return n

    def state(self, n: int) -> dict[str, int]:
        while len(self.states) <= n:
            m = len(self.states)
            s = dict(self.states[-1])
            for op, arg in self.steps(m):
                if op in ("add", "upsert"):
                    for r in arg:
                        s[r] = m
                elif op == "delete":
                    for r in arg:
                        del s[r]
                elif op == "where":
                    for r in [
                        r for r, v in s.items() if record(self.seed, r, v)[1]["bucket"] < arg
                    ]:
                        del s[r]
            self.states.append(s)
        return self.states[n]


# ------------------------------------------------------------------------------------- child


def _write(col: Any, seed: int, op: str, ids: list[str], version: int) -> None:
    recs, vecs = [], []
    for r in ids:
        text, meta, v = record(seed, r, version)
        recs.append((r, text, meta))
        vecs.append(v if len(v) > 1 else v[0])
    (col.add if op == "add" else col.upsert)(recs, vectors=vecs)


def child(path: str, seed: int, start: int) -> None:
    import latix

    model = Model(seed)
    out = sys.stdout
    col = latix.Collection.open(path)
    out.write("O\n")
    out.flush()
    n = start
    while True:
        steps = model.steps(n)
        kind = model.kind(n)
        out.write(f"B {n} {kind}\n")
        out.flush()
        if kind == "batch":
            with col.batch():
                for op, arg in steps:
                    if op == "delete":
                        col.delete(arg)
                    else:
                        _write(col, seed, op, arg, n)
        else:
            op, arg = steps[0]
            if op in ("add", "upsert"):
                _write(col, seed, op, arg, n)
            elif op == "where":
                col.delete(where={"bucket": {"$lt": arg}})
            else:
                col.compact(retrain=bool(arg) and col.index.compression is not None)
        out.write(f"D {n}\n")
        out.flush()
        n += 1


# ------------------------------------------------------------------------------------- parent


def visible(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """What a reader sees, before any recovery."""
    import latix

    with latix.Collection.open(path) as col:
        ids = col.ids()
        recs = col.get_many(ids)
        return {r.id: (r.text, r.metadata) for r in recs if r is not None}


def check(path: Path, model: Model, candidates: list[int], stats: Stats) -> int:
    """Returns which candidate state the collection holds; raises AssertionError otherwise."""
    import latix

    seen = visible(path)
    match = None
    for c in reversed(candidates):
        st = model.state(c)
        if set(seen) == set(st) and all(
            seen[r] == record(model.seed, r, v)[:2] for r, v in st.items()
        ):
            match = c
            break
    assert match is not None, (
        f"a reader sees {len(seen)} records matching none of the states {candidates} "
        f"({[len(model.state(c)) for c in candidates]} records)"
    )
    state = model.state(match)
    with latix.Collection.open(path) as col:
        # What the crash left for recovery (proof that kills land inside the commit window).
        g = col.index.generation
        con = col._store.reader()
        pend = con.execute("SELECT COUNT(*) FROM records WHERE gen > ?", (g,)).fetchone()[0]
        marks = con.execute("SELECT COUNT(*) FROM records WHERE dgen > ?", (g,)).fetchone()[0]
        done = con.execute("SELECT COUNT(*) FROM records WHERE dgen <= ?", (g,)).fetchone()[0]
        stats.count("left_unpublished_rows", int(pend > 0))
        stats.count("left_unpublished_deletes", int(marks > 0))
        stats.count("left_published_deletes", int(done > 0))
        col.recover()
        con = col._store.reader()
        n_rows = con.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        assert n_rows == len(state), f"{n_rows} rows after recovery for {len(state)} records"
        col.verify()
        gen = col.index.generation
        rows = col._store.get(sorted(state), gen)
        for rid, v in state.items():
            text, meta, vecs = record(model.seed, rid, v)
            r = rows[rid]
            assert (r.text, r.metadata, r.n_passages) == (text, meta, len(vecs)), rid
            found = col._store.keyword(f'"{word(rid, v)}"', 5, gen)
            assert [rk for rk, _ in found] == [r.rk], (rid, found)
            for p, want in enumerate(vecs):
                key = str(r.rk) if p == 0 else f"{r.rk}.{p}"
                got = col.index.get(key)
                assert np.array_equal(got, want.astype(got.dtype)), (rid, p)
        stats.docs_checked += len(state)
        if state:
            q = np.random.default_rng([model.seed, match]).standard_normal((3, DIM))
            q = q.astype(np.float32)
            for b in (3, 7):
                where = {"bucket": {"$lt": b}}
                want = {r for r, v in state.items() if record(model.seed, r, v)[1]["bucket"] < b}
                assert col.count(where=where) == len(want)
                hits = col.search(query_vectors=q, k=len(state), where=where)
                assert {h.id for h in hits} <= want
                if col.index.compression is None or len(want) <= 2000:
                    assert {h.id for h in hits} == want, (b, len(hits), len(want))
        if col.index.stats()["trained"]:
            stats.count("trained_states")
    return match


def run(
    kills: int,
    seed: int,
    compressed: bool = False,
    workdir: str | None = None,
    verbose: bool = False,
) -> Stats:
    """Runs ``kills`` kill-and-check trials; returns the figures."""
    import latix

    stats = Stats("collection-crash-compressed" if compressed else "collection-crash")
    rng = np.random.default_rng(seed)
    model = Model(seed)
    tmp = Path(tempfile.mkdtemp(prefix="latix-ccrash-", dir=workdir))
    path = tmp / "col"
    comp = compression() if compressed else None
    schema = {"bucket": "int", "v": "int", "tags": "list[str]"}
    latix.Collection.create(path, model=None, dim=DIM, compression=comp, schema=schema).close()
    committed = 0
    durations: dict[str, float] = {}
    train_at = model.training_commit(400) if compressed else -1
    train_kills = 0
    try:
        for trial in range(kills):
            stats.trials += 1
            start = committed + 1
            c = ChildProc(
                [python(), "-m", "harness.collection_crash", "--child", str(path)]
                + ["--seed", str(seed), "--start", str(start)]
            )
            mode = rng.choice(["txn", "any"], p=[0.85, 0.15])
            target = start + int(rng.integers(0, 3))
            if committed < train_at and train_kills < 6:
                mode, target = "txn", train_at  # aim at the commit that trains the codec
            deadline = time.monotonic() + (float(rng.uniform(0, 0.8)) if mode == "any" else 60.0)
            kill_at: float | None = None
            began: dict[int, float] = {}
            while True:
                now = time.monotonic()
                limit = kill_at if kill_at is not None else deadline
                if now >= limit or c.p.poll() is not None:
                    break
                for t, ln in c.poll(min(0.05, max(0.0, limit - now))):
                    parts = ln.split()
                    if parts[0] == "B":
                        n = int(parts[1])
                        began[n] = t
                        if mode == "txn" and n == target:
                            est = durations.get(parts[2], 0.02)
                            kill_at = t + float(rng.uniform(0, 1.2 * est))
                    elif parts[0] == "D":
                        n = int(parts[1])
                        if n in began:
                            k = model.kind(n)
                            d = t - began[n]
                            durations[k] = 0.7 * durations.get(k, d) + 0.3 * d
            err = c.kill()
            done = [int(ln.split()[1]) for _, ln in c.lines if ln.startswith("D ")]
            began_n = [int(ln.split()[1]) for _, ln in c.lines if ln.startswith("B ")]
            last = max(done, default=committed)
            if c.p.returncode != -signal.SIGKILL:
                stats.fail(
                    f"seed={seed} trial={trial}: child exited {c.p.returncode}: {err[-2000:]}"
                )
                break
            candidates = [last] + ([last + 1] if (last + 1) in began_n else [])
            if began_n and max(began_n) > last:
                stats.count(f"killed_in_{model.kind(max(began_n))}")
                if max(began_n) == train_at:
                    stats.count("killed_in_training_commit")
                    train_kills += 1
            else:
                stats.count("killed_outside_transaction")
            try:
                got = check(path, model, candidates, stats)
            except Exception as e:  # noqa: BLE001 - any failed check is a harness failure
                stats.fail(
                    f"seed={seed} trial={trial} candidates={candidates}: {type(e).__name__}: {e}"
                )
                break
            stats.count("recovered_new_state" if got == last + 1 else "recovered")
            committed = got
            if verbose:
                print(f"trial {trial}: {mode} kill, state {got}, {len(model.state(got))} records")
        stats.details["transactions_committed"] = committed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.collection_crash --kills 200 --seed 1``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compressed", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.seed, a.start)
        return 0
    t = time.monotonic()
    stats = run(a.kills, a.seed, a.compressed, a.workdir, a.verbose)
    print(stats.summary() + f" seconds={time.monotonic() - t:.1f}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
