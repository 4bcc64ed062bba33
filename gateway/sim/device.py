"""State of one simulated camera, shared by every protocol face the simulator gives it.

A simulated camera is one :class:`SimDevice` plus servers: RTSP (gateway.sim.camera), and
one aiohttp HTTP application on ``http_port`` to which each vendor/protocol module adds its
routes through an ``install(app, device)`` function:

- ``gateway.sim.hikvision``: ISAPI (deviceInfo, EZVIZ, UPnP, DDNS, time, ...)
- ``gateway.sim.dahua``: CGI (magicBox, configManager, eventManager) and JSON-RPC
- ``gateway.sim.onvif``: the camera's own ONVIF device/media/events/PTZ services
- ``gateway.sim.phonehome``: the camera's attempts to reach its vendor's cloud

Everything mutable lives here so the faces agree (a PTZ move seen through ONVIF is the same
position ISAPI would report; a setting changed through CGI shows in the next audit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("unauthorized", "garbage", "html", "hang", "reset")
# How a camera's RTSP stream may depart from what the gateway's native client relays, as
# some firmware does (gateway.sim.camera; gateway.media.auto_ingest falls back to PyAV):
# "interleaved-sdp": H.264 described as packetization-mode=2 (the packets stay mode 1);
# "private-nal": every video frame carries one more RTP packet, a NAL unit of a type H.264
# leaves unspecified (30) holding vendor data, which FFmpeg skips and the native path
# refuses with the frame.
RTSP_QUIRKS = ("interleaved-sdp", "private-nal")
VARIANTS = {
    "isapi_namespace": ("hikvision", "isapi"),
    "version_form": ("build", "build-date"),
    "event_form": ("length", "boundary"),
}


@dataclass
class SimDevice:
    name: str
    vendor: str  # "hikvision" | "dahua"
    username: str
    password: str
    host: str = "127.0.0.1"
    rtsp_port: int = 554
    http_port: int = 80
    model: str = ""
    firmware: str = ""  # vendor's own version string, e.g. "V5.5.800" / "2.800.0000016.0.R"
    build: str = ""  # Hikvision "build 210628"; Dahua "2020-06-05"
    serial: str = ""
    mac: str = ""
    channels: int = 1
    ptz: bool = False
    video_codec: str = "H264"  # main stream codec: "H264" | "H265"
    # Vendor settings as the vendor module keeps them (ISAPI XML documents by path,
    # Dahua config tables by name); created with factory defaults by the vendor module.
    settings: dict[str, Any] = field(default_factory=dict)
    # Active faults on the HTTP faces: see FAULTS. Tests flip these at run time.
    faults: set[str] = field(default_factory=set)
    # RTSP stream quirks: see RTSP_QUIRKS. Read when the camera starts.
    rtsp_quirks: frozenset[str] = frozenset()
    # PTZ position in ONVIF generic spaces (pan, tilt in -1..1; zoom 0..1) and presets.
    ptz_position: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    ptz_moving: bool = False
    presets: dict[str, tuple[str, list[float]]] = field(default_factory=dict)
    motion_interval: float = 0.0  # seconds between simulated motion events; 0 = never
    phone_home: bool = False
    # Dahua: older firmware answers the HTTP CGI API; newer firmware only JSON-RPC (False).
    cgi_available: bool = True
    # Firmware variants (what differs between models and generations; see VARIANTS):
    # ISAPI namespace: "hikvision" (www.hikvision.com/ver20) or "isapi" (www.isapi.org/ver20,
    # newer NVRs); mixed_namespaces puts some sub-documents in the other one.
    isapi_namespace: str = "hikvision"
    mixed_namespaces: bool = False
    # What this model lacks: ISAPI paths (403 notSupport), "path#element" (an element absent
    # from a document), Dahua table names (Error Bad Request!) or Dahua keys ("NTP.Port").
    missing: set[str] = field(default_factory=set)
    # Dahua getSoftwareVersion form: "build" ("2.800.0000016.0.R,build:2020-06-05") or
    # "build-date" ("2.622.0000000.18.R, Build Date: 2019-03-29").
    version_form: str = "build"
    # Event stream parts: "length" (with Content-Length) or "boundary" (delimited only).
    event_form: str = "length"
    # Every accepted write as received (ISAPI: (path, body); Dahua CGI: (script, query);
    # RPC: ("configManager.setConfig", JSON body)), for tests of the bytes sent.
    writes: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.vendor}/{self.name}".encode()).hexdigest()
        if not self.serial:
            if self.vendor == "hikvision":
                self.serial = f"DS-SIM{digest[:6].upper()}20210628CCWR{int(digest[6:15], 16)}"
            else:
                self.serial = f"{digest[:15].upper()}"
        if not self.mac:
            octets = bytes.fromhex(digest[16:26])
            # Locally administered unicast MAC: never collides with a real vendor OUI.
            self.mac = ":".join(f"{b:02x}" for b in (0x02, *octets))
        if not self.model:
            self.model = "DS-2CD2142FWD-I" if self.vendor == "hikvision" else "IPC-HFW2431S-S-S2"
        if not self.firmware:
            self.firmware = "V5.5.800" if self.vendor == "hikvision" else "2.800.0000016.0.R"
        if not self.build:
            self.build = "build 210628" if self.vendor == "hikvision" else "2020-06-05"

    def rtsp_paths(self) -> dict[str, str]:
        """Stream key ("main"/"sub" per channel) for each path the vendor's firmware serves."""
        paths: dict[str, str] = {}
        for ch in range(1, self.channels + 1):
            for sub, key in ((0, "main"), (1, "sub")):
                stream = key if self.channels == 1 else f"{key}{ch}"
                if self.vendor == "hikvision":
                    paths[f"/Streaming/Channels/{ch}0{sub + 1}"] = stream
                    paths[f"/ISAPI/Streaming/channels/{ch}0{sub + 1}"] = stream
                else:
                    paths[f"/cam/realmonitor?channel={ch}&subtype={sub}"] = stream
        return paths

    def realm(self) -> str:
        """The Digest realm the vendor's firmware uses (tools key on it)."""
        if self.vendor == "hikvision":
            return f"IP Camera({self.serial[-5:]})"
        return f"Login to {self.serial}"
