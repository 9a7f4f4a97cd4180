"""Hardening harnesses for the latix index: crash consistency, corruption detection, concurrency.

Each module has a ``run(...) -> Stats`` function (used with small trial counts by the pytest files
``tests/test_crash.py``, ``tests/test_corruption.py``, ``tests/test_concurrency.py``) and a
command line (``PYTHONPATH=tests python -m harness.<name> --help``) used by ``make soak`` with
large counts. Every harness is seeded: a failure prints the seed and trial to replay it.
"""
