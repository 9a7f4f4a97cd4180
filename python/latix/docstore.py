"""Document text store kept beside an index, so search results can show (and explain) their text.

A single SQLite file keyed by document id. Each :meth:`DocStore.put_many` is one transaction, so a
crash or Ctrl-C leaves either all of a batch or none of it (SQLite's journal makes commits atomic).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence

__all__ = ["DocStore"]


class DocStore:
    """Maps document ids to their text (SQLite).

    Args:
        path: the database file (created if missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, text TEXT NOT NULL)"
        )
        self._db.commit()

    def put_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Insert or replace (id, text) pairs in one atomic transaction."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO docs (id, text) VALUES (?, ?)", items)

    def get_many(self, ids: Sequence[str]) -> dict[str, str]:
        """Texts of the given ids that are present (missing ids are absent from the result)."""
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            q = "SELECT id, text FROM docs WHERE id IN ({})".format(",".join("?" * len(chunk)))
            out.update(self._db.execute(q, chunk).fetchall())
        return out

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
