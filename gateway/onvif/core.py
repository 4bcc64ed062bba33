"""The state of one virtual ONVIF device and the call object every operation handler gets.

A device is either one camera (``nvr=False``) or, in NVR mode, all cameras: its profiles are
then every camera's streams. Profile and configuration tokens carry the camera name, so they
are the same in both modes and stable across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from gateway import __version__
from gateway.config import CameraConfig
from gateway.onvif.backend import CameraBackend, DeviceIdentity, StreamInfo, device_uuid
from gateway.onvif.config import OnvifSettings
from gateway.onvif.xml import SoapRequest, Xml, child_text, el, invalid_arg


@dataclass(frozen=True)
class CameraSlot:
    """One camera inside a virtual device."""

    config: CameraConfig
    backend: CameraBackend

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def video_source(self) -> str:
        return f"{self.name}_video"

    @property
    def video_source_config(self) -> str:
        return f"{self.name}_video_cfg"

    @property
    def audio_source(self) -> str:
        return f"{self.name}_audio"

    @property
    def audio_source_config(self) -> str:
        return f"{self.name}_audio_cfg"

    @property
    def analytics_config(self) -> str:
        return f"{self.name}_analytics"

    @property
    def ptz_enabled(self) -> bool:
        return self.backend.ptz is not None and self.config.ptz != "disabled"

    @property
    def imaging_enabled(self) -> bool:
        return self.backend.imaging is not None and self.config.imaging != "disabled"


@dataclass(frozen=True)
class Profile:
    token: str
    slot: CameraSlot
    stream: StreamInfo

    @property
    def name(self) -> str:
        return f"{self.slot.name} {self.stream.name}"

    @property
    def video_encoder(self) -> str:
        return f"{self.token}_venc"

    @property
    def audio_encoder(self) -> str:
        return f"{self.token}_aenc"


@dataclass
class VirtualDevice:
    """Everything the services of one virtual device read."""

    name: str
    slots: Sequence[CameraSlot]
    nvr: bool
    port: int
    rtsp_port: int
    username: str
    password: str
    settings: OnvifSettings
    clock: Callable[[], float] = time.time
    uuid: str = ""
    # Set by the server: the event broker (gateway.onvif.events.EventBroker).
    events: object | None = None
    reboots: list[str] = field(default_factory=list)
    # The simulator serves its streams on vendor paths: full RTSP URL per stream name.
    rtsp_url_for: Callable[[str], str] | None = None
    # ``[server] advertise_host``: the host XAddrs and URIs name instead of the socket address.
    advertise_host: str = ""
    # ``[[camera]] bind``: the camera's own address, served on instead of ``[server] bind``.
    bind: str = ""
    # TLS towards the VMS (``[server]``): HTTPS port (None: none), whether plain HTTP is
    # served on ``port``, the RTSPS port (None: no rtsps:// URIs) and ``prefer_rtsps``.
    https_port: int | None = None
    http: bool = True
    rtsps_port: int | None = None
    prefer_rtsps: bool = False

    def __post_init__(self) -> None:
        if self.bind:
            # A camera's own address is what the VMS reaches it by: advertise_host (NAT in
            # front of [server] bind) is for the devices on [server] bind.
            self.advertise_host = ""
        if not self.uuid:
            if self.nvr:
                self.uuid = device_uuid(
                    DeviceIdentity("onvif-gateway", "NVR", __version__),
                    host="nvr",
                    name=",".join(s.name for s in self.slots),
                )
            else:
                slot = self.slots[0]
                self.uuid = device_uuid(
                    slot.backend.identity(), host=slot.config.host, name=slot.name
                )

    def identity(self) -> DeviceIdentity:
        if not self.nvr:
            ident = self.slots[0].backend.identity()
            if not ident.serial:
                # A camera whose serial is unknown still gets a stable one: from its uuid.
                serial = self.uuid.rsplit(":", 1)[-1].replace("-", "")[:16].upper()
                ident = DeviceIdentity(
                    ident.manufacturer,
                    ident.model,
                    ident.firmware,
                    serial,
                    ident.hardware_id,
                    ident.mac,
                )
            return ident
        serial = self.uuid.rsplit(":", 1)[-1].replace("-", "")[:16].upper()
        return DeviceIdentity("onvif-gateway", "ONVIF-Gateway-NVR", __version__, serial, "NVR")

    def mac(self) -> str:
        ident = self.identity()
        if ident.mac:
            return ident.mac.lower().replace("-", ":")
        # Locally administered unicast MAC derived from the uuid: stable and unique.
        hexes = self.uuid.rsplit(":", 1)[-1].replace("-", "")
        octets = [0x02] + [int(hexes[i : i + 2], 16) for i in range(0, 10, 2)]
        return ":".join(f"{o:02x}" for o in octets)

    def location(self) -> str:
        if not self.nvr:
            loc = self.slots[0].config.extra.get("location")
            if isinstance(loc, str) and loc:
                return loc
        return self.settings.location

    def xaddrs(self, host: str) -> tuple[str, ...]:
        """The device service's addresses on ``host``: plain HTTP first when served, so a
        VMS that takes the first XAddr and knows no TLS still connects."""
        host = url_host(host)
        found = [f"http://{host}:{self.port}"] if self.http else []
        if self.https_port is not None:
            found.append(f"https://{host}:{self.https_port}")
        return tuple(f"{base}{SERVICE_PATHS['device']}" for base in found)

    def profiles(self) -> list[Profile]:
        return [
            Profile(f"{slot.name}_{stream.name}", slot, stream)
            for slot in self.slots
            for stream in slot.backend.streams()
        ]

    def profile(self, token: str | None) -> Profile:
        for p in self.profiles():
            if p.token == token:
                return p
        raise invalid_arg("ter:NoProfile", f"no profile with token {token!r}")

    def slot_by_token(self, token: str | None, attr: str) -> CameraSlot:
        for slot in self.slots:
            if getattr(slot, attr) == token:
                return slot
        raise invalid_arg("ter:NoConfig", f"no configuration with token {token!r}")

    def has_ptz(self) -> bool:
        return any(s.ptz_enabled for s in self.slots)

    def has_imaging(self) -> bool:
        return any(s.imaging_enabled for s in self.slots)

    def has_audio(self) -> bool:
        return any(p.stream.audio is not None for p in self.profiles())


@dataclass
class Call:
    """One SOAP operation being answered."""

    device: VirtualDevice
    soap: SoapRequest
    local_ip: str
    local_port: int
    now: float
    path: str
    remote_ip: str = ""  # the client's address (push consumers are checked against it)
    secure: bool = False  # the request came over HTTPS: the addresses answered are https

    @property
    def op(self) -> etree._Element:
        return self.soap.operation

    def arg(self, *path: str) -> str | None:
        return child_text(self.op, *path)

    def host(self) -> str:
        """The host the client can reach us by: ``[server] advertise_host`` when set (behind
        NAT the socket's address is not reachable from the VMS), else the address the
        request arrived on (as ONVIF Core asks: the address the client used)."""
        return url_host(self.device.advertise_host or self.local_ip)

    def http_url(self, path: str) -> str:
        """A URL of this device on the connection the request came by (https over TLS)."""
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host()}:{self.local_port}{path}"

    def rtsp_url(self, profile: Profile, *, tls: bool | None = None) -> str:
        """The stream URI of ``profile``: rtsps:// when ``tls`` (None: when ``[server]
        prefer_rtsps`` says so), else rtsp://. A fault when RTSPS is asked for but off."""
        device = self.device
        if tls is None:
            tls = device.prefer_rtsps and device.rtsps_port is not None
        if tls:
            if device.rtsps_port is None:
                raise invalid_arg("ter:InvalidStreamSetup", "RTSPS is not enabled on this device")
            return f"rtsps://{self.host()}:{device.rtsps_port}{profile.stream.path}"
        if device.rtsp_url_for is not None:
            return device.rtsp_url_for(profile.stream.name)
        return f"rtsp://{self.host()}:{device.rtsp_port}{profile.stream.path}"


Handler = Callable[[Call], Awaitable[Xml]]


def empty_answer(response: str) -> Handler:
    """A getter whose true answer is the empty list: something the gateway does not serve
    (relays, certificates, audio back-channel, RTSP metadata stream). A profile the request
    names must still exist."""

    async def answer(call: Call) -> Xml:
        if call.arg("ProfileToken"):
            call.device.profile(call.arg("ProfileToken"))
        return el(response)

    return answer


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def iso_time(ts: float) -> str:
    """Unix seconds as xs:dateTime in UTC with Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SERVICE_PATHS = {
    "device": "/onvif/device_service",
    "media": "/onvif/media_service",
    "media2": "/onvif/media2_service",
    "events": "/onvif/events_service",
    "ptz": "/onvif/ptz_service",
    "imaging": "/onvif/imaging_service",
}
