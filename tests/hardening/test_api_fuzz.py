"""Hypothesis fuzzing of the public Python API (fast part): arbitrary ids, arrays and call
sequences against a plain-Python model. The bounded-time run is ``make fuzz``
(``python -m harness.api_fuzz --seconds N``); see tests/harness/api_fuzz.py.
"""

from __future__ import annotations

import os

from harness import api_fuzz

EXAMPLES = int(os.environ.get("LATIX_API_FUZZ_EXAMPLES", "40"))


SEED = int(os.environ.get("LATIX_API_FUZZ_SEED", "0"))


def test_api_state_machine() -> None:
    # Seeded: the same call sequences on every run (LATIX_API_FUZZ_SEED picks others).
    api_fuzz.run(EXAMPLES, seed=SEED)
