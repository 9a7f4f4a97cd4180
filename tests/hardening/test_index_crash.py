"""Crash consistency (fast part): SIGKILL a writer process at random moments, mostly inside
commit and compaction, and check that the index holds exactly the last committed state.

The long run is ``make soak`` (``python -m harness.crash --kills 200``); see tests/harness/crash.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import latix
import numpy as np
import pytest
from harness import crash

KILLS = int(os.environ.get("LATIX_CRASH_KILLS", "12"))


@pytest.mark.parametrize(
    "seed,dtype,compressed,vector_free",
    [
        (11, "float32", False, False),
        (12, "float16", False, False),
        (13, "float16", True, False),
        (14, "float16", True, True),
    ],
)
def test_crash_consistency(seed: int, dtype: str, compressed: bool, vector_free: bool) -> None:
    # The harness is about kills inside commits: at least MIN_IN_COMMIT of them must really
    # have landed between "B n" and "D n" (about 60% of trials do; the run goes on past
    # KILLS // 2 trials, up to three times as many, until that many did).
    min_in_commit = max(1, KILLS // 4)
    stats = crash.run(
        KILLS // 2,
        seed,
        dtype,
        compressed=compressed,
        min_in_commit=min_in_commit,
        vector_free=vector_free,
    )
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert KILLS // 2 <= stats.trials <= 3 * (KILLS // 2)
    assert stats.docs_checked > 0
    in_commit = sum(v for k, v in stats.details.items() if k.startswith("killed_in_"))
    assert in_commit + stats.details.get("killed_outside_commit", 0) == stats.trials
    assert in_commit >= min_in_commit, stats.summary()
    if compressed:
        # The codec was trained during the run and trained states were checked.
        assert stats.details["trained"] == 1
        assert stats.details.get("compressed_searches", 0) > 0, stats.summary()
    if vector_free:
        # Documents were checked by their decoded approximations.
        assert stats.details.get("decoded_docs_checked", 0) > 0, stats.summary()


def test_crash_consistency_with_growth_retraining() -> None:
    # Growth retraining (a compaction inside commit() whenever the index has doubled past the
    # size its K suits): every kill leaves the last commit, and K grew over the run.
    stats = crash.run(KILLS // 2, 15, "float16", growth=True, min_in_commit=max(1, KILLS // 4))
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.details["trained"] == 1
    assert stats.details.get("compressed_searches", 0) > 0, stats.summary()
    # The first training's K for 300 tokens (150 pooled) is at most 18: it must have grown.
    assert stats.details["n_centroids"] > 18, stats.summary()


def test_crash_consistency_with_growth_retraining_vector_free() -> None:
    # The same on an index without vectors: a retraining re-encodes decoded reconstructions, so
    # every kill must still leave the last commit, with each document's decoding near the
    # version it was written with.
    stats = crash.run(
        KILLS // 2,
        16,
        "float16",
        growth=True,
        vector_free=True,
        min_in_commit=max(1, KILLS // 4),
    )
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.details["trained"] == 1
    assert stats.details.get("decoded_docs_checked", 0) > 0, stats.summary()
    assert stats.details["n_centroids"] > 18, stats.summary()


def test_model_is_deterministic() -> None:
    # The parent and the child compute transactions independently: they must agree.
    a, b = crash.Model(5), crash.Model(5)
    assert a.state(30) == b.state(30)
    assert [a.kind(n) for n in range(1, 30)] == [b.kind(n) for n in range(1, 30)]
    assert a.state(30) != crash.Model(6).state(30)


def test_interrupted_create_can_be_redone(tmp_path: Path) -> None:
    # Regression: a crash between writing MANIFEST-0 and CURRENT left a directory that create()
    # refused ("non-empty directory that is not a latix index") and open() did not know.
    p = tmp_path / "ix"
    p.mkdir()
    (p / "LOCK").touch()
    (p / f"MANIFEST-{0:020d}").write_bytes(b"torn")
    (p / "tmp-CURRENT-1-2-3").write_bytes(b"MANIF")
    with pytest.raises(latix.NotFoundError):
        latix.Index.open(p)
    with latix.Index.create(p, dim=4) as ix:
        assert len(ix) == 0
    with latix.Index.open(p, "w"):  # the next writer removes the stray temp file
        pass
    assert sorted(os.listdir(p)) == ["CURRENT", "LOCK", f"MANIFEST-{0:020d}"]


def test_kill_during_create(tmp_path: Path) -> None:
    # SIGKILL a process creating an index at random moments: afterwards the directory is either
    # a valid empty index or can be created again.
    code = (
        "import sys, latix\n"
        "print('go', flush=True)\n"
        "latix.Index.create(sys.argv[1], dim=4).close()\n"
        "print('done', flush=True)\n"
    )
    rng = np.random.default_rng(0)
    outcomes = {"created": 0, "recreated": 0}
    for trial in range(KILLS):
        p = tmp_path / f"ix{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(p)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(float(rng.uniform(0, 0.01)))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        try:
            with latix.Index.open(p) as ix:
                assert len(ix) == 0 and ix.dim == 4
            outcomes["created"] += 1
        except latix.NotFoundError:
            with latix.Index.create(p, dim=4) as ix:
                assert len(ix) == 0
            outcomes["recreated"] += 1
    print(outcomes)
