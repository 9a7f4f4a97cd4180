"""Hardening harnesses for the latix index: crash consistency, corruption detection (including
files replaced by other valid files and by FIFOs), concurrency (readers against a writer),
threaded writers against compaction on one handle (``writers``), and ``fork()`` (``forks``).

Each module has a ``run(...) -> Stats`` function (used with small trial counts by the pytest files
under ``tests/hardening/``: ``test_index_crash.py``, ``test_collection_crash.py``,
``test_corruption.py``, ``test_concurrency.py``, ``test_writer_threads.py``, ``test_fork.py``,
``test_api_fuzz.py``) and a command line
(``PYTHONPATH=tests python -m harness.<name> --help``) used by ``make soak`` with large counts.
Every harness is seeded: a failure prints the seed and trial to replay it.
"""
