"""Shared pieces of the harnesses: deterministic document content, result statistics, and the
environment for child processes (so ``python -m harness.*`` works from any working directory).
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import time
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


class ChildProc:
    """A running child writer (``cmd``, run with :func:`child_env`) with a non-blocking line reader
    on its stdout: the crash harnesses time their kills by the lines it prints."""

    def __init__(self, cmd: list[str]) -> None:
        self.p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
        )
        assert self.p.stdout is not None
        os.set_blocking(self.p.stdout.fileno(), False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.lines: list[tuple[float, str]] = []

    def poll(self, timeout: float) -> list[tuple[float, str]]:
        """Reads the lines available within ``timeout`` seconds; returns the new ones."""
        new: list[tuple[float, str]] = []
        if self.sel.select(timeout):
            assert self.p.stdout is not None
            chunk = self.p.stdout.read() or b""
            now = time.monotonic()
            self.buf += chunk
            *full, self.buf = self.buf.split(b"\n")
            new = [(now, ln.decode()) for ln in full]
            self.lines += new
        return new

    def kill(self) -> str:
        """SIGKILLs the child, collects its remaining output; returns its stderr."""
        try:
            os.kill(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        while self.poll(0):
            pass
        self.sel.close()
        assert self.p.stderr is not None and self.p.stdout is not None
        err = self.p.stderr.read().decode(errors="replace")
        self.p.stdout.close()
        self.p.stderr.close()
        return err
