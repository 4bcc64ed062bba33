"""The running gateway: hubs and ingest per camera stream, the RTSP server, and the services
other subsystems add (ONVIF devices, admin API, policy loop, egress services).

``Gateway.reload(config)`` applies a new configuration without touching streams whose camera
configuration did not change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway import fleet, tls
from gateway import log as gwlog
from gateway.admin import service as admin_service
from gateway.config import CameraConfig, Config, iter_secrets
from gateway.digest import DigestAuthenticator
from gateway.egress import service as egress_service
from gateway.limits import Refusals, listener_caps, open_file_limit
from gateway.media.auto_ingest import AutoIngest, Fallback
from gateway.media.hub import HubState, StreamHub
from gateway.media.ingest import IngestOptions, PyAVIngest
from gateway.media.native_ingest import NativeIngest
from gateway.media.snapshot import SnapshotCache, encode_jpeg
from gateway.onvif import service as onvif_service
from gateway.policy import service as policy_service
from gateway.rtp import spans
from gateway.rtsp.server import RtspServer, ServerLimits
from gateway.view import GatewayView, ReloadChanges, ReloadHook, Service, StreamSample, StreamStatus
from gateway.workers import (
    HandoffServer,
    Shard,
    nonce_secret,
    owner_of,
    send_connection,
    shard_config,
)

log = logging.getLogger("gateway")

# Seconds between checks of the VMS-side certificate files (a renewal by the integrator's
# tooling is picked up without a restart; a generated one is renewed before it expires).
CERT_CHECK_INTERVAL = 60.0
# How long a snapshot of an idle on-demand stream waits for the camera's first keyframe.
SNAPSHOT_WAKE_TIMEOUT = 10.0


@dataclass
class CameraRuntime:
    config: CameraConfig
    index: int
    hubs: dict[str, StreamHub] = field(default_factory=dict)
    ingests: dict[str, PyAVIngest | NativeIngest | AutoIngest] = field(default_factory=dict)

    def close(self) -> None:
        for hub in self.hubs.values():
            hub.close()

    def retry_native(self) -> None:
        """A reload is when streams that fell back to PyAV (ingest = "auto") try native
        again; their hubs and clients stay."""
        for ingest in self.ingests.values():
            if isinstance(ingest, AutoIngest):
                ingest.retry_native()


# The services started with the gateway, in order: (start function, site-wide), imported by
# name above. Each takes the gateway as a GatewayView (the only way a service sees it) and
# returns a Service the runtime closes on stop. Site-wide services run once per site: in
# worker 0 when the cameras are sharded.
ServiceStarter = Callable[[GatewayView], Awaitable[Service]]
SERVICE_STARTERS: tuple[tuple[ServiceStarter, bool], ...] = (
    (onvif_service.start, False),
    (admin_service.start, False),
    (policy_service.start, True),
    (egress_service.start, True),
)


class Gateway:
    """One gateway process. With ``shard`` it is one worker of several (gateway.workers):
    ``config`` holds its own cameras, ``site_config`` the whole site."""

    def __init__(
        self, config: Config, *, start_services: bool = True, shard: Shard | None = None
    ) -> None:
        # A fleet member serves only its own cameras of the site (gateway.fleet).
        config = fleet.own(config)
        self.site_config = config
        self.shard = shard
        self.config = shard_config(config, shard) if shard else config
        self.cameras: dict[str, CameraRuntime] = {}
        self.rtsp: RtspServer | None = None
        # The VMS-side certificate (RTSPS, ONVIF over HTTPS), when [server] enables either.
        self.vms_tls: tls.ServerTLS | None = None
        self._cert_watch: asyncio.Task[None] | None = None
        self.services: list[Service] = []
        self.start_services = start_services
        # Shared by the workers of one supervisor, so a nonce from one is good at another.
        self._nonce_secret = nonce_secret()
        self._handoff: HandoffServer | None = None
        self._adoptions: set[asyncio.Future[None]] = set()
        self.stopped = asyncio.Event()
        # Hooks get this process's config; site hooks the whole site's (site-wide services).
        self.reload_hooks: list[ReloadHook] = []
        self.site_reload_hooks: list[ReloadHook] = []
        # JPEGs decoded on demand from the cached keyframe, shared by the dashboard and
        # ONVIF GetSnapshotUri; a burst of requests decodes once.
        self.snapshots = SnapshotCache(max_age=2.0)
        # What the listeners refused (hostile load, failed logins), for metrics and logs.
        self.refusals = Refusals()
        # ingest = "auto": streams moved to PyAV, by (camera, stream, reason), since start.
        self.ingest_fallbacks: dict[tuple[str, str, str], int] = {}

    @property
    def worker(self) -> tuple[int, int]:
        return (self.shard.index, self.shard.count) if self.shard else (0, 1)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        gwlog.register_secrets(iter_secrets(cfg))
        for index, cam in enumerate(cfg.cameras):
            if cam.enabled:
                self.cameras[cam.name] = self._start_camera(cam, index)
        self.rtsp = RtspServer(
            self.resolve,
            authenticator=self._authenticator(cfg),
            server_name="onvif-gateway",
            limits=self._limits(cfg),
            refusals=self.refusals,
            handoff=self._handoff_target if self.shard else None,
        )
        if self.shard is not None:
            self._handoff = HandoffServer(
                self.shard.socket_path(self.shard.index), self._adopt_connection
            )
            await self._handoff.start()
        await self.rtsp.start(
            cfg.server.bind, cfg.server.rtsp_port, reuse_port=self.shard is not None
        )
        await self._listen_on_camera_addresses(self.site_config)
        log.info(
            "RTSP server listening",
            extra={
                "address": ", ".join(self.rtsp.addresses),
                "port": self.rtsp.port,
                # The C build of the relay's per-packet loops, or their Python reference.
                "span_walks": spans.IMPLEMENTATION,
            },
        )
        if cfg.server.vms_tls:
            await self._start_vms_tls(cfg)
        if self.start_services:
            for start, site_wide in SERVICE_STARTERS:
                if site_wide and self.shard is not None and self.shard.index:
                    continue
                self.services.append(await start(self))

    async def _listen_on_camera_addresses(self, site: Config) -> None:
        """RTSP on every per-camera address too, so each camera's stream URI names its own
        address (every worker listens on all of them: a connection may be handed over)."""
        assert self.rtsp is not None
        for address in site.camera_addresses():
            await self.rtsp.listen(address)

    async def _start_vms_tls(self, cfg: Config) -> None:
        """Load (or generate) the VMS-side certificate and open the RTSPS listener."""
        try:
            cert, key = await asyncio.to_thread(_vms_tls_files, cfg)
            self.vms_tls = tls.ServerTLS(cert, key, tls.VMS.label)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise OSError(f"VMS side: no usable TLS certificate: {exc}") from exc
        self._cert_watch = asyncio.create_task(self._watch_certificate(), name="vms-cert-watch")
        log.info(
            "VMS-side certificate loaded",
            extra={"path": str(cert), "fingerprint": self.vms_tls.fingerprint},
        )
        if cfg.server.rtsps_port is None:
            return
        assert self.rtsp is not None
        await self.rtsp.start_tls(cfg.server.bind, cfg.server.rtsps_port, self.vms_tls.context)
        log.info(
            "RTSPS server listening",
            extra={"address": cfg.server.bind, "port": self.rtsp.tls_port},
        )

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            await self._refresh_certificate(self.config)

    async def _refresh_certificate(self, cfg: Config) -> None:
        """Renew a generated certificate when due, and load changed files."""
        if self.vms_tls is None:
            return
        try:
            cert, key = await asyncio.to_thread(_vms_tls_files, cfg)
        except (OSError, ValueError) as exc:
            log.error("VMS-side certificate unavailable", extra={"error": str(exc)})
            return
        self.vms_tls.refresh(cert, key)

    def _authenticator(self, cfg: Config) -> DigestAuthenticator:
        return DigestAuthenticator(
            "onvif-gateway",
            {cfg.vms.username: cfg.vms.password.reveal()},
            self._nonce_secret,
            allow_basic=cfg.vms.allow_basic,
        )

    @staticmethod
    def _limits(cfg: Config) -> ServerLimits:
        server = cfg.server
        caps = listener_caps("rtsp", open_file_limit(), server.connections_per_address)
        return ServerLimits(
            session_timeout=server.session_timeout,
            send_budget=server.client_send_budget,
            stall_timeout=server.client_stall_timeout,
            request_timeout=server.request_timeout,
            idle_timeout=server.idle_timeout,
            max_connections=caps.total,
            connections_per_address=caps.per_address,
            rtp_ports=server.rtp_ports,
        )

    def _start_camera(self, cam: CameraConfig, index: int) -> CameraRuntime:
        runtime = CameraRuntime(cam, index)
        kind = cam.ingest or self.config.server.ingest
        for stream in cam.stream_names():
            # The key names camera/stream: services find a client's stream by it.
            hub = StreamHub(f"{cam.name}/{stream}", on_demand=cam.on_demand)
            display_url = cam.upstream_url(stream, with_credentials=False)
            options = IngestOptions(transport=cam.transport)
            ingest: PyAVIngest | NativeIngest | AutoIngest
            if kind == "auto":
                ingest = AutoIngest(
                    hub,
                    cam.upstream_url(stream, with_credentials=True),
                    native_url=display_url,
                    username=cam.username,
                    password=cam.password.reveal(),
                    display_url=display_url,
                    options=options,
                    on_fallback=self._count_fallback,
                )
            elif kind == "native":
                ingest = NativeIngest(
                    hub,
                    display_url,
                    username=cam.username,
                    password=cam.password.reveal(),
                    display_url=display_url,
                    options=options,
                )
            else:
                ingest = PyAVIngest(
                    hub,
                    cam.upstream_url(stream, with_credentials=True),
                    display_url=display_url,
                    options=options,
                )
            runtime.hubs[stream] = hub
            runtime.ingests[stream] = ingest
            hub.attach_upstream(ingest)
        return runtime

    def _count_fallback(self, key: str, fallback: Fallback) -> None:
        camera, stream = key.split("/", 1)
        label = (camera, stream, fallback.reason)
        self.ingest_fallbacks[label] = self.ingest_fallbacks.get(label, 0) + 1

    async def stop(self) -> None:
        for service in reversed(self.services):
            try:
                await service.close()
            except Exception:
                log.exception("service failed to stop cleanly")
        self.services.clear()
        if self._cert_watch is not None:
            self._cert_watch.cancel()
            self._cert_watch = None
        for cam in self.cameras.values():
            cam.close()
        if self._handoff is not None:
            await self._handoff.close()
        if self.rtsp is not None:
            await self.rtsp.close()
        ingests = [i for cam in self.cameras.values() for i in cam.ingests.values()]
        await asyncio.gather(*(i.wait_stopped(6.0) for i in ingests))
        self.stopped.set()

    def validate(self, config: Config) -> None:
        """Raise ConfigError when a section other subsystems own is invalid (see
        gateway.sections): the admin API's reload refuses such a file as `check` does."""
        from gateway import sections

        sections.validate(config)

    async def reload(self, config: Config) -> ReloadChanges:
        """Apply ``config`` (the site's); streams of unchanged cameras keep running."""
        site = config = fleet.own(config)
        if self.shard is not None:
            config = shard_config(site, self.shard)
        old = self.config
        if (config.server.bind, config.server.rtsp_port) != (old.server.bind, old.server.rtsp_port):
            problem = (
                "server.bind and server.rtsp_port cannot change on reload; restart the gateway"
            )
            log.error("reload refused", extra={"error": problem})
            raise ValueError(problem)
        if (config.server.rtsps_port, config.server.vms_tls) != (
            old.server.rtsps_port,
            old.server.vms_tls,
        ):
            problem = "server.rtsps_port, or switching VMS-side TLS on or off, needs a restart"
            log.error("reload refused", extra={"error": problem})
            raise ValueError(problem)
        gwlog.register_secrets(iter_secrets(config))
        # A camera's new address is listened on from now; one no longer used stays open
        # until the next restart (harmless: it serves the same streams).
        try:
            await self._listen_on_camera_addresses(site)
        except OSError as exc:
            log.error("RTSP: cannot listen on a camera address", extra={"error": str(exc)})
        changes: ReloadChanges = {
            "added": [],
            "removed": [],
            "changed": [],
            "unchanged": [],
            "failed": [],
        }
        wanted = {cam.name: (i, cam) for i, cam in enumerate(config.cameras) if cam.enabled}
        for name in list(self.cameras):
            if name not in wanted:
                self.cameras.pop(name).close()
                changes["removed"].append(name)
        for name, (index, cam) in wanted.items():
            current = self.cameras.get(name)
            if current is not None and current.config == cam:
                current.index = index
                changes["unchanged"].append(name)
                current.retry_native()
                continue
            if current is not None and self._same_source(current.config, cam):
                # Credentials or settings other services use (PTZ, imaging, policy): the
                # streams and their viewers stay; new credentials reconnect the camera.
                self._update_camera(current, cam, index)
                changes["changed"].append(name)
                continue
            if current is not None:
                current.close()
                changes["changed"].append(name)
            else:
                changes["added"].append(name)
            self.cameras[name] = self._start_camera(cam, index)
        self.config = config
        # New tls_cert/tls_key paths (or renewed files) apply to new connections at once.
        await self._refresh_certificate(config)
        if self.rtsp is not None:
            self.rtsp.authenticator = self._authenticator(config)
            self.rtsp.limits = self._limits(config)
        self.site_config = site
        hooks = [(h, config) for h in self.reload_hooks] + [
            (h, site) for h in self.site_reload_hooks
        ]
        for hook, given in hooks:
            # One service failing to follow must not keep the others on the old
            # configuration, nor go unnoticed.
            try:
                await hook(given)
            except Exception as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                changes["failed"].append(name)
                log.exception(
                    "reload: a service failed to apply the configuration",
                    extra={"service": name, "error": str(exc)},
                )
        level = logging.ERROR if changes["failed"] else logging.INFO
        log.log(level, "configuration reloaded", extra={k: ",".join(v) for k, v in changes.items()})
        return changes

    def _same_source(self, old: CameraConfig, new: CameraConfig) -> bool:
        """Whether ``new`` streams exactly what ``old`` does (credentials aside)."""

        def source(cam: CameraConfig) -> tuple[object, ...]:
            urls = tuple(cam.upstream_url(s, with_credentials=False) for s in cam.stream_names())
            kind = cam.ingest or self.config.server.ingest
            return (urls, cam.on_demand, cam.transport, kind)

        return source(old) == source(new)

    def _update_camera(self, runtime: CameraRuntime, cam: CameraConfig, index: int) -> None:
        old = runtime.config
        runtime.config, runtime.index = cam, index
        if (old.username, old.password.reveal()) == (cam.username, cam.password.reveal()):
            runtime.retry_native()
            return
        for stream, ingest in runtime.ingests.items():
            # The native client takes the credentials apart; PyAV and auto (for its PyAV
            # side) in the URL.
            with_credentials = not isinstance(ingest, NativeIngest)
            url = cam.upstream_url(stream, with_credentials=with_credentials)
            ingest.reconnect_with(url, cam.username, cam.password.reveal())

    # ------------------------------------------------------------------ lookups

    def resolve(self, path: str) -> StreamHub | None:
        """``/camera/stream`` -> hub."""
        parts = path.strip("/").split("/")
        if len(parts) != 2:
            return None
        cam = self.cameras.get(parts[0])
        return cam.hubs.get(parts[1]) if cam else None

    def _handoff_target(self, path: str) -> Callable[[socket.socket, bytes], None] | None:
        """How to pass a connection to the worker owning ``path``'s camera, if not this one."""
        assert self.shard is not None
        camera = path.strip("/").split("/", 1)[0]
        if camera in self.cameras:
            return None
        owner = owner_of(self.site_config, self.shard, camera)
        if owner is None or owner == self.shard.index:
            return None
        return functools.partial(send_connection, self.shard.socket_path(owner))

    def _adopt_connection(self, sock: socket.socket, data: bytes) -> None:
        assert self.rtsp is not None
        task = asyncio.ensure_future(self.rtsp.adopt(sock, data))
        self._adoptions.add(task)
        task.add_done_callback(self._adoptions.discard)

    def hub(self, camera: str, stream: str) -> StreamHub | None:
        cam = self.cameras.get(camera)
        return cam.hubs.get(stream) if cam else None

    def reconnect(self, camera: str) -> bool:
        cam = self.cameras.get(camera)
        if cam is None:
            return False
        for hub in cam.hubs.values():
            hub.restart_upstream()
        return True

    async def snapshot(
        self, camera: str, stream: str = "main", max_width: int | None = None
    ) -> bytes:
        """A JPEG of the stream's latest keyframe; LookupError when there is none yet."""
        hub = self.hub(camera, stream)
        if hub is None:
            raise LookupError(f"no stream {camera}/{stream}")

        waking = hub.state is HubState.CONNECTING or (hub.on_demand and hub.state is HubState.IDLE)
        if waking and not hub.has_keyframe:
            # An on-demand stream nobody watches (or one starting) is woken for the picture
            # and goes idle again after its linger time; a stream that is down is not
            # waited for.
            await hub.wait_keyframe(SNAPSHOT_WAKE_TIMEOUT)

        async def produce() -> bytes:
            unit = hub.keyframe_access_unit()
            if unit is None:
                raise LookupError(f"{camera}/{stream} has no picture yet")
            params, access_unit = unit
            return await asyncio.to_thread(encode_jpeg, params, access_unit, max_width=max_width)

        loop = asyncio.get_running_loop()
        return await self.snapshots.get((camera, stream, max_width), loop.time(), produce)

    def stream_status(self, camera: str, stream: str) -> StreamStatus | None:
        """What the stream carries as ingested (not configured): codec, size, rate, GOP."""
        hub = self.hub(camera, stream)
        if hub is None:
            return None
        video = next((t for t in hub.tracks if t.is_video), None)
        audio = next((t for t in hub.tracks if not t.is_video), None)
        stats = hub.stats
        ingest = self.cameras[camera].ingests.get(stream)
        fallback = ingest.fallback if isinstance(ingest, AutoIngest) else None
        return StreamStatus(
            camera=camera,
            stream=stream,
            path=f"/{camera}/{stream}",
            state=hub.state.value,
            last_error=hub.last_error,
            down_since=hub.down_since,
            on_demand=hub.on_demand,
            codec=video.params.name if video else None,
            profile=video.params.profile if video else None,
            width=video.params.width if video else 0,
            height=video.params.height if video else 0,
            fps=round(hub.fps, 2),
            bitrate=int(hub.bitrate),
            gop_frames=stats.gop_frames,
            gop_seconds=round(stats.gop_seconds, 3),
            audio_codec=audio.params.name if audio else None,
            audio_rate=audio.params.clock_rate if audio else 0,
            audio_channels=audio.params.channels if audio else 0,
            clients=len(hub.subscribers),
            upstream_sessions=hub.upstream_sessions,
            reconnects=stats.reconnects,
            frames_in=stats.frames_in,
            bytes_in=stats.bytes_in,
            dropped_frames=stats.dropped_frames,
            slow_disconnects=stats.slow_disconnects,
            ingest=_ingest_kind(ingest),
            ingest_fallback=fallback.reason if fallback else None,
            ingest_fallback_detail=fallback.detail if fallback else "",
            ingest_fallback_since=fallback.since if fallback else None,
        )

    def stream_samples(self) -> list[StreamSample]:
        """Every stream's counters and rates (``/metrics``): the running cameras' streams,
        then those of disabled cameras."""
        out: list[StreamSample] = []
        for name, cam in list(self.cameras.items()):
            for stream, hub in list(cam.hubs.items()):
                stats = hub.stats
                last = max(
                    (t.last_wallclock for t in hub.tracks if t.last_ts is not None), default=None
                )
                out.append(
                    StreamSample(
                        camera=name,
                        stream=stream,
                        state=hub.state.value,
                        on_demand=hub.on_demand,
                        down_since=hub.down_since,
                        last_frame_age=max(hub.clock() - last, 0.0) if last else None,
                        bytes_in=stats.bytes_in,
                        frames_in=stats.frames_in,
                        bytes_out=stats.bytes_out,
                        frames_out=stats.frames_out,
                        dropped_frames=stats.dropped_frames,
                        slow_disconnects=stats.slow_disconnects,
                        malformed_frames=stats.malformed_frames,
                        relayed_frames=stats.relayed_frames,
                        repacketized_frames=stats.repacketized_frames,
                        reconnects=stats.reconnects,
                        upstream_sessions=hub.upstream_sessions,
                        byte_rate=hub.bitrate / 8,
                        fps=hub.fps,
                        gop_seconds=stats.gop_seconds,
                        gop_cache_bytes=hub.gop_cache_size,
                    )
                )
        for cfg in self.config.cameras:
            if not cfg.enabled:
                out.extend(
                    StreamSample.disabled(cfg.name, s, on_demand=cfg.on_demand)
                    for s in cfg.stream_names()
                )
        return out


def _ingest_kind(ingest: PyAVIngest | NativeIngest | AutoIngest | None) -> str:
    """What reads the stream now: "native" or "pyav" ("" for a hub fed otherwise)."""
    if isinstance(ingest, AutoIngest):
        return ingest.kind
    if isinstance(ingest, NativeIngest):
        return "native"
    return "pyav" if isinstance(ingest, PyAVIngest) else ""


def _vms_tls_files(cfg: Config) -> tuple[Path, Path]:
    """The VMS-side certificate and key: ``[server] tls_cert``/``tls_key``, else the one
    generated for the VMS-side addresses (bind, advertise_host and every per-camera
    address)."""
    server = cfg.server
    return tls.server_files(
        server.tls_cert,
        server.tls_key,
        cfg.state_dir,
        [server.bind, server.advertise_host, *cfg.camera_addresses()],
        tls.VMS,
    )
