"""Inventory of one camera: identity, firmware, services switched on, all settings.

Collected through the vendor client; a failure becomes a per-camera error (never raised to
the caller), so one broken camera never stops the inventory of the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import CameraConfig, Config
from gateway.devices.base import CameraClient, DeviceIdentity, client_for
from gateway.devices.errors import DeviceError
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.camera,
            "vendor": self.vendor,
            "host": self.host,
            "taken_at": self.taken_at,
            "identity": self.identity.to_json() if self.identity else None,
            "services": self.services,
            "error": self.error.to_json() if self.error else None,
            "history": [e.to_json() for e in self.history],
        }


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


def save(pstore: PolicyStore, record: InventoryRecord) -> None:
    record.history = pstore.save_inventory(
        record.camera,
        record.vendor,
        record.identity.to_json() if record.identity else None,
        record.services,
        record.settings,
        record.error.message if record.error else None,
        record.taken_at,
        enforced=pstore.enforced_values(record.camera),
    )


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


def managed_cameras(config: Config) -> list[CameraConfig]:
    """Enabled cameras: Hikvision and Dahua through their APIs, generic ones through ONVIF."""
    return [c for c in config.cameras if c.enabled]


async def run_inventory(
    config: Config,
    store: Store,
    *,
    timeout: float = 10.0,
    client_factory: ClientFactory = default_client_factory,
) -> InventoryResult:
    """Read every managed camera (in parallel, bounded) and record snapshots and history."""
    pstore = PolicyStore(store)
    limit = asyncio.Semaphore(MAX_PARALLEL)

    async def one(camera: CameraConfig) -> InventoryRecord:
        async with limit:
            client = client_factory(camera, timeout)
            try:
                return await read_camera(camera, client)
            finally:
                await client.close()

    records = list(await asyncio.gather(*(one(c) for c in managed_cameras(config))))
    for record in records:
        save(pstore, record)
    return InventoryResult(records)
