"""Gateway configuration: TOML, validated completely before anything starts.

Every problem is reported as a :class:`ConfigError` naming the file, the key
(dotted, with array indices such as ``camera[2].password``) and what is wrong.
All problems in a file are collected, so an integrator fixes them in one pass.
Secrets are wrapped in :class:`Secret`, whose ``repr``/``str`` never reveal them.

The value checks and the table reader are :mod:`gateway.config_reader`; the TLS keys are read by
:mod:`gateway.config_tls` and ``[camera_network]`` by :mod:`gateway.config_camera_network`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.config_camera_network import CameraNetworkConfig, _camera_network
from gateway.config_reader import (
    Secret,
    _host,
    _ip,
    _ipv4_networks,
    _optional_range,
    _own_address,
    _port,
    _port_range,
    _positive,
    _Reader,
    _rtsp_url,
    _table,
    expand_env,
    one_of,
)
from gateway.config_tls import _server_tls, _tls_files

# Where every command looks for the configuration unless --config or the environment says
# otherwise; the production install (deploy/install.sh) puts it there.
DEFAULT_PATH = "/etc/onvif-gateway/gateway.toml"
PATH_ENV = "ONVIF_GATEWAY_CONFIG"

VENDORS = ("hikvision", "dahua", "generic")
# "auto": the native client where it handles the camera's stream, PyAV otherwise
# (gateway.media.auto_ingest); "native" and "pyav" force one.
INGESTS = ("auto", "native", "pyav")
CAMERA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds ``(key, message)`` pairs.

    ``where`` names a table for a person: ``camera[2]`` is shown as
    ``camera "lobby" (camera[2], line 41)``; the keys themselves stay as they are, for
    scripts (``check --json``)."""

    def __init__(
        self, source: str, problems: list[tuple[str, str]], where: dict[str, str] | None = None
    ) -> None:
        self.source = source
        self.problems = problems
        self.where = where or {}
        super().__init__("\n".join(f"{source}: {self.describe(k, m)}" for k, m in problems))

    def describe(self, key: str, message: str) -> str:
        """One problem as a person reads it: where, which key, what is wrong."""
        if not key:
            return message
        table, dot, rest = key.partition(".")
        if table in self.where:
            return (
                f"{self.where[table]}: {rest}: {message}"
                if dot
                else f"{self.where[table]}: {message}"
            )
        return f"{key}: {message}"


WORKERS_AUTO = "auto"
MAX_WORKERS = 64


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1"
    rtsp_port: int = 8554
    onvif_base_port: int = 8000
    # WS-Discovery's UDP port: 3702 is what every VMS probes; another one only serves two
    # gateways side by side on one host (testing) or clients told to probe it.
    discovery_port: int = 3702
    # Seconds a VMS RTSP session may stay silent before it is reaped (advertised in Session:).
    session_timeout: int = 60
    # Worker processes, each owning a shard of the cameras (gateway.workers): 1..64, or
    # "auto" (one per usable core, at most one per camera; gateway.workers.worker_count).
    workers: int | str = WORKERS_AUTO
    # Per-client send budget: bytes queued in the socket before the client skips to the next
    # keyframe, and seconds of continuous backlog before it is disconnected.
    client_send_budget: int = 4 * 1024 * 1024
    client_stall_timeout: float = 10.0
    # Seconds a request's header section and body may take to arrive (RTSP, ONVIF, admin),
    # and a connection may idle without a playing stream (docs/security.md).
    request_timeout: float = 5.0
    idle_timeout: float = 30.0
    # Connections one source address may hold on each listener; 0: half the listener's cap.
    connections_per_address: int = 0
    # Networks whose unicast WS-Discovery probes are answered; empty: bind's own subnet.
    discovery_allow: tuple[str, ...] = ()
    nvr_mode: bool = False
    # How camera streams are read: "auto" (the default: the gateway's own asyncio RTSP
    # client, cheaper per camera, with a per-stream fallback to PyAV where it cannot take
    # the camera's stream), "native" (that client only) or "pyav" (FFmpeg through PyAV
    # only). Per camera overridable.
    ingest: str = "auto"
    # Host (name or address) the VMS reaches the gateway by, when that is not the address it
    # connects to (NAT, port forwarding): ONVIF XAddrs and stream URIs then name it.
    advertise_host: str | None = None
    # TLS towards the VMS, off by default (many VMSs support neither): RTSPS on its own
    # port (rtsp/server.py), rtsps:// URIs from GetStreamUri when asked for (Media2
    # RtspsUnicast) or always with prefer_rtsps; ONVIF over HTTPS on each device's port +
    # onvif_https_offset, plain HTTP off with onvif_http = false (offset 0: HTTPS on the
    # devices' own ports). tls_cert/tls_key: the integrator's certificate, else one is
    # generated in the state directory (gateway.tls).
    rtsps_port: int | None = None
    prefer_rtsps: bool = False
    onvif_https_offset: int | None = None
    onvif_http: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def vms_tls(self) -> bool:
        """Whether anything is served over TLS towards the VMS."""
        return self.rtsps_port is not None or self.onvif_https_offset is not None

    def onvif_https_port(self, port: int) -> int | None:
        """The HTTPS port of the ONVIF device whose HTTP port is ``port`` (None: no HTTPS)."""
        return None if self.onvif_https_offset is None else port + self.onvif_https_offset

    # UDP ports for RTP/RTCP to VMS clients that ask for UDP (first, last; an even/odd pair
    # of them is used per worker process); None: a pair from the system's ephemeral range.
    rtp_ports: tuple[int, int] | None = None


@dataclass(frozen=True)
class VmsConfig:
    username: str
    password: Secret
    allow_basic: bool = False


@dataclass(frozen=True)
class CameraConfig:
    name: str
    vendor: str
    host: str
    username: str
    password: Secret
    rtsp_port: int = 554
    http_port: int = 80
    channel: int = 1
    main_url: str | None = None
    sub_url: str | None = None
    substream: bool = True
    on_demand: bool = False
    transport: str = "tcp"
    onvif_port: int | None = None
    ptz: str = "enabled"  # enabled | no-presets | disabled
    imaging: str = "read-only"  # enabled | read-only | disabled (the camera's ONVIF Imaging)
    enabled: bool = True
    ingest: str | None = None  # None: [server] ingest
    # An address of the gateway host for this camera alone (a secondary IP or a macvlan
    # sub-interface with its own MAC): its ONVIF device, WS-Discovery answers, RTSP and
    # snapshot URIs are on it. None: [server] bind.
    bind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stream_names(self) -> list[str]:
        return ["main", "sub"] if self.substream else ["main"]

    def upstream_url(self, stream: str, *, with_credentials: bool) -> str:
        """The camera's RTSP URL for ``stream`` ("main" or "sub").

        Credentials are only embedded when handing the URL to FFmpeg; anything that may be
        logged or shown uses ``with_credentials=False``.
        """
        override = self.main_url if stream == "main" else self.sub_url
        if override:
            url = override
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            base = f"rtsp://{host}:{self.rtsp_port}"
            if self.vendor == "hikvision":
                url = f"{base}/Streaming/Channels/{self.channel}0{1 if stream == 'main' else 2}"
            elif self.vendor == "dahua":
                subtype = 0 if stream == "main" else 1
                url = f"{base}/cam/realmonitor?channel={self.channel}&subtype={subtype}"
            else:  # generic without URL: validated away in load()
                url = f"{base}/"
        if with_credentials and self.username:
            user = quote(self.username, safe="")
            pw = quote(self.password.reveal(), safe="")
            scheme, rest = url.split("://", 1)
            if "@" not in rest.split("/", 1)[0]:
                url = f"{scheme}://{user}:{pw}@{rest}"
        return url


ADMIN_ROLES = ("viewer", "operator", "admin")  # each role may do what the previous may
# An [[admin.user]] password_hash: PHC string of scrypt (gateway.passwords makes and
# checks them): N = 2**ln with ln 12..20, r 1..32, p 1..16, a salt of 16+ bytes and a
# 32-byte key, both base64 without padding.
PASSWORD_HASH_RE = re.compile(
    r"\$scrypt\$ln=(1[2-9]|20),r=([1-9]|[12][0-9]|3[0-2]),p=([1-9]|1[0-6])"
    r"\$([A-Za-z0-9+/]{22,86})\$([A-Za-z0-9+/]{43})"
)


@dataclass(frozen=True)
class AdminUser:
    """One admin account: a password the file holds (HTTP Digest works) or only its salted
    hash (``password_hash``, see gateway.passwords; form or Basic over TLS)."""

    name: str
    role: str
    password: Secret | None = None
    password_hash: Secret | None = None


@dataclass(frozen=True)
class AdminConfig:
    # The single account of older configurations; "" when only [[admin.user]] is given.
    username: str
    password: Secret
    bind: str = "127.0.0.1"
    port: int = 8080
    # HTTPS unless tls = false; without tls_cert/tls_key a self-signed certificate is
    # generated in the state directory (gateway.admin.tls).
    tls: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    users: tuple[AdminUser, ...] = ()

    def accounts(self) -> tuple[AdminUser, ...]:
        """Every account: the [admin] username/password one (role admin), then the users."""
        legacy = (AdminUser(self.username, "admin", self.password),) if self.username else ()
        return legacy + self.users


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json: bool = False


@dataclass(frozen=True)
class Config:
    source: str
    server: ServerConfig
    vms: VmsConfig
    cameras: tuple[CameraConfig, ...]
    admin: AdminConfig | None = None
    camera_network: CameraNetworkConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    state_dir: str = "/var/lib/onvif-gateway"
    # Raw tables of sections owned by subsystems that validate them themselves
    # (policy, onvif); each subsystem calls its own parser on these.
    sections: dict[str, Any] = field(default_factory=dict)
    # Every camera of the site when this gateway serves one shard of it (gateway.fleet);
    # empty when ``cameras`` is the whole file.
    site_cameras: tuple[str, ...] = ()

    def camera(self, name: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def camera_addresses(self) -> list[str]:
        """The per-camera addresses (``[[camera]] bind``) the RTSP server must listen on
        besides ``[server] bind``: those it does not already cover, in config order."""
        found: list[str] = []
        for cam in self.cameras:
            if cam.bind and cam.bind not in found and not covers(self.server.bind, cam.bind):
                found.append(cam.bind)
        return found


def covers(listening: str, address: str) -> bool:
    """Whether a socket bound to ``listening`` takes connections to ``address`` (the same
    address, or the wildcard of its family)."""
    a, b = ipaddress.ip_address(listening), ipaddress.ip_address(address)
    return a == b or (a.is_unspecified and a.version == b.version)


def onvif_port_of(server: ServerConfig, cam: CameraConfig, index: int) -> int:
    """The ONVIF port of camera ``index``: its ``onvif_port``; else ``onvif_base_port`` on
    an address of its own, or base + index on ``[server] bind``."""
    if cam.onvif_port:
        return cam.onvif_port
    return server.onvif_base_port if cam.bind else server.onvif_base_port + index


# --------------------------------------------------------------------------- loading


def _bind(r: _Reader) -> str:
    """A table's ``bind``: an IP address, or ``${VAR}`` naming a variable that holds one
    (Kubernetes with host networking: the node's address, from the downward API)."""
    raw = r.get("bind", str, "127.0.0.1")
    value, missing = expand_env(raw)
    if missing:
        r.error("bind", f"environment variable {missing} is not set (used in {raw!r})")
        return "127.0.0.1"
    problem = _ip(value)
    if problem:
        r.error("bind", problem)
        return "127.0.0.1"
    return value


# Sections other subsystems validate; load() keeps them raw in Config.sections.
DELEGATED_SECTIONS: set[str] = {"policy", "onvif", "fleet", "telemetry", "firmware", "sim"}


def default_path() -> str:
    """The configuration file a command uses when not given ``--config``."""
    return os.environ.get(PATH_ENV) or DEFAULT_PATH


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config/-c FILE`` as every command takes it, with the default above."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=default_path(),
        help=f"configuration file (default: ${PATH_ENV}, else {DEFAULT_PATH})",
    )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file, or raise :class:`ConfigError`."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    return loads(
        raw.decode("utf-8", errors="replace"), source=source, base_dir=Path(path).resolve().parent
    )


def loads(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"not valid TOML: {exc}")]) from None
    return _from_data(data, text, source, base_dir)


def load_admin_section(path: str | os.PathLike[str]) -> Config:
    """Only the file's ``[admin]`` section and ``state_dir``, as a Config without cameras: how
    ``status`` reaches a running gateway while the file has problems elsewhere (the gateway
    keeps running on the last configuration it accepted). ConfigError when the file is not
    TOML, or ``[admin]`` itself is missing or wrong."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_bytes().decode("utf-8", errors="replace"))
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"not valid TOML: {exc}")]) from None
    if not isinstance(data.get("admin"), dict):
        raise ConfigError(source, [("admin", "is required to reach the admin API")])
    kept: dict[str, Any] = {k: data[k] for k in ("state_dir", "admin") if k in data}
    kept["vms"] = {"username": "unused", "password": "unused"}
    return _from_data(kept, "", source, Path(path).resolve().parent)


def _from_data(data: dict[str, Any], text: str, source: str, base_dir: Path | None) -> Config:
    problems: list[tuple[str, str]] = []
    base = base_dir or Path.cwd()
    top = _Reader(data, "", problems, base)

    server_t = _table(top, "server", False) or {}
    sr = _Reader(server_t, "server", problems, base)
    server = ServerConfig(
        bind=_bind(sr),
        rtsp_port=sr.get("rtsp_port", int, 8554, _port),
        onvif_base_port=sr.get("onvif_base_port", int, 8000, _port),
        discovery_port=sr.get("discovery_port", int, 3702, _port),
        session_timeout=sr.get("session_timeout", int, 60, _positive),
        workers=sr.get("workers", (int, str), WORKERS_AUTO, _workers),
        client_send_budget=sr.get(
            "client_send_budget",
            int,
            4 * 1024 * 1024,
            lambda v: None if v >= 65536 else "must be at least 65536",
        ),
        client_stall_timeout=float(sr.get("client_stall_timeout", (int, float), 10.0, _positive)),
        request_timeout=float(sr.get("request_timeout", (int, float), 5.0, _positive)),
        idle_timeout=float(sr.get("idle_timeout", (int, float), 30.0, _positive)),
        connections_per_address=sr.get(
            "connections_per_address", int, 0, lambda v: None if v >= 0 else "must be >= 0"
        ),
        discovery_allow=tuple(sr.get("discovery_allow", list, [], _ipv4_networks)),
        nvr_mode=sr.get("nvr_mode", bool, False),
        ingest=sr.get("ingest", str, "auto", one_of(*INGESTS)),
        advertise_host=sr.get("advertise_host", str, None, _host),
        rtp_ports=_optional_range(sr.get("rtp_ports", str, None, _port_range)),
    )
    server = _server_tls(sr, server)
    sr.finish()
    if server.rtp_ports is not None and (
        server.rtp_ports[0] <= server.discovery_port <= server.rtp_ports[1]
    ):
        sr.error("rtp_ports", f"includes discovery_port {server.discovery_port} (WS-Discovery)")

    vms_t = _table(top, "vms", True) or {}
    vr = _Reader(vms_t, "vms", problems, base)
    vms = VmsConfig(
        username=vr.get("username", str, ..., lambda v: None if v else "must not be empty"),
        password=vr.secret("password") or Secret(""),
        allow_basic=vr.get("allow_basic", bool, False),
    )
    vr.finish()

    cameras: list[CameraConfig] = []
    top.used.add("camera")
    cam_list = data.get("camera", [])
    if not isinstance(cam_list, list):
        top.error("camera", "must be an array of tables ([[camera]])")
        cam_list = []
    seen_names: set[str] = set()
    where: dict[str, str] = {}
    lines = _array_table_lines(text, "camera")
    # Each camera with its index in the file: a port clash names the right [[camera]] even
    # when an invalid one before it was dropped.
    indexed: list[tuple[int, CameraConfig]] = []
    for i, cam_t in enumerate(cam_list):
        line = f", line {lines[i]}" if i < len(lines) else ""
        name = cam_t.get("name") if isinstance(cam_t, dict) else None
        named = f"camera {json_quote(name)} " if isinstance(name, str) and name else "camera "
        where[f"camera[{i}]"] = f"{named}(camera[{i}]{line})"
        if not isinstance(cam_t, dict):
            top.error(f"camera[{i}]", "must be a table")
            continue
        cameras_reader = _Reader(cam_t, f"camera[{i}]", problems, base)
        cam = _camera(cameras_reader)
        cameras_reader.finish()
        if cam is None:
            continue
        if cam.name in seen_names:
            cameras_reader.error("name", f"duplicate camera name {cam.name!r}")
        seen_names.add(cam.name)
        cameras.append(cam)
        indexed.append((i, cam))

    admin = None
    admin_t = _table(top, "admin", False)
    if admin_t is not None:
        ar = _Reader(admin_t, "admin", problems, base)
        admin = _admin(ar)
        ar.finish()

    camera_network = None
    cn_t = _table(top, "camera_network", False)
    if cn_t is not None:
        cr = _Reader(cn_t, "camera_network", problems, base)
        camera_network = _camera_network(cr)
        cr.finish()

    log_t = _table(top, "log", False) or {}
    lr = _Reader(log_t, "log", problems, base)
    log = LogConfig(
        level=lr.get(
            "level",
            str,
            "info",
            lambda v: (
                None
                if v in ("debug", "info", "warning", "error")
                else "must be debug, info, warning or error"
            ),
        ),
        json=lr.get("json", bool, False),
    )
    lr.finish()

    state_dir = top.get("state_dir", str, "/var/lib/onvif-gateway")
    sections = {}
    for name in DELEGATED_SECTIONS:
        if name in data:
            top.used.add(name)
            sections[name] = data[name]
    top.finish()

    # Ports are claimed per (address, port); a wildcard address overlaps every address of
    # its family. The RTSP port is listened on at every per-camera address too.
    ports: dict[tuple[str, int], str] = {}
    _claim(ports, (server.bind, server.rtsp_port), "server.rtsp_port", problems)
    if server.rtsps_port is not None:
        _claim(ports, (server.bind, server.rtsps_port), "server.rtsps_port", problems)
    for i, cam in indexed:
        if (
            cam.bind
            and not covers(server.bind, cam.bind)
            and (cam.bind, server.rtsp_port) not in ports
        ):
            _claim(ports, (cam.bind, server.rtsp_port), f"camera[{i}].bind", problems, where)
    if admin is not None:
        _claim(ports, (admin.bind, admin.port), "admin.port", problems)
    for k, (i, cam) in enumerate(indexed):
        # Camera k of the valid ones, as gateway.onvif.config assigns them.
        port = onvif_port_of(server, cam, k)
        address = cam.bind or server.bind
        if server.onvif_http:
            _claim(ports, (address, port), f"camera[{i}].onvif_port", problems, where)
        https = server.onvif_https_port(port)
        if https is not None and https > 65535:
            problems.append((f"camera[{i}].onvif_port", f"HTTPS port {https} is above 65535"))
        elif https is not None and (https != port or not server.onvif_http):
            key = f"camera[{i}].onvif_port (HTTPS)"
            _claim(ports, (address, https), key, problems, where)

    if problems:
        raise ConfigError(source, problems, where)
    return Config(
        source=source,
        server=server,
        vms=vms,
        cameras=tuple(cameras),
        admin=admin,
        camera_network=camera_network,
        log=log,
        state_dir=state_dir,
        sections=sections,
    )


def _claim(
    ports: dict[tuple[str, int], str],
    endpoint: tuple[str, int],
    key: str,
    problems: list[tuple[str, str]],
    where: dict[str, str] | None = None,
) -> None:
    address, port = endpoint
    for (held_address, held_port), holder in ports.items():
        if held_port == port and (covers(held_address, address) or covers(address, held_address)):
            table, _, rest = holder.partition(".")
            if where and table in where:
                holder = f"{where[table]} {rest}"
            problems.append((key, f"port {port} is already used by {holder}"))
            return
    ports[endpoint] = key


_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")


def _array_table_lines(text: str, name: str) -> list[int]:
    """The 1-based line of each ``[[name]]`` header, in order (the i-th is element i)."""
    return [
        n
        for n, line in enumerate(text.splitlines(), start=1)
        if (m := _ARRAY_TABLE.match(line)) and m.group(1) == name
    ]


def json_quote(text: str) -> str:
    """``text`` in double quotes, as TOML and a person write a name."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _camera(r: _Reader) -> CameraConfig | None:
    name = r.get(
        "name",
        str,
        ...,
        lambda v: (
            None
            if CAMERA_NAME_RE.match(v)
            else "must be 1-63 letters, digits, '-' or '_' (it becomes the stream path)"
        ),
    )
    vendor: str | None = r.get("vendor", str, "generic", one_of(*VENDORS))
    if r.table.get("vendor", "generic") not in VENDORS:
        vendor = None  # reported once; nothing below judges the camera by a vendor it is not
    host = r.get("host", str, ..., _host)
    main_url = r.get("main_url", str, None, _rtsp_url)
    sub_url = r.get("sub_url", str, None, _rtsp_url)
    if vendor == "generic" and "main_url" not in r.table:
        r.error("main_url", "is required for vendor 'generic' (no URL template to apply)")
    substream = r.get("substream", bool, True)
    if vendor == "generic" and substream and "sub_url" not in r.table and "main_url" in r.table:
        substream = False  # a generic camera has a sub stream only if its URL is given
    transport = r.get(
        "transport", str, "tcp", lambda v: None if v in ("tcp", "udp") else "must be 'tcp' or 'udp'"
    )
    cam = CameraConfig(
        name=name or "",
        vendor=vendor or "generic",
        host=host or "",
        username=r.get("username", str, ""),
        password=r.secret("password", required="username" in r.table) or Secret(""),
        rtsp_port=r.get("rtsp_port", int, 554, _port),
        http_port=r.get("http_port", int, 80, _port),
        channel=r.get("channel", int, 1, lambda v: None if 1 <= v <= 256 else "must be 1..256"),
        main_url=main_url,
        sub_url=sub_url,
        substream=substream,
        on_demand=r.get("on_demand", bool, False),
        transport=transport,
        onvif_port=r.get("onvif_port", int, None, _port),
        ptz=r.get(
            "ptz",
            str,
            "enabled",
            lambda v: (
                None
                if v in ("enabled", "no-presets", "disabled")
                else "must be enabled, no-presets or disabled"
            ),
        ),
        imaging=r.get(
            "imaging",
            str,
            "read-only",
            lambda v: (
                None
                if v in ("enabled", "read-only", "disabled")
                else "must be enabled, read-only or disabled"
            ),
        ),
        enabled=r.get("enabled", bool, True),
        ingest=r.get("ingest", str, None, one_of(*INGESTS)),
        bind=r.get("bind", str, None, _own_address),
        extra={
            k: r.table[k]
            for k in ("model", "firmware", "serial", "location", "mac")
            if k in r.table
        },
    )
    for k in ("model", "firmware", "serial", "location", "mac"):
        r.get(k, str, None)
    return cam if name and vendor else None


def _workers(value: int | str) -> str | None:
    if value == WORKERS_AUTO or (isinstance(value, int) and 1 <= value <= MAX_WORKERS):
        return None
    return f'must be 1..{MAX_WORKERS} or "{WORKERS_AUTO}", not {value!r}'


def _admin(r: _Reader) -> AdminConfig:
    r.used.add("user")
    raw_users = r.table.get("user", [])
    users: list[AdminUser] = []
    if not isinstance(raw_users, list):
        r.error("user", "must be an array of tables ([[admin.user]])")
        raw_users = []
    # The single [admin] account is optional once [[admin.user]] accounts exist.
    legacy = (
        "username" in r.table or any(k.startswith("password") for k in r.table) or not raw_users
    )
    username = (
        r.get("username", str, ..., lambda v: None if v else "must not be empty") if legacy else ""
    )
    password = (r.secret("password") if legacy else None) or Secret("")
    names = {username} if username else set()
    for i, entry in enumerate(raw_users):
        if not isinstance(entry, dict):
            r.error(f"user[{i}]", "must be a table")
            continue
        ur = _Reader(entry, f"{r.prefix}.user[{i}]", r.problems, r.base_dir)
        user = _admin_user(ur)
        ur.finish()
        if user is None:
            continue
        if user.name in names:
            ur.error("name", f"duplicate admin account {user.name!r}")
        names.add(user.name)
        users.append(user)
    tls_cert, tls_key = _tls_files(r)
    tls = r.get("tls", bool, True)
    if not tls and tls_cert:
        r.error("tls_cert", "is set but tls = false")
    return AdminConfig(
        username=username or "",
        password=password,
        bind=_bind(r),
        port=r.get("port", int, 8080, _port),
        tls=tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        users=tuple(users),
    )


def _admin_user(r: _Reader) -> AdminUser | None:
    name = r.get(
        "name",
        str,
        ...,
        lambda v: (
            None
            if re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", v)
            else "must be 1-64 letters, digits or . _ @ -"
        ),
    )
    role = r.get(
        "role",
        str,
        ...,
        lambda v: None if v in ADMIN_ROLES else f"must be one of {', '.join(ADMIN_ROLES)}",
    )
    password = r.secret("password", required=False)
    password_hash = r.secret("password_hash", required=False)
    if password is None and password_hash is None:
        if not any(k.startswith("password") for k in r.table):
            r.error("password_hash", "is required (or password_hash_file, password_file, ...)")
        return None
    if password is not None and password_hash is not None:
        r.error("password_hash", "give a password or its hash, not both")
        return None
    if password_hash is not None and not PASSWORD_HASH_RE.fullmatch(password_hash.reveal()):
        r.error(
            "password_hash",
            "is not a password hash from 'onvif-gateway passwd' ($scrypt$ln=15,r=8,p=1$...)",
        )
        return None
    if not name or not role:
        return None
    return AdminUser(name, role, password, password_hash)


def iter_secrets(config: Config) -> Iterator[str]:
    """Every secret value in the config, for log redaction."""
    yield config.vms.password.reveal()
    if config.admin is not None:
        for account in config.admin.accounts():
            for secret in (account.password, account.password_hash):
                if secret:
                    yield secret.reveal()
    for cam in config.cameras:
        if cam.password:
            yield cam.password.reveal()
