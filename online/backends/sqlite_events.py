"""The embedded event log: one SQLite database in WAL mode that every worker process opens.

Schema (``events.sqlite3`` under ``Settings.event_log_path``)::

    events(seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, userid INTEGER NOT NULL,
           itemid INTEGER NOT NULL, rating REAL NOT NULL, type TEXT, ts INTEGER NOT NULL)
    index events_by_user(userid, seq)

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so a committed batch is fsynced in the
write-ahead log before ``append`` returns (it survives ``kill -9`` of the service and a power loss).
A batch is one ``BEGIN IMMEDIATE`` transaction of ``INSERT OR IGNORE``: the UNIQUE ``event_id`` makes
it idempotent, and concurrent writers (threads, gunicorn workers) wait on ``busy_timeout``. Readers never
wait for a writer (WAL), so a request reads the user's events in a few tens of microseconds. Each
thread has its own connection (``sqlite3`` connections are not shared between threads).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from data_exchange_center.events import SQLITE_COLUMNS, Event, StoredEvent
from data_exchange_center.settings import Settings
from online.backends.base import BackendError, ReadyStatus
from online.backends.event_log import AppendResult

BUSY_TIMEOUT_MS = 5000
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    userid INTEGER NOT NULL,
    itemid INTEGER NOT NULL,
    rating REAL NOT NULL,
    type TEXT,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (userid, seq);
"""
COLUMNS = ", ".join(SQLITE_COLUMNS)


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the database to WAL (it stays so, in the file). Two processes that open a new log at the same
    moment (gunicorn's workers) contend for the switch, and SQLite answers "database is locked" at once
    there instead of waiting on the busy timeout: retry until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"the event log cannot use WAL mode (journal_mode={mode})")
        return


def _stored(row: tuple[int, str, int, int, float, str | None, int]) -> StoredEvent:
    seq, event_id, userid, itemid, rating, event_type, ts = row
    return StoredEvent(seq, Event(event_id, userid, itemid, rating, event_type, ts))


class SqliteEventLog:
    """``EventLog`` over one SQLite file shared by every worker process."""

    name = "sqlite"

    def __init__(self, settings: Settings | None = None, path: Path | None = None) -> None:
        if path is None:
            if settings is None:
                raise ValueError("give settings or a path")
            path = settings.event_log_path
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._lock:
            self._connect().executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection; a new one after a fork (gunicorn --preload), never a parent's."""
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            with self._lock:
                connection = self._connect()
        return connection

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                     check_same_thread=False)  # fmt: skip
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _use_wal(connection)
        connection.execute("PRAGMA synchronous=FULL")
        self._local.connection, self._local.pid = connection, os.getpid()
        self._connections.append(connection)
        return connection

    def append(self, events: list[Event]) -> AppendResult:
        rows = [(e.event_id, e.userid, e.itemid, e.rating, e.type, e.timestamp) for e in events]
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
            before = connection.total_changes
            connection.executemany(
                "INSERT OR IGNORE INTO events (event_id, userid, itemid, rating, type, ts) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            stored = connection.total_changes - before
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise BackendError("events", f"SQLite {self.path}: {exc}") from exc
        return AppendResult(stored, len(rows) - stored)

    def read_user(self, userid: int, since_seq: int, limit: int, timeout_s: float) -> list[StoredEvent]:
        try:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {COLUMNS} FROM events WHERE userid = ? AND seq > ? ORDER BY seq DESC LIMIT ?",
                    (userid, since_seq, limit),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise BackendError("events", f"SQLite {self.path}: {exc}") from exc
        return [_stored(row) for row in reversed(rows)]

    def read_all(self, since_seq: int = 0) -> list[StoredEvent]:
        rows = (
            self._connection()
            .execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (since_seq,))
            .fetchall()
        )
        return [_stored(row) for row in rows]

    def count(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM events").fetchone()[0])

    def status(self) -> ReadyStatus:
        try:
            self._connection().execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return ReadyStatus(False, self.name, None, f"{self.path}: {exc}")
        return ReadyStatus(True, self.name, None)

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
            self._local = threading.local()
