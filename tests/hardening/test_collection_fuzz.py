"""Hypothesis stateful testing of ``latix.Collection`` (fast part): arbitrary sequences of
writes, batches, compactions and reopens against a plain-Python model, every read checked
against it and against numpy MaxSim. The bounded-time run is
``python -m harness.collection_fuzz --seconds N``; see tests/harness/collection_fuzz.py.
"""

from __future__ import annotations

import os

import pytest
from harness import collection_fuzz

EXAMPLES = int(os.environ.get("LATIX_COLLECTION_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("LATIX_COLLECTION_FUZZ_SEED", "0"))


@pytest.mark.parametrize("kind", sorted(collection_fuzz.MACHINES))
def test_collection_state_machine(kind: str) -> None:
    # Seeded: the same call sequences on every run (LATIX_COLLECTION_FUZZ_SEED picks others).
    collection_fuzz.run(EXAMPLES, seed=SEED, kind=kind)
