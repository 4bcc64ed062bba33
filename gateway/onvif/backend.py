"""What the ONVIF side needs from the rest of the gateway, one :class:`CameraBackend` per camera.

:class:`gateway.onvif.service.RuntimeCamera` implements :class:`CameraBackend` over the
running gateway (a :class:`~gateway.view.GatewayView`) and the fleet inventory; the ONVIF
services know nothing else. :class:`PtzBackend` and :class:`ImagingBackend` are implemented by
the forwarders of :mod:`gateway.devices.onvif_forward` (to the camera's own services) and by
the simulator; :class:`MotionSource` by the camera event clients
(:mod:`gateway.devices.events`), whose :class:`MotionEvent` it hands on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lxml import etree

from gateway.config import CameraConfig
from gateway.devices.events import MotionEvent
from gateway.devices.onvif_forward import PtzSetup
from gateway.onvif.xml import Xml

# Namespace of the virtual devices' urn:uuid (uuid5), fixed forever so UUIDs survive restarts.
DEVICE_UUID_NAMESPACE = uuid.UUID("6f1d7f4e-2b8a-5c1e-9a53-0c4e4a7d2b10")

VENDOR_NAMES = {"hikvision": "HIKVISION", "dahua": "Dahua", "generic": "Generic"}


@dataclass(frozen=True)
class DeviceIdentity:
    """The real camera as inventoried (or configured)."""

    manufacturer: str
    model: str
    firmware: str
    serial: str = ""
    hardware_id: str = ""
    mac: str = ""


@dataclass(frozen=True)
class AudioInfo:
    codec: str  # ONVIF encoding name: "G711" | "G726" | "AAC"
    sample_rate: int  # Hz
    bitrate_kbps: int = 64
    channels: int = 1


@dataclass(frozen=True)
class StreamInfo:
    """One stream as ingested (measured, not configured)."""

    name: str  # "main" | "sub"
    path: str  # RTSP path on the gateway: "/<camera>/<stream>"
    codec: str  # "H264" | "H265"
    width: int
    height: int
    fps: float
    bitrate_kbps: int
    gop: int  # frames between keyframes
    profile: str  # H.264 "Baseline" | "Main" | "High"; H.265 "Main" | "Main10"
    audio: AudioInfo | None = None


class MotionSource(Protocol):
    """Motion of one camera; listeners are called on the event loop for every change."""

    @property
    def state(self) -> bool | None: ...

    def add_listener(self, listener: Callable[[MotionEvent], None]) -> Callable[[], None]:
        """Register ``listener``; returns the function that removes it."""
        ...


class PtzBackend(Protocol):
    presets_allowed: bool

    async def setup(self) -> PtzSetup:
        """The camera's PTZ node/configuration (cached by the implementation)."""
        ...

    async def call(self, operation: etree._Element) -> Xml:
        """Perform a PTZ (ver20) operation; returns the response element as markup.

        Raises :class:`gateway.onvif.xml.SoapFault` for faults to pass on to the client.
        ``ProfileToken`` in ``operation`` is the virtual device's; the implementation maps it.
        """
        ...


class ImagingBackend(Protocol):
    async def call(self, operation: etree._Element) -> Xml:
        """Perform an Imaging (ver20) operation; returns the response element as markup.

        Raises :class:`gateway.onvif.xml.SoapFault` for faults to pass on to the client.
        ``VideoSourceToken`` in ``operation`` is the virtual device's; the implementation
        maps it to the camera's own.
        """
        ...


class CameraBackend(Protocol):
    """One camera as the ONVIF services see it."""

    def identity(self) -> DeviceIdentity: ...

    def streams(self) -> Sequence[StreamInfo]:
        """Current stream parameters as ingested ("main" first)."""
        ...

    async def snapshot(self, stream: str) -> bytes:
        """A JPEG of the latest keyframe of ``stream``; raises ``LookupError`` if none yet."""
        ...

    async def reconnect(self) -> None:
        """Reconnect the camera's upstream streams (what SystemReboot maps to)."""
        ...

    def has_keyframe(self, stream: str) -> bool:
        """Whether ``stream`` is live with a keyframe cached (a joining client starts there)."""
        ...

    @property
    def ptz(self) -> PtzBackend | None: ...

    @property
    def imaging(self) -> ImagingBackend | None:
        """The camera's ONVIF Imaging, once found; None before and for cameras without."""
        ...

    @property
    def motion(self) -> MotionSource | None: ...


def identity_from_config(camera: CameraConfig) -> DeviceIdentity:
    """The identity a camera has before (or without) an inventory: from ``[[camera]]``."""
    extra = camera.extra
    return DeviceIdentity(
        manufacturer=VENDOR_NAMES.get(camera.vendor, camera.vendor),
        model=str(extra.get("model", "")) or "unknown",
        firmware=str(extra.get("firmware", "")) or "unknown",
        serial=str(extra.get("serial", "")),
        hardware_id=str(extra.get("model", "")),
        mac=str(extra.get("mac", "")),
    )


def device_uuid(identity: DeviceIdentity, *, host: str, name: str) -> str:
    """The stable ``urn:uuid:`` of a virtual device: from the real camera's serial, else its
    MAC, else its host and name (all of which survive restarts)."""
    if identity.serial:
        key = f"serial:{identity.manufacturer}:{identity.serial}"
    elif identity.mac:
        key = f"mac:{identity.mac.lower().replace('-', ':')}"
    else:
        key = f"host:{host}/{name}"
    return f"urn:uuid:{uuid.uuid5(DEVICE_UUID_NAMESPACE, key)}"
