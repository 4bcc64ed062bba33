"""Audit (report the difference from policy) and enforce (apply it, read back, record).

``run_audit``, ``run_enforce`` and ``policy_loop`` are what the CLI, ``run`` and the admin
API call. Every camera is checked on its own: a camera that fails gives a per-camera error
in the report and never stops the others. Firmware is reported, never pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gateway import __version__
from gateway.config import CameraConfig, Config
from gateway.devices.base import CameraClient, DeviceIdentity
from gateway.policy.config import PolicyConfig, parse_policy
from gateway.policy.db import HistoryEvent, PolicyStore
from gateway.policy.findings import SEVERITIES, Finding, apply_allow_list
from gateway.policy.firmware import evaluate_firmware, load_advisories
from gateway.policy.inventory import (
    MAX_PARALLEL,
    CameraError,
    ClientFactory,
    InventoryRecord,
    default_client_factory,
    error_of,
    managed_cameras,
    members_of,
    read_camera,
    recorder_json,
    save,
)
from gateway.policy.telemetry import (
    WRITABLE_VENDORS,
    NotAvailable,
    SettingDiff,
    differences,
    findings_for,
    not_available,
    unverifiable_findings,
)
from gateway.store import Store

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
ADVISORY_VENDORS = ("hikvision", "dahua")
Progress = Callable[[str, str], None]  # (camera, message)


@dataclass(frozen=True)
class Change:
    key: str
    before: str | None
    after: str
    verified: bool
    error: str | None = None
    # A dry run's change: what enforce would write; nothing was written.
    planned: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "before": self.before,
            "after": self.after,
            "verified": self.verified,
            "error": self.error,
        }
        if self.planned:
            out["planned"] = True
        return out


@dataclass
class CameraAudit:
    name: str
    vendor: str
    host: str
    record: InventoryRecord | None = None
    findings: list[Finding] = field(default_factory=list)
    error: CameraError | None = None
    changes: list[Change] = field(default_factory=list)
    reboot_required: bool = False
    # What the round's first read found changed on the camera (not the gateway's own writes).
    events: list[HistoryEvent] = field(default_factory=list)
    # Governed settings this camera's firmware does not have (never a failure).
    not_available: list[NotAvailable] = field(default_factory=list)
    # Configured cameras this device answers for (a recorder's channels), itself included.
    members: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if any(f.status == "open" for f in self.findings):
            return "non_compliant"
        return "compliant"

    def to_json(self, *, with_changes: bool = False) -> dict[str, Any]:
        identity = self.record.identity if self.record else None
        data: dict[str, Any] = {
            "name": self.name,
            "vendor": self.vendor,
            "host": self.host,
            "status": self.status,
            "identity": (
                {"model": identity.model, "serial": identity.serial, "mac": identity.mac}
                if identity
                else None
            ),
            "firmware": (
                {
                    "version": identity.firmware,
                    "build": identity.build,
                    "text": identity.firmware_text(),
                }
                if identity
                else None
            ),
            "services": list(self.record.services) if self.record and identity else [],
            "findings": [f.to_json() for f in self.findings],
            "not_available": [n.to_json() for n in self.not_available],
            "error": self.error.to_json() if self.error else None,
        }
        channels = self.record.channels if self.record else []
        if channels or len(self.members) > 1:
            data["recorder"] = recorder_json(channels, self.members)
        if with_changes:
            data["changes"] = [c.to_json() for c in self.changes]
            data["reboot_required"] = self.reboot_required
        return data


@dataclass
class AuditReport:
    cameras: list[CameraAudit]
    generated_at: float
    kind: str = "audit"  # "audit" | "enforce"
    dry_run: bool = False  # enforce that wrote nothing: its changes are planned

    def summary(self) -> dict[str, Any]:
        counts = {s: 0 for s in SEVERITIES}
        for camera in self.cameras:
            for finding in camera.findings:
                if finding.status == "open":
                    counts[finding.severity] = counts.get(finding.severity, 0) + 1
        return {
            "cameras": len(self.cameras),
            "compliant": sum(c.status == "compliant" for c in self.cameras),
            "non_compliant": sum(c.status == "non_compliant" for c in self.cameras),
            "errors": sum(c.status == "error" for c in self.cameras),
            "open_findings": counts,
            "accepted_findings": sum(
                f.status == "accepted" for c in self.cameras for f in c.findings
            ),
        }

    def exit_code(self) -> int:
        """0 when every camera is compliant (and, for enforce, every change verified)."""
        if any(c.status != "compliant" for c in self.cameras):
            return 1
        if any(not ch.verified for c in self.cameras for ch in c.changes):
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema": f"onvif-gateway/{self.kind}",
            "schema_version": SCHEMA_VERSION,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.generated_at)),
            "gateway_version": __version__,
            "summary": self.summary(),
            "cameras": [c.to_json(with_changes=self.kind == "enforce") for c in self.cameras],
        }
        if self.dry_run:
            out["dry_run"] = True
        return out


def evaluate(
    camera: CameraConfig,
    record: InventoryRecord,
    policy: PolicyConfig,
    today: date,
    drifted: frozenset[str] = frozenset(),
) -> tuple[list[Finding], list[SettingDiff]]:
    """Findings (firmware + telemetry, allow-list applied) and the setting differences."""
    identity = record.identity
    assert identity is not None
    findings = firmware_findings(identity, policy)
    writable = camera.vendor in WRITABLE_VENDORS
    diffs = differences(policy.telemetry, camera.name, camera.vendor, record.settings)
    findings += findings_for(diffs, drifted, enforceable=writable)
    if not writable:
        findings += unverifiable_findings(policy.telemetry, camera.name, camera.vendor)
    findings = apply_allow_list(findings, policy.allow, camera.name, identity.model, today)
    return findings, diffs


def firmware_findings(identity: DeviceIdentity, policy: PolicyConfig) -> list[Finding]:
    """Advisories and site rules for the firmware of the vendor the camera says it is from.

    A camera configured as generic but reporting a Hikvision or Dahua manufacturer over
    ONVIF is checked as one; for other manufacturers there is no advisory database.
    """
    if identity.vendor not in ADVISORY_VENDORS:
        return [
            Finding(
                id="firmware.not_checkable",
                kind="firmware",
                severity="info",
                title="No advisory database for this manufacturer; firmware not checked",
                action="Check the firmware version against the manufacturer's advisories.",
                current=identity.firmware_text(),
            )
        ]
    return evaluate_firmware(
        identity.vendor,
        identity.model,
        identity.firmware_text(),
        advisories=load_advisories(),
        minimum=policy.minimum,
        blocked=policy.blocked,
    )


def _drifted(pstore: PolicyStore, camera: str, diffs: list[SettingDiff]) -> frozenset[str]:
    """Keys the gateway had set (and verified) to the desired value that differ again."""
    enforced = pstore.enforced_values(camera)
    return frozenset(d.key for d in diffs if enforced.get(d.key) == d.desired)


async def _check(
    camera: CameraConfig,
    policy: PolicyConfig,
    pstore: PolicyStore,
    client: CameraClient,
    today: date,
    *,
    enforce: bool,
    actor: str,
    progress: Progress | None,
    members: list[str],
    dry_run: bool = False,
) -> CameraAudit:
    result = CameraAudit(camera.name, camera.vendor, camera.host, members=members)
    say = progress or (lambda _camera, _message: None)
    say(camera.name, "reading")
    record = await read_camera(camera, client)
    record.members = members
    save(pstore, record)
    result.record = record
    result.events = list(record.history)
    if record.error is not None:
        result.error = record.error
        say(camera.name, f"error: {record.error.message}")
        return result
    findings, diffs = evaluate(camera, record, policy, today)
    result.not_available = not_available(
        policy.telemetry, camera.name, camera.vendor, record.settings
    )
    drifted = _drifted(pstore, camera.name, diffs)
    if drifted:
        findings, diffs = evaluate(camera, record, policy, today, drifted)
    to_apply = [d for d in diffs if not _accepted(findings, d.key)]
    if enforce and dry_run and to_apply and camera.vendor in WRITABLE_VENDORS:
        say(camera.name, f"would apply {len(to_apply)} setting(s) (dry run)")
        result.changes = [
            Change(d.key, d.current, d.desired, False, planned=True) for d in to_apply
        ]
    elif enforce and to_apply and camera.vendor in WRITABLE_VENDORS:
        say(camera.name, f"applying {len(to_apply)} setting(s)")
        await _apply(camera, client, pstore, record, to_apply, result, actor)
        if result.error is None:
            findings, _ = evaluate(camera, result.record or record, policy, today)
    result.findings = findings
    for name in members:
        pstore.save_findings(name, [f.to_json() for f in findings], time.time())
    say(camera.name, result.status.replace("_", "-"))
    return result


def _accepted(findings: list[Finding], key: str) -> bool:
    return any(f.id == key and f.status == "accepted" for f in findings)


async def _apply(
    camera: CameraConfig,
    client: CameraClient,
    pstore: PolicyStore,
    record: InventoryRecord,
    diffs: list[SettingDiff],
    result: CameraAudit,
    actor: str,
) -> None:
    """Write, read back, and log every change with its verification."""
    changes = {d.key: d.desired for d in diffs}
    write_error: str | None = None
    try:
        written = await client.write_settings(changes)
        result.reboot_required = written.reboot_required
    except Exception as exc:
        write_error = error_of(camera.name, exc).message
    after = await read_camera(camera, client)
    after.members = record.members
    if after.error is None:
        save(pstore, after)
        result.record = after
    elif write_error is None:
        write_error = after.error.message
    now = time.time()
    for diff in diffs:
        current = after.settings.get(diff.key) if after.error is None else None
        verified = current is not None and current.strip().lower() == diff.desired.lower()
        error = None if verified else (write_error or f"read back {current!r}")
        pstore.log_change(
            camera.name,
            diff.key,
            diff.current,
            diff.desired,
            verified=verified,
            actor=actor,
            now=now,
            detail=error,
        )
        result.changes.append(Change(diff.key, diff.current, diff.desired, verified, error))
    if write_error is not None:
        result.error = CameraError("enforce", write_error)


async def _run(
    config: Config,
    store: Store,
    *,
    enforce: bool,
    actor: str,
    policy: PolicyConfig | None,
    today: date | None,
    progress: Progress | None,
    client_factory: ClientFactory,
    cameras: Collection[str] | None = None,
    dry_run: bool = False,
) -> AuditReport:
    policy = policy or parse_policy(config)
    today = today or date.today()
    pstore = PolicyStore(store)
    limit = asyncio.Semaphore(MAX_PARALLEL)
    members = members_of(config)

    async def one(camera: CameraConfig) -> CameraAudit:
        async with limit:
            try:
                client = client_factory(camera, policy.request_timeout)
            except Exception as exc:
                return CameraAudit(
                    camera.name, camera.vendor, camera.host, error=error_of(camera.name, exc)
                )
            try:
                return await _check(
                    camera,
                    policy,
                    pstore,
                    client,
                    today,
                    enforce=enforce,
                    actor=actor,
                    progress=progress,
                    members=members[camera.name],
                    dry_run=dry_run,
                )
            except Exception as exc:
                audit = CameraAudit(camera.name, camera.vendor, camera.host)
                audit.error = error_of(camera.name, exc)
                return audit
            finally:
                await client.close()

    started = time.time()
    results = await asyncio.gather(*(one(c) for c in managed_cameras(config, cameras)))
    return AuditReport(
        list(results), started, "enforce" if enforce else "audit", dry_run=enforce and dry_run
    )


async def run_audit(
    config: Config,
    store: Store,
    *,
    policy: PolicyConfig | None = None,
    today: date | None = None,
    progress: Progress | None = None,
    client_factory: ClientFactory = default_client_factory,
    cameras: Collection[str] | None = None,
) -> AuditReport:
    """Read every camera (or those named), record inventory and findings; change nothing on
    the cameras."""
    return await _run(
        config,
        store,
        enforce=False,
        actor="audit",
        policy=policy,
        today=today,
        progress=progress,
        client_factory=client_factory,
        cameras=cameras,
    )


async def run_enforce(
    config: Config,
    store: Store,
    *,
    policy: PolicyConfig | None = None,
    today: date | None = None,
    progress: Progress | None = None,
    actor: str = "enforce",
    client_factory: ClientFactory = default_client_factory,
    cameras: Collection[str] | None = None,
    dry_run: bool = False,
) -> AuditReport:
    """Apply the telemetry policy, verify by reading back, record before/after. With
    ``dry_run``, read and report the changes it would make (``planned``), writing nothing to
    the cameras and nothing to the audit log."""
    return await _run(
        config,
        store,
        enforce=True,
        actor=actor,
        policy=policy,
        today=today,
        progress=progress,
        client_factory=client_factory,
        cameras=cameras,
        dry_run=dry_run,
    )


async def policy_loop(
    config: Config,
    store: Store,
    stop_event: asyncio.Event,
    *,
    wake: asyncio.Event | None = None,
    lock: asyncio.Lock | None = None,
) -> None:
    """For ``run``: every ``drift_check_interval`` s, inventory + drift check (+ enforce).

    Runs until ``stop_event`` is set; setting ``wake`` starts the next round at once (an
    on-demand refresh); ``lock`` is held during each round, so runs started elsewhere (the
    admin API) that take it never interleave with one. A failed round is logged and the next
    one still runs. Logs one line per event: each setting that drifted or changed, firmware or
    identity changed, setting applied, and camera that could not be checked.
    """
    policy = parse_policy(config)
    if policy.drift_check_interval <= 0 and wake is None:
        await stop_event.wait()
        return
    while not stop_event.is_set():
        if wake is not None:
            wake.clear()
        try:
            async with lock or contextlib.nullcontext():
                if policy.auto_enforce:
                    report = await run_enforce(config, store, policy=policy, actor="drift")
                else:
                    report = await run_audit(config, store, policy=policy)
            for camera in report.cameras:
                log_round(camera, policy.auto_enforce)
        except Exception:
            log.exception("policy check round failed")
        await _next_round(stop_event, wake, policy.drift_check_interval)


async def _next_round(
    stop_event: asyncio.Event, wake: asyncio.Event | None, interval: float
) -> None:
    """Until the interval is over (never when 0), the loop is stopped or woken."""
    waiters = [asyncio.ensure_future(stop_event.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(
            waiters, timeout=interval if interval > 0 else None, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()


def log_round(camera: CameraAudit, auto_enforce: bool) -> None:
    """One log line per thing that happened to ``camera`` in a round (values are redacted).

    The camera and key are part of the message text, so the log's repeat limiter (which keys
    on the message) never hides one camera's event behind another's.
    """
    name = camera.name
    for event in camera.events:
        if event.kind == "setting_drifted":
            log.warning(
                f"camera {name}: {event.key} drifted from the enforced {event.before!r}"
                f" to {event.after!r}"
                + (" (re-applying)" if auto_enforce else " (auto_enforce is off)")
            )
        else:
            what = event.kind.replace("_", " ")
            log.info(f"camera {name}: {what}: {event.key} {event.before!r} -> {event.after!r}")
    for change in camera.changes:
        if change.verified:
            log.info(
                f"camera {name}: set {change.key} from {change.before!r} to {change.after!r}"
                " (verified)"
            )
        else:
            log.warning(
                f"camera {name}: setting {change.key} to {change.after!r} failed: {change.error}"
            )
    if camera.error is not None:
        log.warning(f"camera {name}: policy check failed: {camera.error.message}")
