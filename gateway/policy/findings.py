"""Findings: what an audit reports per camera, and the allow-list that accepts risks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from gateway.policy.versions import model_matches

SEVERITIES = ("critical", "high", "medium", "low", "info")


def severity_rank(severity: str) -> int:
    """0 for critical ... 4 for info (sort key: most severe first)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def severity_from_cvss(cvss: float | None) -> str:
    if cvss is None:
        return "medium"
    if cvss >= 9.0:
        return "critical"
    if cvss >= 7.0:
        return "high"
    if cvss >= 4.0:
        return "medium"
    return "low"


@dataclass(frozen=True)
class Finding:
    """One problem on one camera. ``id`` is a CVE id, a site rule id or a setting key."""

    id: str
    kind: str  # "vulnerability" | "firmware" | "telemetry"
    severity: str
    title: str
    action: str
    feature: str | None = None  # telemetry feature ("cloud", "upnp", ...)
    current: str | None = None
    desired: str | None = None
    cvss: float | None = None
    kev: bool = False
    sources: tuple[str, ...] = ()
    drift: bool = False  # a setting the gateway had enforced came back
    status: str = "open"  # "open" | "accepted"
    accepted_reason: str | None = None
    accepted_until: str | None = None  # ISO date
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "action": self.action,
            "status": self.status,
        }
        if self.feature is not None:
            data["feature"] = self.feature
        if self.current is not None:
            data["current"] = self.current
        if self.desired is not None:
            data["desired"] = self.desired
        if self.kind == "vulnerability":
            data["cvss"] = self.cvss
            data["kev"] = self.kev
        if self.sources:
            data["sources"] = list(self.sources)
        if self.drift:
            data["drift"] = True
        if self.status == "accepted":
            data["accepted"] = {"reason": self.accepted_reason, "until": self.accepted_until}
        if self.notes:
            data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class AllowEntry:
    """Accepted risk: finding ``id`` on the cameras/models named, until ``expires``."""

    id: str
    reason: str
    expires: date
    cameras: tuple[str, ...] = ()  # empty: every camera
    models: tuple[str, ...] = ()  # model patterns; empty: every model

    def covers(self, finding_id: str, camera: str, model: str) -> bool:
        if finding_id != self.id:
            return False
        if self.cameras and camera not in self.cameras:
            return False
        return not self.models or any(model_matches(p, model) for p in self.models)


def apply_allow_list(
    findings: list[Finding], allow: tuple[AllowEntry, ...], camera: str, model: str, today: date
) -> list[Finding]:
    """Mark covered findings accepted; an expired entry leaves the finding open, with a note."""
    result: list[Finding] = []
    for finding in findings:
        entries = [e for e in allow if e.covers(finding.id, camera, model)]
        valid = [e for e in entries if e.expires >= today]
        if valid:
            entry = max(valid, key=lambda e: e.expires)
            finding = replace(
                finding,
                status="accepted",
                accepted_reason=entry.reason,
                accepted_until=entry.expires.isoformat(),
            )
        elif entries:
            latest = max(entries, key=lambda e: e.expires)
            note = f"risk acceptance expired on {latest.expires.isoformat()}: {latest.reason}"
            finding = replace(finding, notes=(*finding.notes, note))
        result.append(finding)
    return sorted(result, key=lambda f: (f.status != "open", severity_rank(f.severity), f.id))
