"""One handle written from several threads while another thread compacts it (fast part): every
acknowledged add, replace and delete is committed exactly, nothing staged is lost, verify()
passes. The long run is ``make soak`` (``python -m harness.writers``).
"""

from __future__ import annotations

import os

import pytest
from harness import writers

OPS = int(os.environ.get("LATIX_WRITER_OPS", "150"))


@pytest.mark.parametrize(
    "seed,dtype,compressed", [(1, "float16", False), (2, "float32", False), (3, "float16", True)]
)
def test_threads_write_one_handle_during_compaction(
    seed: int, dtype: str, compressed: bool
) -> None:
    ops = OPS * 2 // 3 if compressed else OPS  # each compressed compaction re-encodes everything
    stats = writers.run(ops, seed, writers=3, dtype=dtype, compressed=compressed)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == 3 * ops
    assert stats.details["compactions"] > 0 and stats.details["commits"] > 3
    assert stats.docs_checked > 0
    if compressed:
        assert stats.details["trained"] == 1
