"""The administration audit trail: who did what to the gateway, from where, with what result.

Kept in the gateway's SQLite store (the database that holds the policy audit log of camera
changes, :mod:`gateway.policy.db`), in its own append-only table ``admin_audit_log``:
triggers refuse UPDATE and DELETE, each record is one transaction. Recorded: sign-in and
failed sign-in (form, Basic, Digest), lock-outs, sign-out, and every state-changing request
(reload, enforce, audit, inventory, reconnect), including refused ones (role, CSRF).
Passwords are never recorded; ``detail`` holds what changed (e.g. the cameras a reload
added or removed) as JSON.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.store import Store

MIGRATIONS = [
    """
    CREATE TABLE admin_audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        account TEXT NOT NULL,
        role TEXT,
        method TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        result TEXT NOT NULL,
        detail TEXT
    );
    CREATE TRIGGER admin_audit_log_no_update BEFORE UPDATE ON admin_audit_log
    BEGIN SELECT RAISE(ABORT, 'admin_audit_log is append-only'); END;
    CREATE TRIGGER admin_audit_log_no_delete BEFORE DELETE ON admin_audit_log
    BEGIN SELECT RAISE(ABORT, 'admin_audit_log is append-only'); END;
    """,
]
MAX_FIELD = 512


@dataclass(frozen=True)
class TrailEntry:
    id: int
    at: float
    account: str
    role: str | None
    method: str  # "form" | "basic" | "digest" | "session" | "-"
    source: str  # peer address
    action: str  # "sign-in", "sign-in-failed", "reload", ...
    target: str | None
    result: str  # "ok", "refused: ...", "failed: ..."
    detail: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "account": self.account,
            "role": self.role,
            "method": self.method,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "result": self.result,
            "detail": self.detail,
        }


class AdminTrail:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.migrate("admin", MIGRATIONS)

    def record(
        self,
        *,
        account: str,
        role: str | None,
        method: str,
        source: str,
        action: str,
        result: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        return self.store.execute(
            "INSERT INTO admin_audit_log(at, account, role, method, source, action, target,"
            " result, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.clock(),
                account[:MAX_FIELD],
                role,
                method,
                source[:MAX_FIELD],
                action[:MAX_FIELD],
                target[:MAX_FIELD] if target else None,
                result[:MAX_FIELD],
                json.dumps(detail, sort_keys=True, default=str)[:8192] if detail else None,
            ),
        )

    def entries(self, limit: int = 500, account: str | None = None) -> list[TrailEntry]:
        """The newest ``limit`` records, oldest first."""
        sql = "SELECT * FROM admin_audit_log"
        params: tuple[Any, ...] = ()
        if account is not None:
            sql += " WHERE account = ?"
            params = (account,)
        rows = self.store.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_entry(row) for row in reversed(rows)]


def _entry(row: sqlite3.Row) -> TrailEntry:
    detail = row["detail"]
    try:
        parsed = json.loads(detail) if detail else None
    except ValueError:
        parsed = {"text": detail}
    return TrailEntry(
        id=row["id"],
        at=row["at"],
        account=row["account"],
        role=row["role"],
        method=row["method"],
        source=row["source"],
        action=row["action"],
        target=row["target"],
        result=row["result"],
        detail=parsed,
    )
