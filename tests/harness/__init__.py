"""Hardening harnesses for the latix index: crash consistency, corruption detection (including
files replaced by other valid files and by FIFOs), concurrency (readers against a writer),
threaded writers against compaction on one handle (``writers``), and ``fork()`` (``forks``).

Each module has a ``run(...) -> Stats`` function (used with small trial counts by the pytest files
``tests/test_crash.py``, ``tests/test_corruption.py``, ``tests/test_concurrency.py``,
``tests/test_writer_threads.py``, ``tests/test_fork.py``) and a command line
(``PYTHONPATH=tests python -m harness.<name> --help``) used by ``make soak`` with large counts.
Every harness is seeded: a failure prints the seed and trial to replay it.
"""
