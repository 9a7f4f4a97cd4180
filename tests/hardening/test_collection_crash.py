"""Crash consistency of collections (fast part): SIGKILL a writer during adds, upserts, batches,
deletes by filter, compaction and codec training; texts, metadata, keyword index and vectors must
describe exactly the last committed records, and the collection must accept writes again.

The long run (>= 200 kills) is ``python -m harness.collection_crash --kills 200`` from tests/
(``--compressed`` for the compressed collection); see tests/harness/collection_crash.py.
"""

from __future__ import annotations

import os

import pytest
from harness import collection_crash

KILLS = int(os.environ.get("LATIX_COLLECTION_CRASH_KILLS", "30"))


@pytest.mark.parametrize("seed,compressed", [(21, False), (22, True)])
def test_collection_crash_consistency(seed: int, compressed: bool) -> None:
    stats = collection_crash.run(KILLS // 2, seed, compressed=compressed)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == KILLS // 2 and stats.docs_checked > 0
    # the kills landed where it matters: recovery had unpublished rows to remove
    assert stats.details.get("left_unpublished_rows", 0) > 0, stats.summary()
    if compressed:
        assert stats.details.get("trained_states", 0) > 0, stats.summary()
        assert stats.details.get("killed_in_training_commit", 0) > 0, stats.summary()


def test_model_is_deterministic() -> None:
    a, b = collection_crash.Model(5), collection_crash.Model(5)
    assert a.state(40) == b.state(40)
    assert [a.steps(n) for n in range(1, 40)] == [b.steps(n) for n in range(1, 40)]
    assert a.state(40) != collection_crash.Model(6).state(40)
    kinds = {a.kind(n) for n in range(1, 200)}
    assert kinds == set(collection_crash.KINDS)
