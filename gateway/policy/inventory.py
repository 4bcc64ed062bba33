"""Inventory of one camera: identity, firmware, services switched on, all settings.

Collected through the vendor client; a failure becomes a per-camera error (never raised to
the caller), so one broken camera never stops the inventory of the others.

A recorder (NVR) upstream for several cameras is configured as one ``[[camera]]`` per
channel, all with the recorder's host and port. It is one device: it is read (and the
telemetry policy applied to it) once, under the first of those cameras, and the snapshot is
stored under each of them. Its inventory lists the cameras it records, as it reports them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.config import CameraConfig, Config
from gateway.devices.base import CameraClient, DeviceIdentity
from gateway.devices.errors import DeviceError
from gateway.devices.factory import client_for
from gateway.devices.nvr import RemoteChannel
from gateway.devices.optional import missing_tables
from gateway.policy.db import HistoryEvent, PolicyStore
from gateway.policy.telemetry import enabled_services
from gateway.store import Store

log = logging.getLogger(__name__)
ClientFactory = Callable[[CameraConfig, float], CameraClient]
MAX_PARALLEL = 8


def default_client_factory(camera: CameraConfig, timeout: float) -> CameraClient:
    return client_for(camera, timeout=timeout)


@dataclass(frozen=True)
class CameraError:
    kind: str  # DeviceError.kind, or "internal"
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass
class InventoryRecord:
    camera: str
    vendor: str
    host: str
    taken_at: float
    identity: DeviceIdentity | None = None
    settings: dict[str, str] = field(default_factory=dict)
    services: list[str] = field(default_factory=list)
    error: CameraError | None = None
    history: list[HistoryEvent] = field(default_factory=list)
    # Recorders: the cameras it records (as it reports them) and the configured cameras that
    # are its channels (this record stands for all of them).
    channels: list[RemoteChannel] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.camera,
            "vendor": self.vendor,
            "host": self.host,
            "taken_at": self.taken_at,
            "identity": self.identity.to_json() if self.identity else None,
            "services": self.services,
            "not_available": missing_tables(self.settings),
            "error": self.error.to_json() if self.error else None,
            "history": [e.to_json() for e in self.history],
        }
        if self.channels or len(self.members) > 1:
            data["recorder"] = recorder_json(self.channels, self.members)
        return data


def recorder_json(channels: list[RemoteChannel], members: list[str]) -> dict[str, Any]:
    return {"channels": [c.to_json() for c in channels], "cameras": members}


def error_of(camera: str, exc: BaseException) -> CameraError:
    if isinstance(exc, DeviceError):
        return CameraError(exc.kind, str(exc))
    # Unexpected: keep the traceback in the log, give the report a short line.
    log.error("camera check failed unexpectedly", exc_info=exc, extra={"camera": camera})
    return CameraError("internal", f"camera {camera}: internal error ({type(exc).__name__})")


async def read_camera(camera: CameraConfig, client: CameraClient) -> InventoryRecord:
    record = InventoryRecord(camera.name, camera.vendor, camera.host, time.time())
    try:
        record.identity = await client.device_info()
        record.settings = await client.read_settings()
        record.services = enabled_services(camera.vendor, record.settings)
    except Exception as exc:
        record.error = error_of(camera.name, exc)
        return record
    record.channels = await read_channels(camera, client)
    return record


async def read_channels(camera: CameraConfig, client: CameraClient) -> list[RemoteChannel]:
    """The cameras a recorder records; a recorder that will not say is still inventoried."""
    lister = getattr(client, "channels", None)
    if lister is None:
        return []
    try:
        channels: list[RemoteChannel] = await lister()
    except DeviceError as exc:
        log.warning(f"camera {camera.name}: recorder channels not read: {exc.message}")
        return []
    return channels


def save(pstore: PolicyStore, record: InventoryRecord) -> None:
    """Store the snapshot under the camera and every other channel of the same recorder."""
    for name in record.members or [record.camera]:
        history = pstore.save_inventory(
            name,
            record.vendor,
            record.identity.to_json() if record.identity else None,
            record.services,
            record.settings,
            record.error.message if record.error else None,
            record.taken_at,
            enforced=pstore.enforced_values(record.camera),
        )
        if name == record.camera:
            record.history = history


@dataclass
class InventoryResult:
    cameras: list[InventoryRecord]

    def exit_code(self) -> int:
        return 1 if any(r.error for r in self.cameras) else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "onvif-gateway/inventory",
            "schema_version": 1,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cameras": [r.to_json() for r in self.cameras],
        }


def device_groups(config: Config) -> list[list[CameraConfig]]:
    """Enabled cameras grouped by the device answering for them: the channels of one
    recorder (same vendor, host and management ports) form one group, in config order."""
    groups: dict[tuple[str, str, int, int | None], list[CameraConfig]] = {}
    for camera in config.cameras:
        if camera.enabled:
            key = (camera.vendor, camera.host.lower(), camera.http_port, camera.onvif_port)
            groups.setdefault(key, []).append(camera)
    return list(groups.values())


def managed_cameras(config: Config, only: Collection[str] | None = None) -> list[CameraConfig]:
    """One camera per device (a recorder's first channel stands for it): Hikvision and
    Dahua through their APIs, generic ones through ONVIF. With ``only``, the devices that
    answer for one of those camera names."""
    groups = device_groups(config)
    if only is not None:
        groups = [g for g in groups if {c.name for c in g} & set(only)]
    return [group[0] for group in groups]


def members_of(config: Config) -> dict[str, list[str]]:
    """For each managed camera, the names of the configured cameras its device answers for."""
    return {group[0].name: [c.name for c in group] for group in device_groups(config)}


async def run_inventory(
    config: Config,
    store: Store,
    *,
    timeout: float = 10.0,
    client_factory: ClientFactory = default_client_factory,
    cameras: Collection[str] | None = None,
) -> InventoryResult:
    """Read every managed camera (or those named; in parallel, bounded) and record
    snapshots and history."""
    pstore = PolicyStore(store)
    limit = asyncio.Semaphore(MAX_PARALLEL)

    members = members_of(config)

    async def one(camera: CameraConfig) -> InventoryRecord:
        async with limit:
            client = client_factory(camera, timeout)
            try:
                record = await read_camera(camera, client)
            finally:
                await client.close()
            record.members = members[camera.name]
            return record

    records = list(await asyncio.gather(*(one(c) for c in managed_cameras(config, cameras))))
    for record in records:
        save(pstore, record)
    return InventoryResult(records)
