"""Fork harness: an index handle inherited through ``fork()`` may read, never write.

A parent process holds a writer handle with staged (uncommitted) documents and a read handle,
then starts children with ``multiprocessing``'s *fork* start method (and, for comparison, the
*spawn* method, whose children open their own handles). Each round runs every scenario of
:data:`SCENARIOS`:

- ``exit`` / ``close`` / ``drop``: the child merely exits, closes the inherited writer, or drops
  its last reference to it (destructor); ``interpreter_exit``: a child made by ``os.fork()`` in a
  separate script ends through interpreter shutdown, which destroys every object;
- ``write``: the child tries every mutating call (``add``, ``delete``, ``commit``, ``compact``,
  ``close`` then ``add`` through a reader) and each must raise ``IndexLockedError``;
- ``race``: several children try to add and commit in a loop while the parent commits;
- ``read``: the child searches through the inherited writer and reader handles (1 and 2 threads,
  so latix's thread pool is rebuilt in the child) and must get the parent's results;
- ``reopen``: the parent closes its writer; the child closes the inherited one, opens the index
  for writing and commits (the documented way for a child to become the writer);
- ``spawn``: a spawned child searches (same results) and is refused the write lock.

After every scenario the parent commits its staged documents: the commit must succeed and the
index, reopened by a fresh handle, must hold exactly the parent's model (ids and stored vectors)
plus what a legitimate ``reopen`` child committed, and pass ``verify()``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import Stats, as_stored, child_env, doc_vectors, python

DIM = 8
SCENARIOS = (
    "exit",
    "close",
    "drop",
    "interpreter_exit",
    "write",
    "race",
    "read",
    "reopen",
    "spawn",
)
TIMEOUT = 60.0

# A handle the forked children inherit (module state, so that a child can drop the last reference).
_HELD: dict[str, Any] = {}


def _q() -> Any:
    return np.random.default_rng(7).standard_normal((3, DIM)).astype(np.float32)


def _child_exit(conn: Any) -> None:
    conn.send(("ok", ""))


def _child_close(conn: Any) -> None:
    _HELD["w"].close()
    conn.send(("ok", ""))


def _child_drop(conn: Any) -> None:
    # Every reference to the writer goes: its destructor runs in the child.
    _HELD.pop("w")
    _HELD.pop("parent").w = None
    gc.collect()
    conn.send(("ok", ""))


def _child_write(conn: Any) -> None:
    import latix

    w, r = _HELD["w"], _HELD["r"]
    v = [np.ones((2, DIM), np.float32)]
    attempts: dict[str, Any] = {
        "add": lambda: w.add(["child"], v),
        "add_replace": lambda: w.add(["child"], v, replace=True),
        "delete": lambda: w.delete([w.ids()[0]]),
        "commit": w.commit,
        "compact": w.compact,
        "reader_add": lambda: r.add(["child2"], v),
    }
    wrong = []
    for name, f in attempts.items():
        try:
            f()
            wrong.append(f"{name} succeeded")
        except latix.IndexLockedError:
            pass
        except Exception as e:  # noqa: BLE001 - reported to the parent
            wrong.append(f"{name}: {type(e).__name__}: {e}")
    conn.send(("ok" if not wrong else "fail", "; ".join(wrong) or str(len(attempts))))


def _child_race(conn: Any, tag: str) -> None:
    import latix

    w = _HELD["w"]
    wrong = []
    for i in range(5):
        try:
            w.add([f"{tag}-{i}"], [np.ones((1, DIM), np.float32)])
            w.commit()
            wrong.append(f"add+commit {i} succeeded")
        except latix.IndexLockedError:
            pass
        except Exception as e:  # noqa: BLE001
            wrong.append(f"{type(e).__name__}: {e}")
    conn.send(("ok" if not wrong else "fail", "; ".join(wrong)))


def _child_read(conn: Any, want_ids: list[list[str]], want_scores: list[float]) -> None:
    wrong = []
    for name in ("w", "r"):
        for nt in (1, 2):
            s, h = _HELD[name].search(_q(), k=50, n_threads=nt)
            if h.tolist() != want_ids or not np.allclose(s[0], want_scores, atol=1e-5):
                wrong.append(f"{name} n_threads={nt}: results differ from the parent's")
    conn.send(("ok" if not wrong else "fail", "; ".join(wrong)))


def _child_reopen(conn: Any, path: str) -> None:
    import latix

    conn.recv()  # the parent has closed its writer
    _HELD["w"].close()
    with latix.Index.open(path, "w") as w:
        w.add(["from-child"], [np.full((2, DIM), 0.5, np.float32)])
        w.commit()
    conn.send(("ok", ""))


def _child_spawn(conn: Any, path: str, want_ids: list[list[str]]) -> None:
    import latix

    wrong = []
    with latix.Index.open(path) as r:
        _, h = r.search(_q(), k=50, n_threads=2)
        if h.tolist() != want_ids:
            wrong.append("spawned child's results differ from the parent's")
        try:
            r.add(["spawned"], [np.ones((1, DIM), np.float32)])
            wrong.append("spawned child could write while the parent holds the lock")
        except latix.IndexLockedError:
            pass
    conn.send(("ok" if not wrong else "fail", "; ".join(wrong)))


EXIT_CHILD = """
import os, sys
import numpy as np
import latix
w = latix.Index.open(sys.argv[1], "w")
w.add(["staged"], [np.ones((2, {dim}), np.float32)])
pid = os.fork()
if pid == 0:
    sys.exit(0)  # interpreter shutdown in the child destroys the inherited handle
_, status = os.waitpid(pid, 0)
w.commit()
sys.exit(0 if "staged" in w and os.waitstatus_to_exitcode(status) == 0 else 3)
"""


class Parent:
    """The parent's writer and reader handles and the model of what it committed."""

    def __init__(self, path: Path, seed: int) -> None:
        import latix

        self.path, self.seed = path, seed
        self.model: dict[str, Any] = {}
        self.staged: dict[str, Any] = {}
        self.counter = 0
        self.w = latix.Index.create(path, dim=DIM, dtype="float32")
        self.r = latix.Index.open(path)
        self.stage(3)
        self.commit()
        self.stage(2)

    def stage(self, n: int) -> None:
        ids = [f"p{self.counter + j}" for j in range(n)]
        self.counter += n
        vecs = [doc_vectors(self.seed, i, 0, DIM) for i in ids]
        self.w.add(ids, vecs)
        self.staged.update(zip(ids, vecs, strict=True))

    def commit(self) -> None:
        self.w.commit()
        self.model.update(self.staged)
        self.staged = {}

    def expected(self) -> tuple[list[list[str]], list[float]]:
        s, h = self.r.search(_q(), k=50)
        return h.tolist(), s[0].tolist()


def _start(ctx: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    here, there = ctx.Pipe()
    p = ctx.Process(target=target, args=(there, *args))
    p.start()
    return p, here


def _finish(p: Any, conn: Any, what: str, stats: Stats) -> None:
    got = conn.recv() if conn.poll(TIMEOUT) else ("fail", "no report (hung?)")
    p.join(TIMEOUT)
    if p.exitcode != 0:
        stats.fail(f"{what}: child exit code {p.exitcode} ({got[1]})")
    elif got[0] != "ok":
        stats.fail(f"{what}: {got[1]}")


def scenario(name: str, parent: Parent, stats: Stats) -> None:
    """Runs one scenario against ``parent`` (whose writer has staged documents)."""
    fork = multiprocessing.get_context("fork")
    _HELD.clear()
    _HELD.update(w=parent.w, r=parent.r, parent=parent)
    stats.count(f"scenario_{name}")
    if name in ("exit", "close", "drop", "write"):
        target = {"exit": _child_exit, "close": _child_close, "drop": _child_drop}.get(
            name, _child_write
        )
        p, c = _start(fork, target)
        stats.count("forks")
        _finish(p, c, name, stats)
    elif name == "interpreter_exit":
        parent.commit()
        parent.w.close()  # the script takes the lock itself
        rc = subprocess.run(
            [python(), "-c", EXIT_CHILD.format(dim=DIM), str(parent.path)],
            env=child_env(),
            timeout=TIMEOUT,
        ).returncode
        stats.count("forks")
        if rc != 0:
            stats.fail(f"interpreter_exit: the parent script exited {rc}")
        import latix

        parent.w = latix.Index.open(parent.path, "w")
        parent.model["staged"] = np.ones((2, DIM), np.float32)
        parent.staged = {}
        parent.stage(2)
    elif name == "race":
        kids = [_start(fork, _child_race, f"c{j}") for j in range(3)]
        stats.count("forks", len(kids))
        for _ in range(3):
            parent.commit()
            parent.stage(1)
        for p, c in kids:
            _finish(p, c, name, stats)
    elif name == "read":
        want_ids, want_scores = parent.expected()
        p, c = _start(fork, _child_read, want_ids, want_scores)
        stats.count("forks")
        _finish(p, c, name, stats)
    elif name == "reopen":
        p, c = _start(fork, _child_reopen, str(parent.path))
        stats.count("forks")
        parent.commit()
        parent.w.close()
        c.send("closed")
        _finish(p, c, name, stats)
        import latix

        parent.w = latix.Index.open(parent.path, "w")
        parent.model["from-child"] = np.full((2, DIM), 0.5, np.float32)
        if "from-child" not in parent.w:
            stats.fail("reopen: the child's legitimate commit is missing")
        parent.stage(2)
    elif name == "spawn":
        want_ids, _ = parent.expected()
        p, c = _start(
            multiprocessing.get_context("spawn"), _child_spawn, str(parent.path), want_ids
        )
        stats.count("spawns")
        _finish(p, c, name, stats)
    _HELD.clear()


def check(parent: Parent, stats: Stats) -> None:
    """The parent commits; a fresh handle must see exactly the model, and verify() pass."""
    import latix

    try:
        parent.commit()
        stats.count("parent_commits")
    except Exception as e:  # noqa: BLE001
        stats.fail(f"parent commit after the child: {type(e).__name__}: {e}")
        return
    with latix.Index.open(parent.path) as ix:
        ix.verify()
        if set(ix.ids()) != set(parent.model):
            stats.fail(f"index holds {sorted(set(ix.ids()) ^ set(parent.model))} unlike the model")
            return
        for i, v in parent.model.items():
            if not np.array_equal(ix.get(i), as_stored(v, "float32")):
                stats.fail(f"stored vectors of {i} differ")
            stats.docs_checked += 1
    parent.stage(2)


def run(rounds: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS) -> Stats:
    """Runs ``rounds`` rounds of every scenario; returns the figures."""
    stats = Stats("forks")
    tmp = Path(tempfile.mkdtemp(prefix="latix-fork-"))
    try:
        for r in range(rounds):
            parent = Parent(tmp / f"ix{r}", seed + r)
            for name in scenarios:
                stats.trials += 1
                try:
                    scenario(name, parent, stats)
                except Exception as e:  # noqa: BLE001
                    stats.fail(f"round {r} {name}: {type(e).__name__}: {e}")
                check(parent, stats)
            parent.w.close()
            parent.r.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.forks --rounds 20 --seed 1``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    stats = run(a.rounds, a.seed)
    print(stats.summary())
    return 1 if stats.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("LATIX_NUM_THREADS", "2")
    sys.exit(main())
