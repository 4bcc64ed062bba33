"""aiohttp serving of virtual ONVIF devices: one app per camera (plus one for NVR mode).

``install(app, device)`` adds a device's routes to any aiohttp app (the simulator reuses it);
``start_onvif(config, backends)`` builds every device, binds its port on ``[server] bind``,
and starts WS-Discovery; ``await servers.close()`` says Bye and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from lxml import etree

from gateway.cancellation import wait_for
from gateway.config import Config
from gateway.digest import DigestAuthenticator
from gateway.limits import CappedSite, FailureThrottle, HttpLimits, TokenBucket
from gateway.onvif import device as device_service
from gateway.onvif import events, imaging, media, media2, ptz
from gateway.onvif.backend import CameraBackend
from gateway.onvif.config import OnvifSettings, camera_ports, nvr_port_of, parse_settings
from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler, VirtualDevice
from gateway.onvif.security import (
    AuthError,
    ReplayCache,
    UsernameToken,
    verify_username_token,
)
from gateway.onvif.xml import (
    MAX_BODY_BYTES,
    SOAP12,
    SoapFault,
    SoapRequest,
    action_not_supported,
    content_type,
    envelope,
    not_authorized,
)

log = logging.getLogger(__name__)

OPERATIONS: dict[tuple[str, str], Handler] = {
    **device_service.OPERATIONS,
    **media.OPERATIONS,
    **media2.OPERATIONS,
    **events.OPERATIONS,
    **ptz.OPERATIONS,
    **imaging.OPERATIONS,
}
PRE_AUTH = device_service.PRE_AUTH | events.PRE_AUTH
ACCEPTED_TYPES = ("application/soap+xml", "application/xml", "text/xml")

DEVICE_KEY: web.AppKey[VirtualDevice] = web.AppKey("onvif_device", VirtualDevice)


class HttpAuthRefused(AuthError):
    """The HTTP-level credentials (``Authorization``, or none) were refused: answered 401
    with a Digest challenge, ``stale`` when only the nonce was out of date."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        self.stale = stale


# SystemReboot (the one operation that takes a device's streams down for a moment; factory
# reset, firmware upgrade and the like are refused outright): once per device per
# DISRUPTIVE_INTERVAL seconds. Other configuration writes (Set*, Create*, Delete*, Add*,
# Remove*): CHANGE_RATE a second per device, CHANGE_BURST at once. Event pulls and PTZ
# moves are not limited (a VMS pulls continuously; a joystick sends moves in bursts).
DISRUPTIVE = frozenset({"SystemReboot"})
DISRUPTIVE_INTERVAL = 60.0
CHANGE_RATE = 10.0
CHANGE_BURST = 40
CONFIGURATION_WRITES = ("Set", "Create", "Delete", "Add", "Remove")


@dataclass
class Guard:
    """Credentials, replay cache, digest nonces, failure throttle and the rate of
    state-changing operations of one device. ``replay`` is shared by every device of a
    gateway (see :class:`~gateway.onvif.security.ReplayCache`); without one given, the
    device has its own (the simulator's devices)."""

    username: str
    password: str
    window: float
    allow_basic: bool = False
    replay: ReplayCache | None = None
    digest: DigestAuthenticator = field(init=False)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    disruptive: TokenBucket = field(
        default_factory=lambda: TokenBucket(1.0 / DISRUPTIVE_INTERVAL, 1, time.monotonic())
    )
    changes: TokenBucket = field(
        default_factory=lambda: TokenBucket(CHANGE_RATE, CHANGE_BURST, time.monotonic())
    )

    def __post_init__(self) -> None:
        if self.replay is None:
            self.replay = ReplayCache(self.window)
        # Each Digest answer is accepted once, remembered in the same replay cache as the
        # UsernameToken nonces (clients may send concurrent requests out of nc order).
        self.digest = DigestAuthenticator(
            "ONVIF",
            self._password_of,
            secrets.token_bytes(32),
            nonce_lifetime=self.window,
            allow_basic=self.allow_basic,
            algorithms=("MD5", "SHA-256"),
            count_nonces=False,
        )

    @property
    def cache(self) -> ReplayCache:
        assert self.replay is not None  # set in __post_init__
        return self.replay

    def admit_change(self, operation: str, now: float) -> bool:
        """Whether a state-changing ``operation`` may run now (``now``: monotonic)."""
        if operation in DISRUPTIVE:
            return self.disruptive.take(now)
        if operation.startswith(CONFIGURATION_WRITES):
            return self.changes.take(now)
        return True

    def _password_of(self, username: str) -> str | None:
        known = hmac.compare_digest(username.encode(), self.username.encode())
        return self.password if known else None

    def check(self, request: web.Request, soap: SoapRequest | None, now: float) -> None:
        """Raise :class:`AuthError` unless the request carries valid credentials."""
        token = UsernameToken.from_header(soap.header) if soap is not None else None
        if token is not None:
            verify_username_token(
                token,
                username=self.username,
                password=self.password,
                now=now,
                window=self.window,
                replay=self.cache,
                source=request.remote,
                operation=etree.QName(soap.operation).localname if soap is not None else "",
            )
            return
        header = request.headers.get("Authorization")
        if not header:
            raise HttpAuthRefused("no credentials")
        result = self.digest.authenticate(request.method, header, now, request.raw_path)
        if result.username is None:
            raise HttpAuthRefused(f"HTTP auth: {result.reason}", stale=result.stale)
        if result.answer:  # Digest (Basic, when allowed, has no nonce to replay)
            try:
                self.cache.add(b"digest:" + result.answer.encode(), now)
            except AuthError as exc:
                raise HttpAuthRefused(f"HTTP auth: {exc}") from None


def _guard(device: VirtualDevice, replay: ReplayCache | None = None) -> Guard:
    """The device's guard, made on first use (with ``replay`` as its replay cache)."""
    guard = getattr(device, "_guard", None)
    if guard is None:
        settings = device.settings
        guard = Guard(
            device.username, device.password, settings.auth_window, settings.allow_basic, replay
        )
        device._guard = guard  # type: ignore[attr-defined]
    return guard


def share_replay_cache(device: VirtualDevice, replay: ReplayCache) -> None:
    """Make ``device`` check nonces in ``replay``, the cache of all the gateway's devices."""
    _guard(device, replay)


def _remote(request: web.Request) -> str:
    return request.remote or "unknown"


def _local(request: web.Request) -> tuple[str, int]:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname:
        return str(sockname[0]), int(sockname[1])
    host, _, port = request.host.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 80)


def _fault_response(
    fault: SoapFault,
    soap_ns: str = SOAP12,
    challenges: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    response = web.Response(
        body=fault.to_bytes(soap_ns),
        status=fault.http_status,
        headers={"Content-Type": content_type(soap_ns), **(headers or {})},
    )
    for value in challenges:
        response.headers.add("WWW-Authenticate", value)
    return response


async def _authenticate(
    request: web.Request, device: VirtualDevice, soap: SoapRequest | None, now: float
) -> web.Response | None:
    """None when authenticated, else the refusal to send (after any throttling delay)."""
    guard = _guard(device)
    address = _remote(request)
    delay = guard.throttle.delay(address, now)
    if delay:
        await asyncio.sleep(delay)
    try:
        guard.check(request, soap, now)
    except AuthError as exc:
        guard.throttle.failure(address, now)
        log.info("%s: refused %s from %s: %s", device.name, request.path, address, exc)
        fault = not_authorized()
        soap_ns = soap.soap_ns if soap else SOAP12
        if isinstance(exc, HttpAuthRefused):
            # HTTP-level credentials refused (or none): 401 with the Digest challenge, so
            # HTTP clients retry (with a fresh nonce when stale, or Digest after a refused
            # Basic); WS-Security clients read the ONVIF fault in the body.
            fault.http_status = 401
            return _fault_response(fault, soap_ns, guard.digest.challenge(now, stale=exc.stale))
        return _fault_response(fault, soap_ns)
    guard.throttle.success(address)
    return None


async def handle_soap(request: web.Request) -> web.StreamResponse:
    device = request.app[DEVICE_KEY]
    mime = request.content_type.lower()
    if mime not in ACCEPTED_TYPES:
        return _fault_response(
            SoapFault("Sender", ("ter:WellFormed",), f"content type {mime!r} is not SOAP")
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _fault_response(
            SoapFault(
                "Sender",
                ("ter:WellFormed",),
                f"request of {request.content_length} bytes exceeds {MAX_BODY_BYTES}",
                http_status=413,
            )
        )
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _fault_response(
            SoapFault("Sender", ("ter:WellFormed",), "request too large", http_status=413)
        )
    now = device.clock()
    if not data.strip():
        # libcurl's multi-pass auth (--digest, --anyauth) sends a POST without its body
        # first to learn the challenge: answer as any Digest-guarded resource would.
        refusal = await _authenticate(request, device, None, now)
        if refusal is not None:
            return refusal
    try:
        soap = SoapRequest.parse(data)
    except ValueError as exc:
        return _fault_response(SoapFault("Sender", ("ter:WellFormed",), str(exc)))
    key = (soap.namespace, soap.name)
    handler = OPERATIONS.get(key)
    if handler is None:
        return _fault_response(action_not_supported(soap.name), soap.soap_ns)
    if key not in PRE_AUTH:
        refusal = await _authenticate(request, device, soap, now)
        if refusal is not None:
            return refusal
        if not _guard(device).admit_change(soap.name, time.monotonic()):
            log.warning(
                "%s: %s refused: too many state-changing requests",
                device.name,
                soap.name,
                extra={"peer": _remote(request), "ratelimit": True},
            )
            return _fault_response(
                SoapFault(
                    "Receiver",
                    ("ter:Action",),
                    f"{soap.name} refused: too many such requests; retry later",
                    http_status=503,
                ),
                soap.soap_ns,
                headers={"Retry-After": "60" if soap.name in DISRUPTIVE else "1"},
            )
    local_ip, local_port = _local(request)
    call = Call(
        device, soap, local_ip, local_port, now, request.path, _remote(request), request.secure
    )
    try:
        body = await handler(call)
    except SoapFault as fault:
        return _fault_response(fault, soap.soap_ns)
    except Exception:
        log.exception("%s: %s failed", device.name, soap.name)
        return _fault_response(
            SoapFault("Receiver", ("ter:Action",), f"{soap.name} failed inside the gateway"),
            soap.soap_ns,
        )
    return web.Response(
        body=envelope(body, soap_ns=soap.soap_ns),
        headers={"Content-Type": content_type(soap.soap_ns)},
    )


async def handle_snapshot(request: web.Request) -> web.StreamResponse:
    device = request.app[DEVICE_KEY]
    now = device.clock()
    refusal = await _authenticate(request, device, None, now)
    if refusal is not None:
        return refusal
    token = request.match_info["token"]
    for profile in device.profiles():
        if profile.token == token:
            try:
                jpeg = await profile.slot.backend.snapshot(profile.stream.name)
            except LookupError as exc:
                return web.Response(status=503, text=f"no picture yet: {exc}\n")
            return web.Response(body=jpeg, content_type="image/jpeg")
    return web.Response(status=404, text="no such profile\n")


def install(app: web.Application, device: VirtualDevice) -> None:
    """Add the ONVIF routes of ``device`` to ``app`` and run its event broker with the app."""
    app[DEVICE_KEY] = device
    for path in SERVICE_PATHS.values():
        app.router.add_post(path, handle_soap)
    app.router.add_post(events.SUBSCRIPTION_PATH + "{sid}", handle_soap)
    app.router.add_get("/onvif/snapshot/{token}.jpg", handle_snapshot)
    broker = events.EventBroker(device)
    device.events = broker

    async def lifecycle(app: web.Application):
        broker.start()
        stop = asyncio.Event()

        async def expire() -> None:
            while not stop.is_set():
                broker.prune(device.clock())
                with contextlib.suppress(TimeoutError):
                    await wait_for(stop.wait(), 5.0)

        task = asyncio.create_task(expire())
        yield
        stop.set()
        await task
        broker.close()

    app.cleanup_ctx.append(lifecycle)


def make_app(device: VirtualDevice, limits: HttpLimits) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[limits.body_deadline()])
    install(app, device)
    return app


# --------------------------------------------------------------------------- the gateway


@dataclass
class OnvifServers:
    """The running virtual devices; ``devices`` in config order (NVR device last)."""

    devices: list[VirtualDevice]
    runners: list[web.AppRunner]
    discovery: object | None = None

    def device(self, name: str) -> VirtualDevice:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise KeyError(name)

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()  # type: ignore[attr-defined]
            self.discovery = None
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


def build_devices(
    config: Config,
    backends: Mapping[str, CameraBackend],
    settings: OnvifSettings,
    *,
    clock=time.time,
) -> list[VirtualDevice]:
    ports = camera_ports(config)
    slots = [
        CameraSlot(cam, backends[cam.name])
        for cam in config.cameras
        if cam.enabled and cam.name in backends
    ]
    server = config.server
    common = dict(
        advertise_host=server.advertise_host or "",
        rtsp_port=server.rtsp_port,
        http=server.onvif_http,
        rtsps_port=server.rtsps_port,
        prefer_rtsps=server.prefer_rtsps,
        username=config.vms.username,
        password=config.vms.password.reveal(),
        settings=settings,
        clock=clock,
    )
    devices = [
        VirtualDevice(
            name=slot.name,
            slots=[slot],
            nvr=False,
            port=ports[slot.name],
            bind=slot.config.bind or "",
            https_port=server.onvif_https_port(ports[slot.name]),
            **common,
        )
        for slot in slots
    ]
    if config.server.nvr_mode and slots:
        devices.append(
            VirtualDevice(
                name="nvr",
                slots=slots,
                nvr=True,
                port=nvr_port_of(config, settings.nvr_port),
                https_port=server.onvif_https_port(nvr_port_of(config, settings.nvr_port)),
                **common,
            )
        )
    return devices


async def serve_device(
    device: VirtualDevice, bind: str, tls: ssl.SSLContext | None, limits: HttpLimits
) -> web.AppRunner:
    """Serve ``device`` on its own address (``device.bind``), else ``bind``, at
    ``device.port`` (unless ``device.http`` is off) and over HTTPS with ``tls`` on
    ``device.https_port`` when it has one, within ``limits`` (shared by all the devices of a
    gateway); ``await runner.cleanup()`` stops it. Raises ``OSError`` if a port cannot be
    bound."""
    bind = device.bind or bind
    app = make_app(device, limits)
    runner = web.AppRunner(app, access_log=None, **limits.runner_options())
    await runner.setup()
    try:
        if device.http:
            await CappedSite(runner, bind, device.port, limits, reuse_address=True).start()
        if device.https_port is not None:
            if tls is None:
                raise OSError(f"ONVIF device {device.name}: HTTPS port but no certificate")
            site = CappedSite(
                runner, bind, device.https_port, limits, ssl_context=tls, reuse_address=True
            )
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("ONVIF device %s at %s (%s)", device.name, " ".join(device.xaddrs(bind)), device.uuid)
    return runner


async def start_onvif(
    config: Config,
    backends: Mapping[str, CameraBackend],
    *,
    clock=time.time,
    tls: ssl.SSLContext | None = None,
) -> OnvifServers:
    """Serve every enabled camera in ``backends`` as a virtual device (over HTTPS too with
    ``tls`` when ``[server] onvif_https_offset`` is set); raises ``OSError`` if a port
    cannot be bound (everything already started is stopped again)."""
    settings = parse_settings(config)
    devices = build_devices(config, backends, settings, clock=clock)
    servers = OnvifServers(devices, [])
    limits = HttpLimits.for_listener("onvif", config.server)
    replay = ReplayCache(settings.auth_window)
    for dev in devices:
        share_replay_cache(dev, replay)
    try:
        for dev in devices:
            servers.runners.append(await serve_device(dev, config.server.bind, tls, limits))
        if settings.discovery and devices:
            from gateway.onvif.discovery import DiscoveryResponders

            servers.discovery = await DiscoveryResponders.start(
                config.server.bind,
                devices,
                config.server.discovery_port,
                config.server.discovery_allow,
            )
    except BaseException:
        await servers.close()
        raise
    return servers
