"""Crash-consistency harness: SIGKILL a writer process at random moments, then check the index.

A child process (``python -m harness.crash --child``) replays a deterministic, seeded sequence of
transactions on an index: each transaction stages adds, replacements and deletes, then commits
(or compacts). Around each commit it reports ``B <n> <kind>`` ("about to commit n") and
``D <n>`` ("committed n") on a pipe to the parent. The parent kills it with SIGKILL, mostly in the
commit window (a random delay after ``B``, drawn over the measured commit duration), sometimes at
an arbitrary moment. After each kill it opens the index and requires that it holds exactly the
state after transaction ``D`` (the last reported commit) or, if ``B D+1`` was seen, possibly
``D+1``: every document of that state with its exact stored vectors, no other id, searches that
agree with a numpy brute force, and ``verify()`` passing. The next child continues from that state,
so every trial also checks that the index accepts new writes after a crash.

Transaction kinds live in :data:`KINDS`; ``"retrain"`` (compaction that retrains the codec of a
compressed index; a plain compaction on a plain index) has no effect on the logical content, like
``"compact"``. ``--compressed`` runs the same trials on a compressed index (:data:`COMPRESSION`,
kept vectors so stored vectors stay exact) that trains its codec after a few transactions, so
kills also land in training commits, encoding commits (codec and ``ivf`` side files) and
retraining compactions. ``--vector-free`` runs them on a compressed index that drops its vectors
(``keep_vectors=False``, no pooling) and merges by a policy of 3 segments per tier, so kills also
land in the policy's codes-domain merges (run inside ``commit()``) and in codes-domain
compactions; once the codec is trained, each document's stored state is checked by its decoded
approximation (:func:`decoded_error`: each original row's nearest decoded row, within
:data:`DECODED_TOLERANCE` for the expected version of the document and far from any other).
``--growth`` runs them on a compressed index with kept vectors, an automatic K and growth
retraining (``retrain_growth=2``), so kills also land in the retraining compactions that
``commit()`` runs as the index grows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import ChildProc, Stats, as_stored, doc_vectors, maxsim_np, python

DIM = 16

# kind -> (probability weight, action on an open writer handle after staging).
KINDS: dict[str, tuple[float, Callable[[Any], None]]] = {
    "commit": (0.7, lambda ix: ix.commit()),
    "compact": (0.2, lambda ix: ix.compact()),
    "retrain": (0.1, lambda ix: ix.compact(retrain=ix.compression is not None)),
}
"""Transaction kinds. Each stages the transaction's changes, then runs the action; the action
must publish them."""


def compression(vector_free: bool = False, growth: bool = False) -> Any:
    """The configuration of ``--compressed`` runs: a codec trained once the index holds 300
    tokens (a few transactions), 16 centroids, 4 code bytes per 16-d token, vectors kept; with
    ``vector_free`` (``--vector-free``), vectors dropped, 8 code bytes per token (a tight
    approximation to check documents by) and no pooling (one decoded row per original); with
    ``growth`` (``--growth``), vectors kept, an automatic K and ``retrain_growth=2``; with both,
    vectors dropped as with ``vector_free`` and the retrainings re-encode decoded
    reconstructions."""
    import latix

    if growth and vector_free:
        return latix.Compression(
            bytes_per_token=8,
            keep_vectors=False,
            train_min_tokens=300,
            train_sample_tokens=4000,
            seed=1,
            pool_factor=1,
            retrain_growth=2,
        )
    if growth:
        return latix.Compression(
            bytes_per_token=4,
            keep_vectors=True,
            train_min_tokens=300,
            train_sample_tokens=4000,
            seed=1,
            retrain_growth=2,
        )
    if vector_free:
        return latix.Compression(
            bytes_per_token=8,
            n_centroids=16,
            keep_vectors=False,
            train_min_tokens=300,
            train_sample_tokens=4000,
            seed=1,
            pool_factor=1,
        )
    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=True,
        train_min_tokens=300,
        train_sample_tokens=4000,
        seed=1,
    )


#: Largest mean relative squared error (see :func:`decoded_error`) of a vector-free document's
#: decoded rows against the vectors it was written with.
DECODED_TOLERANCE = 0.25


def decoded_error(original: Any, decoded: Any) -> float:
    """Mean over the rows of ``original`` of the squared distance to the nearest row of
    ``decoded`` (a vector-free document's rows come back grouped by centroid, not in order),
    relative to the row's squared norm; inf when the row counts differ."""
    if decoded.shape != original.shape:
        return float("inf")
    o, d = original.astype(np.float64), decoded.astype(np.float64)
    d2 = (o * o).sum(1)[:, None] + (d * d).sum(1)[None, :] - 2.0 * o @ d.T
    return float(np.mean(np.maximum(d2.min(axis=1), 0.0) / np.maximum((o * o).sum(1), 1e-12)))


class Model:
    """The expected logical state after every transaction: id -> version of its vectors."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.states: list[dict[str, int]] = [{}]

    def kind(self, n: int) -> str:
        """Kind of transaction ``n`` (>= 1)."""
        rng = np.random.default_rng([self.seed, n, 1])
        names = list(KINDS)
        w = np.array([KINDS[k][0] for k in names])
        return names[int(rng.choice(len(names), p=w / w.sum()))]

    def ops(self, n: int) -> tuple[list[str], list[str], list[str]]:
        """``(adds, replaces, deletes)`` of transaction ``n``, given the state after ``n - 1``."""
        prev = self.state(n - 1)
        rng = np.random.default_rng([self.seed, n, 2])
        live = sorted(prev)
        big = rng.random() < 0.05  # now and then a batch that spans several checksum blocks
        n_add = int(rng.integers(150, 300)) if big else int(rng.integers(1, 25))
        adds = [f"d{n}-{j}" for j in range(n_add)]
        n_del = int(rng.integers(0, 8 + max(0, len(live) - 400) // 4 + 1))
        n_del = min(n_del, len(live))
        dels = [live[i] for i in rng.choice(len(live), size=n_del, replace=False)] if n_del else []
        rest = sorted(set(live) - set(dels))
        n_rep = min(int(rng.integers(0, 4)), len(rest))
        reps = [rest[i] for i in rng.choice(len(rest), size=n_rep, replace=False)] if n_rep else []
        return adds, reps, sorted(dels)

    def state(self, n: int) -> dict[str, int]:
        """The committed state after transaction ``n`` (0 = empty index)."""
        while len(self.states) <= n:
            m = len(self.states)
            adds, reps, dels = self.ops(m)
            s = dict(self.states[-1])
            for d in dels:
                del s[d]
            for r in reps:
                s[r] = m
            for a in adds:
                s[a] = m
            self.states.append(s)
        return self.states[n]


# ------------------------------------------------------------------------------------- child


def child(path: str, seed: int, start: int, dtype: str, vector_free: bool = False) -> None:
    """Runs transactions ``start, start + 1, ...`` until killed, reporting on stdout."""
    import latix

    model = Model(seed)
    out = sys.stdout
    ix = latix.Index.open(path, "w")
    if vector_free:
        ix.set_merge_policy(segments_per_tier=3)  # frequent merges to land kills in
    out.write("O\n")
    out.flush()
    n = start
    while True:
        adds, reps, dels = model.ops(n)
        if dels:
            ix.delete(dels)
        if reps:
            ix.add(reps, [doc_vectors(seed, r, n, DIM) for r in reps], replace=True)
        # Several add calls per transaction, as an application streaming documents would do.
        for i in range(0, len(adds), 16):
            chunk = adds[i : i + 16]
            ix.add(chunk, [doc_vectors(seed, a, n, DIM) for a in chunk])
        kind = model.kind(n)
        out.write(f"B {n} {kind}\n")
        out.flush()
        KINDS[kind][1](ix)
        out.write(f"D {n}\n")
        out.flush()
        n += 1


# ------------------------------------------------------------------------------------- parent


def check_state(path: Path, model: Model, candidates: list[int], dtype: str, stats: Stats) -> int:
    """Opens the index and returns which candidate transaction's state it holds exactly.

    Raises AssertionError (with the reason) if it matches none, or if any check fails.
    """
    import latix

    with latix.Index.open(path) as ix:
        ids = ix.ids()
        got = set(ids)
        assert len(ids) == len(got), "duplicate live ids"
        assert len(ix) == len(ids), f"len {len(ix)} != {len(ids)} ids"
        match = [c for c in candidates if set(model.state(c)) == got]
        assert match, (
            f"live ids match none of the states {candidates}: "
            f"{len(got)} ids vs {[len(model.state(c)) for c in candidates]}"
        )
        st = ix.stats()
        decoded = bool(st["trained"]) and not st["keep_vectors"]
        # Several candidates can share an id set (only replacements differ): vectors decide.
        for n in reversed(match):
            state = model.state(n)
            if decoded:
                # Vector-free: every document's decoding is near the version it was written
                # with (and, for a replaced one, far from the other versions: checked below).
                errs = {
                    i: decoded_error(doc_vectors(model.seed, i, state[i], DIM), ix.get(i))
                    for i in ids
                }
                ok = all(e <= DECODED_TOLERANCE for e in errs.values())
                if ok:
                    stats.count("decoded_docs_checked", len(ids))
                    worst = max(errs.values(), default=0.0)
                    stats.details["decoded_error_max_ppm"] = max(
                        stats.details.get("decoded_error_max_ppm", 0), int(worst * 1e6)
                    )
            else:
                ok = all(
                    np.array_equal(
                        ix.get(i), as_stored(doc_vectors(model.seed, i, state[i], DIM), dtype)
                    )
                    for i in ids
                )
            if ok:
                break
        else:
            raise AssertionError(f"stored vectors match none of the states {match}")
        stats.docs_checked += len(ids)
        ix.verify()
        if ids and decoded:
            # A replaced document's other versions are far from its decoding (so the check
            # above tells versions apart).
            for i in ids:
                for v in {c_state[i] for c in match if i in (c_state := model.state(c))}:
                    if v != state[i]:
                        e = decoded_error(doc_vectors(model.seed, i, v, DIM), ix.get(i))
                        assert e > 2 * DECODED_TOLERANCE, (i, v, state[i], e)
            # Every list probed: the hits are live documents, each once, best first.
            rng = np.random.default_rng([model.seed, n, 3])
            q = rng.standard_normal((4, DIM)).astype(np.float32)
            scores, hits = ix.search(q, k=len(ids), nprobe=st["n_centroids"])
            for s, h in zip(scores, hits, strict=True):
                found = [x for x in h if x]
                assert set(found) <= got and len(set(found)) == len(found), h
                assert np.all(np.diff(s[: len(found)]) <= 1e-6), s
            stats.count("compressed_searches")
        elif ids:
            rng = np.random.default_rng([model.seed, n, 3])
            q = rng.standard_normal((4, DIM)).astype(np.float32)
            k = min(5, len(ids))
            if st["trained"]:
                # Probing every list touches every document, and a re-rank depth of at least
                # len(ids) re-scores all of them exactly: the result must be exact.
                scores, hits = ix.search(q, k=len(ids), nprobe=st["n_centroids"], rerank=True)
                scores, hits = scores[:, :k], hits[:, :k]
                stats.count("compressed_searches")
            else:
                scores, hits = ix.search(q, k=k)
            ref = {
                i: maxsim_np(q, as_stored(doc_vectors(model.seed, i, state[i], DIM), dtype))
                for i in ids
            }
            best = sorted(ref.values(), reverse=True)[:k]
            assert np.allclose(scores[0], best, rtol=1e-4, atol=1e-3), (scores[0], best)
            for s, h in zip(scores[0], hits[0], strict=True):
                assert abs(ref[h] - s) <= 1e-3 + 1e-4 * abs(s), (h, s, ref[h])
        return n


def run(
    kills: int,
    seed: int,
    dtype: str = "float32",
    workdir: str | None = None,
    verbose: bool = False,
    compressed: bool = False,
    min_in_commit: int = 0,
    vector_free: bool = False,
    growth: bool = False,
) -> Stats:
    """Runs ``kills`` kill-and-check trials with ``seed`` (on a compressed index if
    ``compressed``); returns the figures. Kill timing is random, so a short run may land few
    kills inside a commit window: with ``min_in_commit``, trials go on past ``kills`` (up to
    ``3 * kills``) until that many did."""
    import latix

    compressed = compressed or vector_free or growth
    name = (
        "crash-growth-vector-free"
        if growth and vector_free
        else "crash-growth"
        if growth
        else "crash-vector-free"
        if vector_free
        else "crash-compressed"
        if compressed
        else "crash"
    )
    stats = Stats(name)
    rng = np.random.default_rng(seed)
    model = Model(seed)
    tmp = Path(tempfile.mkdtemp(prefix="latix-crash-", dir=workdir))
    path = tmp / "ix"
    comp = compression(vector_free, growth) if compressed else None
    latix.Index.create(path, dim=DIM, dtype=dtype, compression=comp).close()
    committed = 0  # the state the index holds now
    commit_time: dict[str, float] = {}  # measured B->D duration per kind (running mean)
    in_commit_kills = 0
    try:
        for trial in range(3 * kills if min_in_commit else kills):
            if trial >= kills and in_commit_kills >= min_in_commit:
                break
            stats.trials += 1
            start = committed + 1
            c = ChildProc(
                [python(), "-m", "harness.crash", "--child", str(path), "--seed", str(seed)]
                + ["--start", str(start), "--dtype", dtype]
                + (["--vector-free"] if vector_free else [])
            )
            mode = rng.choice(["commit", "any"], p=[0.8, 0.2])
            target = start + int(rng.integers(0, 3))
            t0 = time.monotonic()
            deadline = t0 + (float(rng.uniform(0, 0.6)) if mode == "any" else 60.0)
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
                        if mode == "commit" and n == target:
                            est = commit_time.get(parts[2], 0.01)
                            kill_at = t + float(rng.uniform(0, 1.3 * est))
                    elif parts[0] == "D":
                        n = int(parts[1])
                        if n in began:
                            kind = model.kind(n)
                            d = t - began[n]
                            commit_time[kind] = 0.8 * commit_time.get(kind, d) + 0.2 * d
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
            in_commit = bool(began_n) and max(began_n) > last
            if in_commit:
                in_commit_kills += 1
                stats.count(f"killed_in_{model.kind(max(began_n))}")
            else:
                stats.count("killed_outside_commit")
            try:
                got = check_state(path, model, candidates, dtype, stats)
            except Exception as e:  # noqa: BLE001 - any failure of a check is a harness failure
                stats.fail(
                    f"seed={seed} trial={trial} candidates={candidates}: {type(e).__name__}: {e}"
                )
                break
            stats.count("recovered_new_state" if got == last + 1 and in_commit else "recovered")
            committed = got
            if verbose:
                print(f"trial {trial}: {mode} kill, state {got}, {len(model.state(got))} docs")
        stats.details["transactions_committed"] = committed
        if compressed:
            with latix.Index.open(path) as ix:
                st = ix.stats()
                stats.details["trained"] = int(bool(st["trained"]))
                stats.details["n_centroids"] = int(st["n_centroids"] or 0)
        # A last write after the final crash.
        if not stats.failures:
            with latix.Index.open(path, "w") as ix:
                ix.add(["final"], [doc_vectors(seed, "final", 0, DIM)])
                ix.commit()
                assert "final" in ix and len(ix) == len(model.state(committed)) + 1
            # The writer that took over removed whatever the crashed ones left behind.
            left = sorted(os.listdir(path))
            stray = [f for f in left if f.startswith("tmp-")]
            manifests = [f for f in left if f.startswith("MANIFEST-")]
            if stray or len(manifests) != 1:
                stats.fail(f"seed={seed}: files left behind after recovery: {left}")
            stats.details["files_at_end"] = len(left)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.crash --kills 200 --seed 1``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--compressed", action="store_true", help="run on a compressed index")
    ap.add_argument(
        "--vector-free", action="store_true", help="run on a compressed index without vectors"
    )
    ap.add_argument(
        "--growth", action="store_true", help="run on a compressed index that retrains on growth"
    )
    ap.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.seed, a.start, a.dtype, a.vector_free)
        return 0
    t = time.monotonic()
    stats = run(
        a.kills,
        a.seed,
        a.dtype,
        a.workdir,
        a.verbose,
        a.compressed,
        vector_free=a.vector_free,
        growth=a.growth,
    )
    print(stats.summary() + f" seconds={time.monotonic() - t:.1f}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
