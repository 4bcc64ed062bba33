"""The ONVIF side of the running gateway: ``start(gateway)`` is listed in
``gateway.runtime.SERVICE_STARTERS``.

Every enabled camera becomes a virtual ONVIF device (plus the NVR device in NVR mode) whose
backend is the runtime itself: stream facts as ingested (``GatewayView.stream_status``), JPEGs from
the cached keyframe, SystemReboot as an upstream reconnect, identity from the fleet inventory
(else from ``[[camera]]``), motion from the camera's own event interface
(:mod:`gateway.devices.events`) and PTZ forwarded to the camera's ONVIF PTZ service once a
background probe found one. Nothing here waits for a camera: an unreachable camera gets its
device at once and its motion/PTZ when it answers. A reload adds and removes devices for
added and removed cameras and leaves the others running.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import sqlite3
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from aiohttp import web

from gateway import fleet
from gateway.backoff import Backoff
from gateway.config import CameraConfig, Config, ConfigError
from gateway.devices.base import DeviceIdentity as InventoryIdentity
from gateway.devices.events import CameraMotion, motion_source_for
from gateway.devices.onvif_forward import (
    CameraEndpoint,
    CameraServiceForwarder,
    OnvifImagingForwarder,
    OnvifPtzForwarder,
)
from gateway.limits import HttpLimits
from gateway.onvif.backend import (
    VENDOR_NAMES,
    AudioInfo,
    DeviceIdentity,
    StreamInfo,
    identity_from_config,
)
from gateway.onvif.config import camera_ports, nvr_port_of, parse_settings
from gateway.onvif.core import CameraSlot, VirtualDevice
from gateway.onvif.discovery import DiscoveryResponders
from gateway.onvif.security import ReplayCache, SharedReplayCache
from gateway.onvif.server import serve_device, share_replay_cache
from gateway.onvif.xml import SoapFault
from gateway.view import GatewayView, StreamStatus

log = logging.getLogger(__name__)

IDENTITY_CACHE_SECONDS = 30.0
AUDIO_CODECS = {"PCMU": "G711", "PCMA": "G711", "AAC": "AAC"}


# --------------------------------------------------------------------------- identity


UUID_MIGRATIONS = (
    "CREATE TABLE onvif_device_uuid ("
    " camera TEXT PRIMARY KEY, uuid TEXT NOT NULL, first_served REAL NOT NULL)",
    "CREATE TABLE onvif_uuid_secret (secret BLOB NOT NULL)",
)


class InventoryIdentities:
    """The real cameras' identities as the policy inventory last read them (cached briefly)."""

    def __init__(self, state_dir: str, clock: Callable[[], float] = time.monotonic) -> None:
        from gateway.policy.db import PolicyStore
        from gateway.store import Store

        self.clock = clock
        self._cache: dict[str, tuple[float, DeviceIdentity | None]] = {}
        self._store: Store | None = None
        self._policy: PolicyStore | None = None
        try:
            self._store = Store.in_state_dir(state_dir)
            self._store.migrate("onvif", UUID_MIGRATIONS)
            self._policy = PolicyStore(self._store)
        except (OSError, sqlite3.Error) as exc:
            log.warning(
                "ONVIF: no inventory in %s (%s); identities from the config", state_dir, exc
            )
            self.close()

    def identity(self, camera: CameraConfig) -> DeviceIdentity | None:
        now = self.clock()
        cached = self._cache.get(camera.name)
        if cached is not None and now - cached[0] < IDENTITY_CACHE_SECONDS:
            return cached[1]
        found = self._read(camera.name)
        self._cache[camera.name] = (now, found)
        return found

    def _read(self, name: str) -> DeviceIdentity | None:
        if self._policy is None:
            return None
        try:
            snapshot = self._policy.snapshot(name)
        except sqlite3.Error as exc:
            log.warning("ONVIF: cannot read the inventory of %s: %s", name, exc)
            return None
        stored = (snapshot or {}).get("identity")
        if not isinstance(stored, dict) or not stored.get("model"):
            return None
        inventoried = InventoryIdentity(
            **{f.name: str(stored.get(f.name) or "") for f in fields(InventoryIdentity)}
        )
        return DeviceIdentity(
            manufacturer=VENDOR_NAMES.get(inventoried.vendor, inventoried.vendor),
            model=inventoried.model,
            firmware=inventoried.firmware_text() or "unknown",
            serial=inventoried.serial,
            hardware_id=inventoried.model,
            mac=inventoried.mac,
        )

    def device_uuid(self, name: str, computed: str, shared: str | None = None) -> str:
        """The urn:uuid this camera's virtual device was first served with, or a new one
        (remembered from now on). A VMS keys devices on it, so it must not change when the
        inventory later learns the camera's serial, nor across restarts, nor on upgrade.

        A new one is ``shared`` when given: the fleet's uuid of the device, the same on
        every gateway sharing ``[fleet] identity_secret`` (gateway.fleet.device_uuid), so a
        camera keeps it when another gateway takes it over. Otherwise it is ``computed``
        (from the camera's serial, MAC or address and name) hashed again under this
        gateway's own random secret: WS-Discovery announces the uuid to anyone, and it must
        not give away the camera's address or serial."""
        if self._store is None:
            return shared or computed
        try:
            rows = self._store.query("SELECT uuid FROM onvif_device_uuid WHERE camera = ?", (name,))
            if rows:
                return str(rows[0]["uuid"])
            computed = shared or f"urn:uuid:{uuid.uuid5(self._namespace(), computed)}"
            self._store.execute(
                "INSERT INTO onvif_device_uuid(camera, uuid, first_served) VALUES (?, ?, ?)",
                (name, computed, time.time()),
            )
        except sqlite3.Error as exc:
            log.warning("ONVIF: cannot keep the device uuid of %s: %s", name, exc)
        return computed

    def _namespace(self) -> uuid.UUID:
        """The gateway's uuid namespace, from a random secret made on first use."""
        assert self._store is not None
        with self._store.transaction() as db:
            row = db.execute("SELECT secret FROM onvif_uuid_secret").fetchone()
            if row is None:
                secret = secrets.token_bytes(32)
                db.execute("INSERT INTO onvif_uuid_secret (secret) VALUES (?)", (secret,))
            else:
                secret = bytes(row[0])
        return uuid.UUID(bytes=hashlib.sha256(b"onvif-device-uuid:" + secret).digest()[:16])

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None
        self._policy = None


# --------------------------------------------------------------------------- streams


def _video_profile(codec: str, profile: str | None) -> str:
    """FFmpeg's profile name as ONVIF names it (H264Profile / Media2 profile)."""
    name = (profile or "").lower()
    if codec == "H265":
        return "Main10" if "10" in name else "Main"
    for onvif_name in ("High", "Main", "Extended", "Baseline"):
        if onvif_name.lower() in name:
            return onvif_name
    return "Main"


def stream_facts(info: StreamStatus, previous: StreamInfo | None) -> StreamInfo | None:
    """A :class:`StreamInfo` from a :class:`StreamStatus`; None before the codec is known.

    Rate, bitrate and GOP need a few seconds of ingest; until then the previous values of the
    same stream (if any) stand in rather than zeros.
    """
    codec = info.codec
    if codec not in ("H264", "H265") or not info.width:
        return None
    audio = None
    audio_codec = AUDIO_CODECS.get(str(info.audio_codec))
    if audio_codec is not None:
        rate = info.audio_rate or 8000
        channels = info.audio_channels or 1
        # G.711 is 8 bits per sample; AAC's rate is not measured apart from the video's.
        kbps = rate * 8 * channels // 1000 if audio_codec == "G711" else 64
        audio = AudioInfo(audio_codec, rate, kbps, channels)
    fps = info.fps or (previous.fps if previous else 0.0)
    bitrate = info.bitrate // 1000 or (previous.bitrate_kbps if previous else 0)
    gop = info.gop_frames or (previous.gop if previous else 0)
    return StreamInfo(
        name=info.stream,
        path=info.path,
        codec=codec,
        width=info.width,
        height=info.height,
        fps=fps,
        bitrate_kbps=bitrate,
        gop=gop,
        profile=_video_profile(codec, info.profile),
        audio=audio,
    )


# --------------------------------------------------------------------------- PTZ


def camera_endpoint(camera: CameraConfig) -> CameraEndpoint:
    """Where and as whom a forwarder reaches the camera's own ONVIF services."""
    return CameraEndpoint(
        name=camera.name,
        host=camera.host,
        port=camera.http_port,
        username=camera.username,
        password=camera.password.reveal(),
    )


F = TypeVar("F", bound=CameraServiceForwarder)


class ServiceDetection(Generic[F]):
    """Finds out in the background whether the camera has an ONVIF service the gateway
    forwards (PTZ, Imaging); ``backend`` is the forwarder once it has, None before and for
    cameras without."""

    what = "service"

    def __init__(self, camera: CameraConfig, backoff: Backoff, forwarder: F) -> None:
        self.camera = camera
        self.backoff = backoff
        self.forwarder = forwarder
        self.found: bool | None = None  # None: not known yet
        self.settled = asyncio.Event()  # set once ``found`` is known
        self._task: asyncio.Task[None] | None = None

    @property
    def backend(self) -> F | None:
        return self.forwarder if self.found else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.what} probe {self.camera.name}")

    async def _run(self) -> None:
        while True:
            try:
                # SoapFault with ter:ActionNotSupported: the camera has no such service.
                await self.forwarder.connect()
            except SoapFault as fault:
                if "ter:ActionNotSupported" in fault.subcodes:
                    log.info("%s: the camera has no ONVIF %s", self.camera.name, self.what)
                    self.found = False
                    self.settled.set()
                    return
                delay = self.backoff.next_delay()
                log.info(
                    "%s: %s probe failed (%s); again in %.0f s",
                    self.camera.name,
                    self.what,
                    fault,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                log.info(
                    "%s: %s forwarded to the camera's ONVIF service", self.camera.name, self.what
                )
                self.found = True
                self.settled.set()
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.forwarder.close()


class PtzDetection(ServiceDetection[OnvifPtzForwarder]):
    what = "PTZ"

    def __init__(self, camera: CameraConfig, backoff: Backoff) -> None:
        forwarder = OnvifPtzForwarder(camera_endpoint(camera), policy=camera.ptz)
        super().__init__(camera, backoff, forwarder)


class ImagingDetection(ServiceDetection[OnvifImagingForwarder]):
    what = "Imaging"

    def __init__(self, camera: CameraConfig, backoff: Backoff) -> None:
        forwarder = OnvifImagingForwarder(camera_endpoint(camera), channel=camera.channel)
        super().__init__(camera, backoff, forwarder)


# --------------------------------------------------------------------------- backend


class RuntimeCamera:
    """:class:`~gateway.onvif.backend.CameraBackend` of one camera of the running gateway."""

    def __init__(
        self,
        gateway: GatewayView,
        camera: CameraConfig,
        identities: InventoryIdentities,
        motion: CameraMotion,
        ptz: PtzDetection | None,
        imaging: ImagingDetection | None = None,
    ) -> None:
        self.gateway = gateway
        self.camera = camera
        self.identities = identities
        self._motion = motion
        self._ptz = ptz
        self._imaging = imaging
        self._known: dict[str, StreamInfo] = {}
        self._learning: asyncio.Task[None] | None = None
        if camera.on_demand:
            self._learning = asyncio.ensure_future(self._learn_formats())

    async def _learn_formats(self) -> None:
        """An on-demand camera is not streamed until a client plays it, yet a VMS adding it
        needs its profiles: connect once to learn each stream's format (the hub stops the
        upstream again after its linger time), retrying while the camera is unreachable."""
        backoff = Backoff(5.0, 300.0, jitter=(0.5, 1.5))
        for stream in self.camera.stream_names():
            while True:
                hub = self.gateway.hub(self.camera.name, stream)
                if hub is None:
                    return  # camera removed or disabled
                if await hub.wait_ready(15.0):
                    break
                await asyncio.sleep(backoff.next_delay())

    def identity(self) -> DeviceIdentity:
        return self.identities.identity(self.camera) or identity_from_config(self.camera)

    def streams(self) -> Sequence[StreamInfo]:
        """Each stream as ingested; after an upstream loss, as it was last seen. A stream
        whose format was never seen (camera down since start-up) has no profile yet."""
        found = []
        for stream in self.camera.stream_names():
            info = self.gateway.stream_status(self.camera.name, stream)
            facts = stream_facts(info, self._known.get(stream)) if info else None
            if facts is not None:
                self._known[stream] = facts
            if stream in self._known:
                found.append(self._known[stream])
        return found

    async def snapshot(self, stream: str) -> bytes:
        jpeg: bytes = await self.gateway.snapshot(self.camera.name, stream)
        return jpeg

    async def reconnect(self) -> None:
        if not self.gateway.reconnect(self.camera.name):
            raise LookupError(f"camera {self.camera.name} is not running")

    def has_keyframe(self, stream: str) -> bool:
        hub = self.gateway.hub(self.camera.name, stream)
        return hub is not None and bool(hub.has_keyframe)

    @property
    def ptz(self) -> OnvifPtzForwarder | None:
        return self._ptz.backend if self._ptz is not None else None

    @property
    def imaging(self) -> OnvifImagingForwarder | None:
        return self._imaging.backend if self._imaging is not None else None

    @property
    def motion(self) -> CameraMotion:
        return self._motion

    async def close(self) -> None:
        if self._learning is not None:
            self._learning.cancel()
            await asyncio.gather(self._learning, return_exceptions=True)
        await self._motion.close()
        if self._ptz is not None:
            await self._ptz.close()
        if self._imaging is not None:
            await self._imaging.close()


# --------------------------------------------------------------------------- service


@dataclass
class DeviceEntry:
    device: VirtualDevice
    runner: web.AppRunner
    camera: CameraConfig | None = None  # None for the NVR device
    backend: RuntimeCamera | None = None


def shared_replay_cache(window: float, state_dir: str) -> ReplayCache:
    """The replay cache every device (and worker process) shares; in memory, for this
    process's devices alone, when the state directory cannot hold it."""
    try:
        return SharedReplayCache(window, state_dir)
    except (OSError, sqlite3.Error) as exc:
        log.warning("ONVIF: replay cache in memory only (%s: %s)", state_dir, exc)
        return ReplayCache(window)


class OnvifService:
    """The virtual devices of a running gateway, following its configuration."""

    def __init__(self, gateway: GatewayView, *, retry: Backoff | None = None) -> None:
        self.gateway = gateway
        self.config: Config = gateway.config
        self.settings = parse_settings(self.config)
        self.identities = InventoryIdentities(self.config.state_dir)
        # One cap on connections for every device's port together (docs/security.md).
        self.http_limits = HttpLimits.for_listener("onvif", self.config.server, gateway.refusals)
        # Every device's nonces in one cache, in the state directory so the worker processes
        # share it: a token captured at one camera's device is refused at all the others.
        self.replay = shared_replay_cache(self.settings.auth_window, self.config.state_dir)
        self.cameras: dict[str, DeviceEntry] = {}
        self.nvr: DeviceEntry | None = None
        self.discovery: DiscoveryResponders | None = None
        self._retry = retry or Backoff(1.0, 300.0)

    @property
    def devices(self) -> list[VirtualDevice]:
        found = [entry.device for entry in self.cameras.values()]
        return found + ([self.nvr.device] if self.nvr is not None else [])

    def device(self, name: str) -> VirtualDevice:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def _shared_uuid(self, name: str, *, nvr: bool) -> str | None:
        """The device's uuid across the fleet (``[fleet] identity_secret``), else None."""
        try:
            settings = fleet.parse_fleet(self.config)
        except ConfigError as exc:  # validated before start; a file gone since is logged
            log.error("ONVIF: [fleet] unusable, device uuid from this gateway: %s", exc)
            return None
        if settings is None or settings.identity_secret is None:
            return None
        key = fleet.nvr_device_key(settings) if nvr else name
        return fleet.device_uuid(settings.identity_secret, key)

    def _rtsp_port(self) -> int:
        rtsp = self.gateway.rtsp
        return int(rtsp.port) if rtsp is not None else self.config.server.rtsp_port

    def _rtsps_port(self) -> int | None:
        rtsp = self.gateway.rtsp
        return rtsp.tls_port if rtsp is not None else self.config.server.rtsps_port

    def _virtual(
        self, name: str, slots: list[CameraSlot], *, nvr: bool, port: int, bind: str = ""
    ) -> VirtualDevice:
        device = VirtualDevice(
            name=name,
            slots=slots,
            nvr=nvr,
            port=port,
            rtsp_port=self._rtsp_port(),
            username=self.config.vms.username,
            password=self.config.vms.password.reveal(),
            settings=self.settings,
            advertise_host=self.config.server.advertise_host or "",
            bind=bind,
            https_port=self.config.server.onvif_https_port(port),
            http=self.config.server.onvif_http,
            rtsps_port=self._rtsps_port(),
            prefer_rtsps=self.config.server.prefer_rtsps,
        )
        device.uuid = self.identities.device_uuid(
            "nvr" if nvr else name, device.uuid, self._shared_uuid(name, nvr=nvr)
        )
        share_replay_cache(device, self.replay)
        return device

    async def start(self) -> None:
        try:
            ports = camera_ports(self.config)
            for cam in self.config.cameras:
                if cam.enabled:
                    await self._add_camera(cam, ports[cam.name])
            await self._rebuild_nvr()
            if self.settings.discovery:
                self.discovery = await DiscoveryResponders.start(
                    self.config.server.bind,
                    self.devices,
                    self.config.server.discovery_port,
                    self.config.server.discovery_allow,
                    self.gateway.refusals,
                )
        except BaseException:
            await self.close()
            raise

    async def _add_camera(self, cam: CameraConfig, port: int) -> None:
        """Serve ``cam``'s virtual device; raises OSError if its port cannot be bound."""
        motion = motion_source_for(cam)
        ptz = PtzDetection(cam, self._retry.fresh()) if cam.ptz != "disabled" else None
        imaging = ImagingDetection(cam, self._retry.fresh()) if cam.imaging != "disabled" else None
        backend = RuntimeCamera(self.gateway, cam, self.identities, motion, ptz, imaging)
        device = self._virtual(
            cam.name, [CameraSlot(cam, backend)], nvr=False, port=port, bind=cam.bind or ""
        )
        try:
            runner = await serve_device(
                device, self.config.server.bind, self._tls(), self.http_limits
            )
        except BaseException:
            await backend.close()
            raise
        motion.start()
        if ptz is not None:
            ptz.start()
        if imaging is not None:
            imaging.start()
        self.cameras[cam.name] = DeviceEntry(device, runner, cam, backend)
        if self.discovery is not None:
            await self.discovery.add(device)

    def _tls(self) -> ssl.SSLContext | None:
        """The VMS-side certificate's context (the runtime reloads renewed files into it)."""
        vms_tls = self.gateway.vms_tls
        return vms_tls.context if vms_tls is not None else None

    async def _remove(self, entry: DeviceEntry) -> None:
        if self.discovery is not None:
            self.discovery.remove(entry.device)
        await entry.runner.cleanup()
        if entry.backend is not None:
            await entry.backend.close()

    async def _rebuild_nvr(self) -> None:
        """(Re)build the NVR-mode device over the current cameras."""
        if self.nvr is not None:
            await self._remove(self.nvr)
            self.nvr = None
        slots = [slot for entry in self.cameras.values() for slot in entry.device.slots]
        if not self.config.server.nvr_mode or not slots:
            return
        port = nvr_port_of(self.config, self.settings.nvr_port)
        device = self._virtual("nvr", slots, nvr=True, port=port)
        runner = await serve_device(device, self.config.server.bind, self._tls(), self.http_limits)
        self.nvr = DeviceEntry(device, runner)
        if self.discovery is not None:
            await self.discovery.add(device)

    async def reload(self, config: Config) -> None:
        """Add devices for added cameras, remove those of removed ones, restart those whose
        camera or port changed; everything restarts when VMS credentials or ``[onvif]``
        settings changed (every device's answers depend on them)."""
        try:
            settings = parse_settings(config)
        except ConfigError as exc:
            log.error("ONVIF: [onvif] section invalid, devices unchanged: %s", exc)
            return
        old = self.config
        everything = (
            settings != self.settings
            or config.vms != old.vms
            or config.server.bind != old.server.bind
            or config.server.nvr_mode != old.server.nvr_mode
            or config.server.advertise_host != old.server.advertise_host
            or config.server.onvif_https_offset != old.server.onvif_https_offset
            or config.server.onvif_http != old.server.onvif_http
            or config.server.prefer_rtsps != old.server.prefer_rtsps
        )
        self.config, self.settings = config, settings
        self.replay.window = settings.auth_window
        ports = camera_ports(config)
        wanted = {cam.name: cam for cam in config.cameras if cam.enabled}
        changed = False
        for name, entry in list(self.cameras.items()):
            cam = wanted.get(name)
            if everything or cam is None or cam != entry.camera or ports[name] != entry.device.port:
                del self.cameras[name]
                await self._remove(entry)
                changed = True
        if everything and self.discovery is not None:
            await self.discovery.close()
            self.discovery = None
        for name, cam in wanted.items():
            if name in self.cameras:
                continue
            try:
                await self._add_camera(cam, ports[name])
            except OSError as exc:
                log.error("ONVIF: device for %s not started: %s", name, exc)
            changed = True
        if changed or everything:
            try:
                await self._rebuild_nvr()
            except OSError as exc:
                log.error("ONVIF: NVR device not started: %s", exc)
        if everything and settings.discovery and self.devices:
            self.discovery = await DiscoveryResponders.start(
                config.server.bind,
                self.devices,
                config.server.discovery_port,
                config.server.discovery_allow,
                self.gateway.refusals,
            )

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
            self.discovery = None
        entries = list(self.cameras.values()) + ([self.nvr] if self.nvr is not None else [])
        self.cameras.clear()
        self.nvr = None
        for entry in reversed(entries):
            await self._remove(entry)
        self.identities.close()
        if isinstance(self.replay, SharedReplayCache):
            self.replay.close()


async def start(gateway: GatewayView) -> OnvifService:
    """Serve every enabled camera of ``gateway`` as a virtual ONVIF device and follow its
    reloads; raises ``OSError`` if a device's port cannot be bound."""
    service = OnvifService(gateway)
    await service.start()
    gateway.reload_hooks.append(service.reload)
    return service


__all__ = ["InventoryIdentities", "OnvifService", "RuntimeCamera", "start", "stream_facts"]
