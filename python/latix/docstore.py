"""The record store of a collection: texts, metadata and the keyword index, in one SQLite file.

Tables (``records.sqlite``, WAL journal, ``synchronous=FULL``)::

    records(rk INTEGER PRIMARY KEY AUTOINCREMENT, id, text, meta JSON, spans JSON,
            n_passages, n_tokens, gen, dgen)
    fts     FTS5 over records.text (external content, porter stemming, unicode61), kept in step
            with records by triggers, so a text and its keyword entry change in one transaction
    fields(name PRIMARY KEY, type, gen)     metadata field types
    info(key PRIMARY KEY, value)            format version

Each stored version of a record has its own integer key ``rk``, never reused (AUTOINCREMENT); the
collection's vector index names its documents by these keys (``"<rk>"`` for a record's first
passage, ``"<rk>.<p>"`` for the others), so mapping index documents to rows is integer work and a
row never changes after it is written (an upsert writes a new version).

**Commit protocol** (the index commit is the point of truth). The index publishes numbered
generations atomically. A writer that stages changes for generation ``G + 1`` first writes its
rows in SQLite tagged ``gen = G + 1`` (new versions) or ``dgen = G + 1`` (versions it deletes),
committed before the index is asked to commit. Readers at index generation ``G`` see the rows
with ``gen <= G AND (dgen IS NULL OR dgen > G)``: exactly the records of that generation,
whatever a writer is doing. After the index publishes ``G + 1``, rows with ``dgen <= G + 1`` are
removed. A writer taking over after a crash (:meth:`RecordStore.recover`) removes rows of
generations the index never published and restores rows whose deletion it never published, so
texts, metadata, keyword index and vectors again describe the same records.

**Threads and processes.** One writer connection, used under the collection's write lock; each
thread that reads gets its own connection (WAL lets readers run beside the writer), opened in
the process that uses it: connections are never carried across ``fork()``. Every read runs
inside :meth:`RecordStore.reading`, which counts it in flight: :meth:`RecordStore.close` waits
for the reads in flight before it closes the connections (closing a ``sqlite3`` connection
while another thread steps a statement on it crashes the interpreter), and reads that start
after it raise ``IndexClosedError``. Writes are counted too, and ``fork()`` (a hook run just
before it) holds new reads and writes back until those in flight have ended, so that no thread
is inside SQLite when the process forks: a child would inherit SQLite's mutexes locked by a
thread that does not exist in it, and hang at its first query.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latix.errors import CorruptedIndexError, IndexClosedError, LatixIOError
from latix.filters import FieldType, Node, to_sql

__all__ = ["RecordStore", "Row", "FORMAT_VERSION", "DB_FILE"]

DB_FILE = "records.sqlite"
FORMAT_VERSION = 1
_CHUNK = 900  # bound parameters per IN (...) list (SQLite's default limit is 32766)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    rk INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT,
    spans TEXT,
    n_passages INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    dgen INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS records_head_id ON records(id) WHERE dgen IS NULL;
CREATE INDEX IF NOT EXISTS records_id ON records(id);
CREATE INDEX IF NOT EXISTS records_gen ON records(gen);
CREATE INDEX IF NOT EXISTS records_dgen ON records(dgen) WHERE dgen IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    text, content='records', content_rowid='rk',
    tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS records_ai AFTER INSERT ON records BEGIN
    INSERT INTO fts(rowid, text) VALUES (new.rk, new.text);
END;
CREATE TRIGGER IF NOT EXISTS records_ad AFTER DELETE ON records BEGIN
    INSERT INTO fts(fts, rowid, text) VALUES ('delete', old.rk, old.text);
END;
"""

#: Visibility of a row at committed generation ``?`` (bound twice).
VISIBLE = "gen <= ? AND (dgen IS NULL OR dgen > ?)"


@dataclass(frozen=True)
class Row:
    """One stored record version.

    Attributes:
        rk: its key (the index names its passages ``"<rk>"``, ``"<rk>.1"``, ...).
        id: the user's id.
        text: the text.
        metadata: the metadata dict.
        spans: character spans ``(start, end)`` of its passages, or None for one passage (the
            whole text).
        n_passages: passages indexed.
        n_tokens: token vectors indexed (all passages).
    """

    rk: int
    id: str
    text: str
    metadata: dict[str, Any]
    spans: list[tuple[int, int]] | None
    n_passages: int
    n_tokens: int


def _row(t: Sequence[Any]) -> Row:
    rk, id_, text, meta, spans, n_p, n_t = t
    return Row(
        int(rk),
        id_,
        text,
        json.loads(meta) if meta else {},
        [(int(a), int(b)) for a, b in json.loads(spans)] if spans else None,
        int(n_p),
        int(n_t),
    )


_ROW_COLS = "rk, id, text, meta, spans, n_passages, n_tokens"


class RecordStore:
    """The SQLite file of a collection (see the module documentation).

    Args:
        path: the database file; created with its tables if missing.

    Raises:
        LatixIOError: the file cannot be opened.
        CorruptedIndexError: it is not a latix record store, or a newer format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pid = os.getpid()
        self._closed = False
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        self._wlock = threading.RLock()
        self._gate = threading.Condition()  # guards _closed, _active and _forking
        self._active = 0  # reads and writes in flight (see reading(), close(), fork)
        self._forking = False  # a fork() is being prepared: new reads and writes wait
        _LIVE.add(self)
        con = self._connect()
        try:
            try:
                v = con.execute("SELECT value FROM info WHERE key = 'format'").fetchone()
            except sqlite3.OperationalError:  # a new file: no tables yet
                con.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + f"INSERT OR IGNORE INTO info (key, value) VALUES ('format', "
                    f"'{FORMAT_VERSION}'); COMMIT;"
                )
                v = con.execute("SELECT value FROM info WHERE key = 'format'").fetchone()
            if v is None or not str(v[0]).isdigit():
                raise CorruptedIndexError(f"{self.path}: not a latix record store (no format)")
            if int(v[0]) > FORMAT_VERSION:
                raise CorruptedIndexError(
                    f"{self.path} was written by a newer latix (record format {v[0]})"
                )
        except sqlite3.DatabaseError as e:
            raise CorruptedIndexError(f"{self.path}: not a latix record store ({e})") from None
        finally:
            con.close()

    # ------------------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.DatabaseError as e:
            raise LatixIOError(f"{self.path}: cannot open the record store: {e}") from None
        return con

    def _check(self) -> None:
        if self._closed:
            raise IndexClosedError(f"the collection at {self.path.parent} is closed")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection for the duration of one read: :meth:`close` waits
        until the block ends before it closes the connection.

        Raises:
            IndexClosedError: the store is closed.
        """
        self._enter()
        try:
            yield self.reader()
        finally:
            self._leave()

    def _enter(self) -> None:
        """Counts one read or write in flight (waiting while a fork() is being prepared)."""
        depth = getattr(self._local, "depth", 0)
        with self._gate:
            # A thread already inside a read or write goes on (the fork waits for it).
            while self._forking and depth == 0:
                self._gate.wait()
            self._check()
            self._active += 1
        self._local.depth = depth + 1

    def _leave(self) -> None:
        self._local.depth -= 1
        with self._gate:
            self._active -= 1
            if self._active == 0:
                self._gate.notify_all()

    def _before_fork(self) -> None:
        """Holds new reads and writes back and waits for those in flight: a thread inside
        SQLite at fork() may hold one of SQLite's own mutexes, which the child then inherits
        locked (its first ``sqlite3.connect`` hung forever). Ends in the parent with
        :meth:`_after_fork_in_parent`; the child starts afresh."""
        # The forking thread's own reads and writes (a fork from inside one) are not waited
        # for: they cannot end before the fork does.
        own = getattr(self._local, "depth", 0)
        self._gate.acquire()
        self._forking = True
        while self._active > own:
            self._gate.wait()

    def _after_fork_in_parent(self) -> None:
        self._forking = False
        self._gate.notify_all()
        self._gate.release()

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use in this thread and process).
        Not counted as in flight: latix's own reads use :meth:`reading`."""
        self._check()
        c: _Conn | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if c is None or c.pid != pid:
            # A connection inherited through fork() is never used (nor closed: that could
            # release locks the parent holds); this process opens its own.
            c = _Conn(self._connect(), pid)
            self._local.conn = c
            with self._conns_lock:
                self._conns.add(c)
        return c.con

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside one ``BEGIN IMMEDIATE`` transaction, committed on
        success and rolled back on error. Callers hold the collection's write lock."""
        self._check()
        with self._wlock:
            self._enter()
            try:
                if self._wconn is None or self._pid != os.getpid():
                    self._wconn = self._connect()
                    self._pid = os.getpid()
                con = self._wconn
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                self._leave()

    def close(self) -> None:
        """Closes every connection this process opened, once the reads in flight have ended
        (later reads raise IndexClosedError). Idempotent."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            while self._active > 0:
                self._gate.wait()
        mine = os.getpid()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            if c.pid == mine:
                c.con.close()
        if self._wconn is not None and self._pid == mine:
            self._wconn.close()
        self._wconn = None

    # ------------------------------------------------------------------------------ schema

    def fields(self) -> dict[str, FieldType]:
        """Metadata field name -> type (fields of uncommitted batches included)."""
        with self.reading() as con:
            rows = con.execute("SELECT name, type FROM fields").fetchall()
        return {n: t for n, t in rows}

    @staticmethod
    def add_fields(con: sqlite3.Connection, new: dict[str, FieldType], gen: int) -> None:
        """Registers new metadata fields (inside a write transaction)."""
        con.executemany(
            "INSERT INTO fields (name, type, gen) VALUES (?, ?, ?)",
            [(n, t, gen) for n, t in new.items()],
        )

    # ------------------------------------------------------------------------------ writing

    @staticmethod
    def next_key(con: sqlite3.Connection) -> int:
        """The next unused record key (keys of deleted rows are never reused)."""
        r = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        m = con.execute("SELECT MAX(rk) FROM records").fetchone()[0]
        return max(int(r[0]) if r else 0, int(m) if m is not None else 0) + 1

    @staticmethod
    def insert(con: sqlite3.Connection, rows: Iterable[tuple[Any, ...]], gen: int) -> None:
        """Inserts ``(rk, id, text, meta_json, spans_json, n_passages, n_tokens)`` rows of
        generation ``gen`` (inside a write transaction)."""
        con.executemany(
            "INSERT INTO records (rk, id, text, meta, spans, n_passages, n_tokens, gen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (r + (gen,) for r in rows),
        )

    @staticmethod
    def mark_deleted(con: sqlite3.Connection, rks: Sequence[int], gen: int) -> None:
        """Marks record versions as deleted by generation ``gen``."""
        for i in range(0, len(rks), _CHUNK):
            chunk = list(rks[i : i + _CHUNK])
            con.execute(
                f"UPDATE records SET dgen = ? WHERE rk IN ({','.join('?' * len(chunk))})",
                [gen, *chunk],
            )

    @staticmethod
    def head(con: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The writer's view: id -> (rk, n_passages) of the versions not deleted, committed or
        staged."""
        out: dict[str, tuple[int, int]] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = list(ids[i : i + _CHUNK])
            q = (
                "SELECT id, rk, n_passages FROM records WHERE dgen IS NULL AND id IN "
                f"({','.join('?' * len(chunk))})"
            )
            for id_, rk, n_p in con.execute(q, chunk):
                out[id_] = (int(rk), int(n_p))
        return out

    def finish(self, committed: int) -> None:
        """After the index published generation ``committed``: removes the rows it deleted."""
        with self.writing() as con:
            con.execute("DELETE FROM records WHERE dgen <= ?", (committed,))

    def rollback(self, committed: int) -> int:
        """Undoes every change staged for generations after ``committed`` (rows written,
        deletions marked, fields registered). Returns the rows undone."""
        with self.writing() as con:
            n = con.execute("DELETE FROM records WHERE gen > ?", (committed,)).rowcount
            n += con.execute("UPDATE records SET dgen = NULL WHERE dgen > ?", (committed,)).rowcount
            con.execute("DELETE FROM fields WHERE gen > ?", (committed,))
        return int(n)

    def recover(self, committed: int) -> int:
        """Brings the store in line with index generation ``committed`` after a crash (see
        the module documentation); returns the rows changed."""
        n = self.rollback(committed)
        with self.writing() as con:
            n += con.execute("DELETE FROM records WHERE dgen <= ?", (committed,)).rowcount
        return int(n)

    # ------------------------------------------------------------------------------ reading

    def get(self, ids: Sequence[str], gen: int) -> dict[str, Row]:
        """Visible versions of ``ids`` at generation ``gen`` (missing ids are absent)."""
        out: dict[str, Row] = {}
        with self.reading() as con:
            for i in range(0, len(ids), _CHUNK):
                chunk = list(ids[i : i + _CHUNK])
                q = (
                    f"SELECT {_ROW_COLS} FROM records WHERE {VISIBLE} AND id IN "
                    f"({','.join('?' * len(chunk))})"
                )
                for t in con.execute(q, [gen, gen, *chunk]):
                    r = _row(t)
                    out[r.id] = r
        return out

    def by_key(self, rks: Sequence[int]) -> dict[int, Row]:
        """Rows by key, whatever their generation (the index said they exist)."""
        out: dict[int, Row] = {}
        with self.reading() as con:
            for i in range(0, len(rks), _CHUNK):
                chunk = list(rks[i : i + _CHUNK])
                q = f"SELECT {_ROW_COLS} FROM records WHERE rk IN ({','.join('?' * len(chunk))})"
                for t in con.execute(q, chunk):
                    r = _row(t)
                    out[r.rk] = r
        return out

    def count(self, gen: int, where: Node | None = None) -> int:
        """Visible records at generation ``gen`` (matching ``where``)."""
        sql, params = ("1", []) if where is None else to_sql(where)
        q = f"SELECT COUNT(*) FROM records WHERE {VISIBLE} AND {sql}"
        with self.reading() as con:
            return int(con.execute(q, [gen, gen, *params]).fetchone()[0])

    def ids(self, gen: int, where: Node | None = None) -> list[str]:
        """Ids of the visible records at ``gen`` (matching ``where``), in insertion order."""
        sql, params = ("1", []) if where is None else to_sql(where)
        q = f"SELECT id FROM records WHERE {VISIBLE} AND {sql} ORDER BY rk"
        with self.reading() as con:
            return [r[0] for r in con.execute(q, [gen, gen, *params])]

    def keys(self, gen: int) -> list[tuple[int, int]]:
        """(rk, n_passages) of the visible records at ``gen``."""
        q = f"SELECT rk, n_passages FROM records WHERE {VISIBLE} ORDER BY rk"
        with self.reading() as con:
            return [(int(a), int(b)) for a, b in con.execute(q, [gen, gen])]

    def totals(self, gen: int) -> tuple[int, int, int]:
        """(records, passages, token vectors) visible at ``gen``."""
        q = f"SELECT COUNT(*), SUM(n_passages), SUM(n_tokens) FROM records WHERE {VISIBLE}"
        with self.reading() as con:
            n, p, t = con.execute(q, [gen, gen]).fetchone()
        return int(n), int(p or 0), int(t or 0)

    def column(self, field: str, ftype: FieldType, lo: int, hi: int) -> list[tuple[int, Any]]:
        """``(rk, value)`` of field ``field`` for the rows with ``lo <= rk <= hi`` (value None
        where missing; a list for list fields), whatever their generation."""
        path = "$." + field
        q = "SELECT rk, json_extract(meta, ?) FROM records WHERE rk BETWEEN ? AND ?"
        with self.reading() as con:
            rows = list(con.execute(q, (path, lo, hi)))
        if ftype == "list[str]":
            return [(rk, None if v is None else json.loads(v)) for rk, v in rows]
        return rows

    def keyword(
        self, match: str, k: int, gen: int, where: Node | None = None
    ) -> list[tuple[int, float]]:
        """BM25 (FTS5, k1 = 1.2, b = 0.75) top ``k`` of an FTS5 query among the records visible
        at ``gen`` (matching ``where``): ``(rk, score)`` best first, score = -bm25 (higher is
        better)."""
        sql, params = ("1", []) if where is None else to_sql(where, "r.meta")
        q = (
            "SELECT r.rk, bm25(fts) AS s FROM fts JOIN records r ON r.rk = fts.rowid "
            f"WHERE fts MATCH ? AND r.gen <= ? AND (r.dgen IS NULL OR r.dgen > ?) AND {sql} "
            "ORDER BY s LIMIT ?"
        )
        with self.reading() as con:
            rows = con.execute(q, [match, gen, gen, *params, k]).fetchall()
        return [(int(rk), -float(s)) for rk, s in rows]

    def check(self) -> None:
        """SQLite's integrity check and FTS5's check of the keyword index against the texts.

        Raises:
            CorruptedIndexError: naming the problem.
        """
        with self.reading() as con:
            try:
                bad = con.execute("PRAGMA integrity_check").fetchall()
                if bad != [("ok",)]:
                    raise CorruptedIndexError(f"{self.path}: integrity check failed: {bad[:5]}")
                con.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
            except sqlite3.DatabaseError as e:
                raise CorruptedIndexError(f"{self.path}: {e}") from None


_LIVE: weakref.WeakSet[RecordStore] = weakref.WeakSet()


def _held_stores() -> list[RecordStore]:
    return sorted(_LIVE, key=id)  # one order for every fork: no two forks deadlock


_FORKING: list[RecordStore] = []  # the stores whose gates this fork holds


def _before_fork() -> None:
    _FORKING[:] = _held_stores()
    for st in _FORKING:
        st._before_fork()


def _after_fork_in_parent() -> None:
    for st in reversed(_FORKING):
        st._after_fork_in_parent()
    _FORKING.clear()


def _after_fork_in_child() -> None:
    # Locks another thread held at fork() stay held forever in the child: start fresh.
    _FORKING.clear()
    for st in list(_LIVE):
        st._wlock = threading.RLock()
        st._conns_lock = threading.Lock()
        st._gate = threading.Condition()
        st._active = 0  # (none was in flight at the fork: _before_fork waited for them)
        st._forking = False
        st._local.depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class _Conn:
    """A read connection and the process that opened it (weak-referenceable)."""

    __slots__ = ("con", "pid", "__weakref__")

    def __init__(self, con: sqlite3.Connection, pid: int) -> None:
        self.con = con
        self.pid = pid
