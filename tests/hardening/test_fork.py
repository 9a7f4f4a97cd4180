"""Fork safety (fast part): a handle inherited through fork() keeps reading but refuses to write,
and never deletes, truncates or unlocks what the parent's writer owns. Every scenario of
``tests/harness/forks.py`` runs once here; ``make soak`` runs more rounds.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from harness import forks

ROUNDS = int(os.environ.get("LATIX_FORK_ROUNDS", "1"))


@pytest.mark.parametrize("name", forks.SCENARIOS)
def test_fork_scenario(name: str) -> None:
    stats = forks.run(ROUNDS, seed=41, scenarios=(name,))
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.details["parent_commits"] == ROUNDS
    assert stats.docs_checked > 0


def _child_error(conn: Any, ix: Any) -> None:
    try:
        ix.add(["x"], [np.ones((1, 4), np.float32)])
        conn.send(None)
    except Exception as e:  # noqa: BLE001
        conn.send((type(e).__name__, isinstance(e, latix.IndexLockedError), str(e)))


def test_forked_writer_error_says_what_to_do(tmp_path: Path) -> None:
    with latix.Index.create(tmp_path / "ix", dim=4) as w:
        w.add(["a"], [np.ones((1, 4), np.float32)])
        here, there = multiprocessing.get_context("fork").Pipe()
        p = multiprocessing.get_context("fork").Process(target=_child_error, args=(there, w))
        p.start()
        got = here.recv()
        p.join()
        assert got is not None, "the forked child could write"
        name, locked, msg = got
        assert locked, f"{name}: {msg}"
        assert "fork" in msg and str(os.getpid()) in msg
        w.commit()
        assert "a" in w
