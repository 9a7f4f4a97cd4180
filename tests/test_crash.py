"""Crash consistency (fast part): SIGKILL a writer process at random moments, mostly inside
commit and compaction, and check that the index holds exactly the last committed state.

The long run is ``make soak`` (``python -m harness.crash --kills 200``); see tests/harness/crash.py.
"""

from __future__ import annotations

import os

import pytest

from harness import crash

KILLS = int(os.environ.get("LATIX_CRASH_KILLS", "12"))


@pytest.mark.parametrize("seed,dtype", [(11, "float32"), (12, "float16")])
def test_crash_consistency(seed: int, dtype: str) -> None:
    stats = crash.run(KILLS // 2, seed, dtype)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == KILLS // 2
    assert stats.docs_checked > 0


def test_model_is_deterministic() -> None:
    # The parent and the child compute transactions independently: they must agree.
    a, b = crash.Model(5), crash.Model(5)
    assert a.state(30) == b.state(30)
    assert [a.kind(n) for n in range(1, 30)] == [b.kind(n) for n in range(1, 30)]
    assert a.state(30) != crash.Model(6).state(30)
