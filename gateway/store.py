"""SQLite persistence shared by the subsystems (inventory, findings, audit log, egress).

One database file in the state directory, WAL mode so readers never block the writer and a
kill at any moment leaves a consistent file. Each subsystem owns a *component* with its own
ordered list of migrations; ``migrate`` applies the ones not yet recorded, each in its own
transaction together with its version bump. A migration is an SQL script of any number of
statements, trigger bodies included (statements are split where SQLite says one is complete).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gateway.files import state_owner

DB_NAME = "gateway.sqlite3"
# How long a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT = 10.0


def _create_private(path: Path) -> None:
    """Create the database file 0600 whatever the umask (it holds inventory and audit
    records), owned by whoever owns the state directory: root running a CLI command against
    an installed gateway's state must not leave a file the service user cannot write.
    SQLite gives its -wal and -shm files the database file's owner and mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        uid, gid = state_owner(path.parent)
        if (uid, gid) != (-1, -1):
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL. The switch needs the file to itself for a moment, and SQLite
    answers "database is locked" at once rather than waiting when another process is making
    the same switch (worker processes opening a new state directory together): retried for
    up to BUSY_TIMEOUT, a few milliseconds apart."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # extended codes too
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
        # One connection guarded by a lock: callers are the event loop and the odd worker
        # thread; statements are short.
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        _use_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> Store:
        return cls(Path(state_dir) / DB_NAME)

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply ``migrations[v:]`` for ``component``; returns the resulting version.

        Each migration runs in its own write transaction, and the version is read inside it:
        processes opening the same file at once (worker processes at start-up, a CLI command
        beside the service) apply each migration exactly once, the others waiting on the
        lock and then finding it done."""
        with self._lock:
            while True:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    row = self._conn.execute(
                        "SELECT version FROM schema_version WHERE component = ?", (component,)
                    ).fetchone()
                    current = row[0] if row else 0
                    if current >= len(migrations):
                        self._conn.execute("COMMIT")
                        return current
                    for statement in _split(migrations[current]):
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_version(component, version) VALUES (?, ?)"
                        " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        (component, current + 1),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement in its own transaction; returns lastrowid."""
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.lastrowid or 0

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Transaction:
    """``with store.transaction() as conn:`` - several statements, all or nothing."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        self.store._conn.execute("BEGIN IMMEDIATE")
        return self.store._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store._lock.release()


def _split(script: str) -> list[str]:
    """The statements of ``script``, cut at the semicolons SQLite says end one.

    ``executescript`` would do this but commits first, which would separate a migration from
    its version bump; a ``;`` inside a string or a trigger body does not end a statement.
    """
    statements: list[str] = []
    current = ""
    *pieces, tail = script.split(";")
    for piece in pieces:
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    current += tail
    if current.strip():
        # A last statement without its semicolon is fine; an unfinished one is not.
        if not sqlite3.complete_statement(current + ";"):
            raise ValueError(f"incomplete SQL statement in migration: {current.strip()[:60]!r}")
        statements.append(current.strip())
    return statements
