"""Policy tables in the gateway's SQLite store.

- ``policy_inventory``: the latest inventory snapshot per camera (identity, services, settings)
- ``policy_history``: what changed between snapshots (firmware changed, setting changed or
  drifted back from a value the gateway enforced)
- ``policy_findings``: the findings of the latest audit per camera
- ``policy_audit_log``: append-only record of every change the gateway made to a camera,
  with the value before and after and whether reading back confirmed it; triggers refuse
  UPDATE and DELETE. Each write is one transaction, so a kill leaves whole rows or none.

Settings stored here are already redacted by the device clients (no camera secrets).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.devices.base import REDACTED, is_secret_key, redact
from gateway.store import Store

MIGRATIONS = [
    """
    CREATE TABLE policy_inventory (
        camera TEXT PRIMARY KEY,
        taken_at REAL NOT NULL,
        vendor TEXT NOT NULL,
        identity TEXT,
        services TEXT NOT NULL,
        settings TEXT NOT NULL,
        error TEXT
    );
    CREATE TABLE policy_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        camera TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    CREATE INDEX policy_history_camera ON policy_history(camera, id);
    CREATE TABLE policy_findings (
        camera TEXT NOT NULL,
        id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (camera, id)
    );
    CREATE TABLE policy_audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        camera TEXT NOT NULL,
        key TEXT NOT NULL,
        before TEXT,
        after TEXT NOT NULL,
        verified INTEGER NOT NULL,
        actor TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX policy_audit_log_camera ON policy_audit_log(camera, key, id)
    """,
    # IF NOT EXISTS: databases made before this migration got the same triggers at start-up.
    """
    CREATE TRIGGER IF NOT EXISTS policy_audit_log_no_update BEFORE UPDATE ON policy_audit_log
    BEGIN SELECT RAISE(ABORT, 'policy_audit_log is append-only'); END;
    CREATE TRIGGER IF NOT EXISTS policy_audit_log_no_delete BEFORE DELETE ON policy_audit_log
    BEGIN SELECT RAISE(ABORT, 'policy_audit_log is append-only'); END;
    """,
]


@dataclass(frozen=True)
class HistoryEvent:
    kind: str  # "firmware_changed" | "identity_changed" | "setting_changed" | "setting_drifted"
    key: str
    before: str | None
    after: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class LogEntry:
    id: int
    at: float
    camera: str
    key: str
    before: str | None
    after: str
    verified: bool
    actor: str
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "camera": self.camera,
            "key": self.key,
            "before": self.before,
            "after": self.after,
            "verified": self.verified,
            "actor": self.actor,
            "detail": self.detail,
        }


class PolicyStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("policy", MIGRATIONS)

    # ------------------------------------------------------------------ inventory

    def snapshot(self, camera: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT * FROM policy_inventory WHERE camera = ?", (camera,))
        return _snapshot(rows[0]) if rows else None

    def snapshots(self) -> list[dict[str, Any]]:
        """The latest snapshot of every camera ever inventoried, by camera name."""
        rows = self.store.query("SELECT * FROM policy_inventory ORDER BY camera")
        return [_snapshot(row) for row in rows]

    def save_inventory(
        self,
        camera: str,
        vendor: str,
        identity: Mapping[str, str] | None,
        services: list[str],
        settings: Mapping[str, str],
        error: str | None,
        now: float,
        enforced: Mapping[str, str] | None = None,
    ) -> list[HistoryEvent]:
        """Store the snapshot and the history of what changed since the last good one.

        A failed read (``error``) keeps the last good identity and settings, so a camera that
        is briefly unreachable does not produce a storm of "changed" events when it returns.
        """
        previous = self.snapshot(camera)
        events: list[HistoryEvent] = []
        if error is None and previous is not None and previous["identity"]:
            old_id, old_settings = previous["identity"], previous["settings"]
            new_id = dict(identity or {})
            for key in ("firmware", "build"):
                if old_id.get(key) != new_id.get(key):
                    events.append(
                        HistoryEvent("firmware_changed", key, old_id.get(key), new_id.get(key))
                    )
            for key in ("model", "serial", "mac"):
                if old_id.get(key) != new_id.get(key):
                    events.append(
                        HistoryEvent("identity_changed", key, old_id.get(key), new_id.get(key))
                    )
            for key in sorted(set(old_settings) | set(settings)):
                before, after = old_settings.get(key), settings.get(key)
                if before == after:
                    continue
                drifted = enforced is not None and key in enforced and enforced[key] == before
                kind = "setting_drifted" if drifted else "setting_changed"
                if is_secret_key(key):  # that it changed is news; the values are secrets
                    before, after = _hidden(before), _hidden(after)
                events.append(HistoryEvent(kind, key, before, after))
        if error is not None and previous is not None:
            identity = identity or previous["identity"]
            settings = settings or previous["settings"]
            services = services or previous["services"]
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO policy_inventory(camera, taken_at, vendor, identity, services,"
                " settings, error) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(camera) DO UPDATE SET taken_at = excluded.taken_at,"
                " vendor = excluded.vendor, identity = excluded.identity,"
                " services = excluded.services, settings = excluded.settings,"
                " error = excluded.error",
                (
                    camera,
                    now,
                    vendor,
                    json.dumps(dict(identity)) if identity else None,
                    json.dumps(services),
                    json.dumps(redact(settings), sort_keys=True),
                    error,
                ),
            )
            conn.executemany(
                "INSERT INTO policy_history(at, camera, kind, key, before, after)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(now, camera, e.kind, e.key, e.before, e.after) for e in events],
            )
        return events

    def history(self, camera: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "SELECT * FROM policy_history"
        params: tuple[Any, ...] = ()
        if camera is not None:
            sql += " WHERE camera = ?"
            params = (camera,)
        rows = self.store.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_redacted_entry(dict(row)) for row in reversed(rows)]

    # ------------------------------------------------------------------ findings

    def save_findings(self, camera: str, findings: list[dict[str, Any]], now: float) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM policy_findings WHERE camera = ?", (camera,))
            conn.executemany(
                "INSERT INTO policy_findings(camera, id, at, kind, severity, status, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (camera, f["id"], now, f["kind"], f["severity"], f["status"], json.dumps(f))
                    for f in findings
                ],
            )

    def findings(self, camera: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT data FROM policy_findings WHERE camera = ? ORDER BY id", (camera,)
        )
        return [json.loads(row["data"]) for row in rows]

    def all_findings(self) -> dict[str, list[dict[str, Any]]]:
        """``{camera: findings of its latest audit}`` for every audited camera."""
        result: dict[str, list[dict[str, Any]]] = {}
        for row in self.store.query("SELECT camera, data FROM policy_findings ORDER BY camera, id"):
            result.setdefault(row["camera"], []).append(json.loads(row["data"]))
        return result

    # ------------------------------------------------------------------ audit log

    def log_change(
        self,
        camera: str,
        key: str,
        before: str | None,
        after: str,
        *,
        verified: bool,
        actor: str,
        now: float,
        detail: str | None = None,
    ) -> int:
        return self.store.execute(
            "INSERT INTO policy_audit_log(at, camera, key, before, after, verified, actor, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now, camera, key, before, after, int(verified), actor, detail),
        )

    def audit_log(self, camera: str | None = None, limit: int = 10000) -> list[LogEntry]:
        sql = "SELECT * FROM policy_audit_log"
        params: tuple[Any, ...] = ()
        if camera is not None:
            sql += " WHERE camera = ?"
            params = (camera,)
        rows = self.store.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_entry(row) for row in reversed(rows)]

    def enforced_values(self, camera: str) -> dict[str, str]:
        """The last value the gateway set and verified for each key of ``camera``."""
        rows = self.store.query(
            "SELECT key, after FROM policy_audit_log WHERE id IN ("
            " SELECT MAX(id) FROM policy_audit_log WHERE camera = ? AND verified = 1"
            " GROUP BY key)",
            (camera,),
        )
        return {row["key"]: row["after"] for row in rows}


def _hidden(value: str | None) -> str | None:
    return REDACTED if value else value


def _redacted_entry(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("key") and is_secret_key(str(entry["key"])):
        entry["before"], entry["after"] = _hidden(entry["before"]), _hidden(entry["after"])
    return entry


def _snapshot(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "camera": row["camera"],
        "taken_at": row["taken_at"],
        "vendor": row["vendor"],
        "identity": json.loads(row["identity"]) if row["identity"] else None,
        "services": json.loads(row["services"]),
        # Redacted on the way out too: rows stored before a key was known to be secret.
        "settings": redact(json.loads(row["settings"])),
        "error": row["error"],
    }


def _entry(row: sqlite3.Row) -> LogEntry:
    return LogEntry(
        id=row["id"],
        at=row["at"],
        camera=row["camera"],
        key=row["key"],
        before=row["before"],
        after=row["after"],
        verified=bool(row["verified"]),
        actor=row["actor"],
        detail=row["detail"],
    )
