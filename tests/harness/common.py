"""Shared pieces of the harnesses: deterministic document content, result statistics, and the
environment for child processes (so ``python -m harness.*`` works from any working directory).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HARNESS_ROOT = Path(__file__).resolve().parent.parent  # the tests/ directory


def child_env() -> dict[str, str]:
    """Environment for harness child processes: ``tests/`` on PYTHONPATH, one latix thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HARNESS_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("LATIX_NUM_THREADS", "1")
    return env


def python() -> str:
    """The interpreter running the harness (children use the same one)."""
    return sys.executable


def id_key(doc_id: str) -> int:
    """A stable 32-bit key of an id (crc32, identical across processes and runs)."""
    return zlib.crc32(doc_id.encode())


def doc_vectors(seed: int, doc_id: str, version: int, dim: int, max_tokens: int = 40) -> Any:
    """The token vectors of document ``doc_id`` as written at ``version``: float32 ``(n, dim)``,
    a pure function of its arguments so any process can recompute what must be stored."""
    rng = np.random.default_rng([seed, id_key(doc_id), version])
    n = int(rng.integers(1, max_tokens + 1))
    return rng.standard_normal((n, dim)).astype(np.float32)


def as_stored(v: npt.NDArray[np.float32], dtype: str) -> Any:
    """What the index stores for ``v`` under storage ``dtype`` (the exact expected bytes)."""
    return v.astype(np.float16) if dtype == "float16" else v


def maxsim_np(q: npt.NDArray[np.float32], d: npt.NDArray[Any]) -> float:
    """Reference MaxSim score (numpy, float64 accumulation)."""
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


@dataclasses.dataclass
class Stats:
    """Figures a harness reports."""

    name: str
    trials: int = 0
    failures: int = 0
    docs_checked: int = 0
    details: dict[str, int] = dataclasses.field(default_factory=dict)
    failure_messages: list[str] = dataclasses.field(default_factory=list)

    def count(self, key: str, n: int = 1) -> None:
        """Adds ``n`` to the detail counter ``key``."""
        self.details[key] = self.details.get(key, 0) + n

    def fail(self, msg: str) -> None:
        """Records one failed trial (the message says how to replay it)."""
        self.failures += 1
        if len(self.failure_messages) < 50:
            self.failure_messages.append(msg)

    def summary(self) -> str:
        """One line of figures plus the first failure messages."""
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.details.items()))
        lines = [
            f"[{self.name}] trials={self.trials} failures={self.failures} "
            f"documents_checked={self.docs_checked} {extra}".rstrip()
        ]
        lines += [f"  FAIL: {m}" for m in self.failure_messages[:20]]
        return "\n".join(lines)
