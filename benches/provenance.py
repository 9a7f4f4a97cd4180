"""Provenance of a benchmark run, printed above every table a benchmark in benches/ writes: the
exact command, the commit it ran at (and whether the work tree had uncommitted changes), the CPU,
the MaxSim kernel latix selected (`latix.kernel_name()`), the latix version, the date and the
machine's load. A table in bench-results/ carries these lines so that anyone can tell what
produced it and re-run it."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """`<40-hex commit>` of the project's checkout, `+ uncommitted changes to <paths>` when the
    work tree differs from it in tracked files, or `unknown (not a git checkout)`."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip("\n")  # porcelain lines are "XY path": keep the leading blank
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not dirty:
        return head
    paths = [line[3:] for line in dirty.splitlines()]
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"{head} + uncommitted changes to {shown}"


def cpu_model() -> str:
    """The CPU's model name and logical CPU count (from /proc/cpuinfo on Linux)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs)"


def load_average() -> str:
    """1-, 5- and 15-minute load averages, or "n/a"."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def lines(argv: list[str] | None = None) -> list[str]:
    """Provenance lines (Markdown list items) for a run of `argv` (default: this process)."""
    import latix

    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT) if argv else "?"
    cmd = shlex.join(["python", script, *argv[1:]])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- command: `{cmd}`",
        f"- commit: {git_commit()}",
        f"- CPU: {cpu_model()}; latix MaxSim kernel: `{latix.kernel_name()}`; "
        f"latix {latix.__version__}; {platform.system()} {platform.release()}",
        f"- date: {now}; load average (1 / 5 / 15 min) at start: {load_average()}",
    ]


def print_header(argv: list[str] | None = None) -> None:
    """Prints :func:`lines` and flushes (before the run, so a killed run still says what ran)."""
    print("\n".join(lines(argv)))
    sys.stdout.flush()
