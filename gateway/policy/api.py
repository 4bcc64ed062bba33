"""What the admin API shows of fleet management: plain functions over the state database.

Every function takes the gateway's :class:`~gateway.store.Store` and returns JSON-ready data
(settings are stored redacted, so nothing here carries a camera secret). The running gateway's
policy service keeps these tables current (``gateway.policy.service``).
"""

from __future__ import annotations

from typing import Any

from gateway.policy.db import PolicyStore
from gateway.policy.findings import severity_rank
from gateway.store import Store


def latest_inventory(store: Store) -> list[dict[str, Any]]:
    """The last inventory of each camera: ``camera``, ``taken_at`` (Unix s), ``vendor``,
    ``identity`` ({vendor, model, serial, mac, firmware, build} or null), ``services``,
    ``settings`` (flat, redacted) and ``error`` (the last read's failure, else null)."""
    return PolicyStore(store).snapshots()


def latest_findings(store: Store) -> dict[str, list[dict[str, Any]]]:
    """``{camera: [finding, ...]}`` from each camera's last audit, open and most severe first
    (findings as in the audit JSON schema, docs/audit-schema.md); every inventoried camera is
    there, with ``[]`` when it had none."""
    pstore = PolicyStore(store)
    by_camera: dict[str, list[dict[str, Any]]] = {s["camera"]: [] for s in pstore.snapshots()}
    by_camera.update(pstore.all_findings())
    return {
        camera: sorted(
            findings,
            key=lambda f: (f.get("status") != "open", severity_rank(f["severity"]), f["id"]),
        )
        for camera, findings in by_camera.items()
    }


def audit_log(store: Store, limit: int = 100, camera: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` changes the gateway made to cameras, oldest first: ``id``, ``at``,
    ``camera``, ``key``, ``before``, ``after``, ``verified``, ``actor``, ``detail``."""
    return [entry.to_json() for entry in PolicyStore(store).audit_log(camera, limit)]


def inventory_history(
    store: Store, limit: int = 100, camera: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` inventory events, oldest first: ``id``, ``at``, ``camera``,
    ``kind`` (firmware_changed, identity_changed, setting_changed, setting_drifted), ``key``,
    ``before``, ``after``."""
    return PolicyStore(store).history(camera, limit)
