"""A simulated camera's own ONVIF services: device, media, media2, events, PTZ, imaging.

The same SOAP stack and services as the gateway's virtual devices (gateway.onvif), fed by a
backend over :class:`~gateway.sim.device.SimDevice`: the simulated vendor identity, the
camera's encoder settings, periodic motion (``motion_interval``), for PTZ models a
mechanical PTZ whose position lives in the device state (so every face of the camera agrees),
and an imaging block (brightness, IR cut filter, focus) in ``device.settings["imaging"]``.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from aiohttp import web
from lxml import etree

from gateway.config import CameraConfig
from gateway.config_reader import Secret
from gateway.devices.events import MotionEvent
from gateway.devices.onvif_forward import PtzCapabilities, PtzSetup
from gateway.onvif.backend import VENDOR_NAMES, DeviceIdentity, StreamInfo
from gateway.onvif.config import OnvifSettings
from gateway.onvif.core import SERVICE_PATHS, CameraSlot, VirtualDevice, iso_time, url_host
from gateway.onvif.server import install as install_device
from gateway.onvif.xml import NS, SoapFault, Xml, child, child_text, el, invalid_arg, text
from gateway.sim.device import SimDevice

TT = NS["tt"]
SPACE = "http://www.onvif.org/ver10/tptz"
ABS_PT = f"{SPACE}/PanTiltSpaces/PositionGenericSpace"
ABS_Z = f"{SPACE}/ZoomSpaces/PositionGenericSpace"
REL_PT = f"{SPACE}/PanTiltSpaces/TranslationGenericSpace"
REL_Z = f"{SPACE}/ZoomSpaces/TranslationGenericSpace"
CONT_PT = f"{SPACE}/PanTiltSpaces/VelocityGenericSpace"
CONT_Z = f"{SPACE}/ZoomSpaces/VelocityGenericSpace"
SPEED_PT = f"{SPACE}/PanTiltSpaces/GenericSpeedSpace"
SPEED_Z = f"{SPACE}/ZoomSpaces/ZoomGenericSpeedSpace"
FOV_PT = f"{SPACE}/PanTiltSpaces/TranslationSpaceFov"
NODE_TOKEN = "PTZNODETOKEN"
CONFIG_TOKEN = "PTZToken"
MAX_PRESETS = 255
# Full-speed continuous motion crosses the generic space (-1..1) in this many seconds.
SECONDS_ACROSS = 4.0


def default_streams(device: SimDevice) -> list[StreamInfo]:
    """The simulated model's encoder settings; ``device.settings["onvif_streams"]`` (a list
    of StreamInfo keyword dicts) overrides them, e.g. to match the clips actually served."""
    configured = device.settings.get("onvif_streams")
    if configured:
        return [StreamInfo(**item) for item in configured]
    main_profile = "Main" if device.video_codec == "H265" else "High"
    return [
        StreamInfo("main", "/main", device.video_codec, 1920, 1080, 25.0, 4096, 50, main_profile),
        StreamInfo("sub", "/sub", "H264", 640, 360, 15.0, 512, 30, "Main"),
    ]


def encode_jpeg(width: int = 320, height: int = 180, seed: int = 0) -> bytes:
    """A real JPEG (a colour gradient) encoded with PyAV's MJPEG encoder."""
    import av
    import numpy as np

    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [
            (xs * 255 // max(1, width - 1)),
            (ys * 255 // max(1, height - 1)),
            np.full_like(xs, seed % 256),
        ],
        axis=-1,
    ).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    packets = codec.encode(frame) + codec.encode(None)
    buf = io.BytesIO()
    for packet in packets:
        buf.write(bytes(packet))
    return buf.getvalue()


class SimMotion:
    """Motion that starts every ``motion_interval`` seconds and lasts half of it."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self._state: bool | None = False
        self._listeners: list[Callable[[MotionEvent], None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> bool | None:
        return self._state

    def add_listener(self, listener: Callable[[MotionEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def set(self, active: bool) -> None:
        if active == self._state:
            return
        self._state = active
        event = MotionEvent(active, time.time())
        for listener in list(self._listeners):
            listener(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            interval = self.device.motion_interval
            if interval <= 0:
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(interval / 2)
            self.set(not self._state)


def dispatch(face: object, op: etree._Element) -> Xml:
    """Answer ``op`` with ``face``'s ``_op_<Name>`` method (the simulated camera's logic)."""
    name = etree.QName(op).localname
    handler = getattr(face, f"_op_{name}", None)
    if handler is None:
        raise SoapFault("Receiver", ("ter:ActionNotSupported",), f"{name} not supported")
    result: Xml = handler(op)
    return result


class SimPtz:
    """A mechanical PTZ head over ``device.ptz_position`` / ``device.presets``."""

    presets_allowed = True

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self._move: asyncio.Task[None] | None = None
        self._setup = PtzSetup(
            NODE_TOKEN,
            CONFIG_TOKEN,
            etree.fromstring(self._configuration("tptz:PTZConfiguration", declare=True)),
            # The simulated head reports where it is and whether it moves (GetStatus).
            PtzCapabilities(move_status=True, status_position=True),
        )

    async def setup(self) -> PtzSetup:
        return self._setup

    # ------------------------------------------------------------ XML pieces

    def _configuration(self, tag: str, declare: bool = False) -> Xml:
        attrs = {"token": CONFIG_TOKEN}
        if declare:
            attrs.update({"xmlns:tptz": NS["tptz"], "xmlns:tt": TT})
        return el(
            tag,
            el("tt:Name", "PTZ"),
            el("tt:UseCount", "2"),
            el("tt:NodeToken", NODE_TOKEN),
            el("tt:DefaultAbsolutePantTiltPositionSpace", ABS_PT),
            el("tt:DefaultAbsoluteZoomPositionSpace", ABS_Z),
            el("tt:DefaultRelativePanTiltTranslationSpace", REL_PT),
            el("tt:DefaultRelativeZoomTranslationSpace", REL_Z),
            el("tt:DefaultContinuousPanTiltVelocitySpace", CONT_PT),
            el("tt:DefaultContinuousZoomVelocitySpace", CONT_Z),
            el(
                "tt:DefaultPTZSpeed",
                el("tt:PanTilt", attrs={"x": "1", "y": "1", "space": SPEED_PT}),
                el("tt:Zoom", attrs={"x": "1", "space": SPEED_Z}),
            ),
            el("tt:DefaultPTZTimeout", "PT5S"),
            el(
                "tt:PanTiltLimits",
                el(
                    "tt:Range",
                    el("tt:URI", ABS_PT),
                    el("tt:XRange", el("tt:Min", "-1"), el("tt:Max", "1")),
                    el("tt:YRange", el("tt:Min", "-1"), el("tt:Max", "1")),
                ),
            ),
            el(
                "tt:ZoomLimits",
                el(
                    "tt:Range",
                    el("tt:URI", ABS_Z),
                    el("tt:XRange", el("tt:Min", "0"), el("tt:Max", "1")),
                ),
            ),
            attrs=attrs,
        )

    @staticmethod
    def _space2(tag: str, uri: str, lo: float = -1, hi: float = 1) -> Xml:
        return el(
            tag,
            el("tt:URI", uri),
            el("tt:XRange", el("tt:Min", text(lo)), el("tt:Max", text(hi))),
            el("tt:YRange", el("tt:Min", text(lo)), el("tt:Max", text(hi))),
        )

    @staticmethod
    def _space1(tag: str, uri: str, lo: float = -1, hi: float = 1) -> Xml:
        return el(
            tag, el("tt:URI", uri), el("tt:XRange", el("tt:Min", text(lo)), el("tt:Max", text(hi)))
        )

    def _spaces(self, tag: str) -> Xml:
        return el(
            tag,
            self._space2("tt:AbsolutePanTiltPositionSpace", ABS_PT),
            self._space1("tt:AbsoluteZoomPositionSpace", ABS_Z, 0, 1),
            self._space2("tt:RelativePanTiltTranslationSpace", REL_PT),
            self._space2("tt:RelativePanTiltTranslationSpace", FOV_PT),
            self._space1("tt:RelativeZoomTranslationSpace", REL_Z),
            self._space2("tt:ContinuousPanTiltVelocitySpace", CONT_PT),
            self._space1("tt:ContinuousZoomVelocitySpace", CONT_Z),
            el(
                "tt:PanTiltSpeedSpace",
                el("tt:URI", SPEED_PT),
                el("tt:XRange", el("tt:Min", "0"), el("tt:Max", "1")),
            ),
            el(
                "tt:ZoomSpeedSpace",
                el("tt:URI", SPEED_Z),
                el("tt:XRange", el("tt:Min", "0"), el("tt:Max", "1")),
            ),
        )

    def _node(self, tag: str) -> Xml:
        return el(
            tag,
            el("tt:Name", "PTZ"),
            self._spaces("tt:SupportedPTZSpaces"),
            el("tt:MaximumNumberOfPresets", str(MAX_PRESETS)),
            el("tt:HomeSupported", "true"),
            attrs={"token": NODE_TOKEN, "FixedHomePosition": "false"},
        )

    def _position(self, tag: str, pos: Sequence[float]) -> Xml:
        return el(
            tag,
            el("tt:PanTilt", attrs={"x": text(pos[0]), "y": text(pos[1]), "space": ABS_PT}),
            el("tt:Zoom", attrs={"x": text(pos[2]), "space": ABS_Z}),
        )

    # ------------------------------------------------------------ motion

    @staticmethod
    def _vector(node: etree._Element | None) -> tuple[float | None, float | None, float | None]:
        pan_tilt = child(node, "PanTilt")
        zoom = child(node, "Zoom")
        try:
            x = float(pan_tilt.get("x", "0")) if pan_tilt is not None else None
            y = float(pan_tilt.get("y", "0")) if pan_tilt is not None else None
            z = float(zoom.get("x", "0")) if zoom is not None else None
        except ValueError:
            raise invalid_arg("ter:InvalidPosition", "coordinates must be numbers") from None
        return x, y, z

    def _clamp(self, pos: list[float]) -> list[float]:
        return [
            max(-1.0, min(1.0, pos[0])),
            max(-1.0, min(1.0, pos[1])),
            max(0.0, min(1.0, pos[2])),
        ]

    def _halt(self) -> None:
        if self._move is not None:
            self._move.cancel()
            self._move = None
        self.device.ptz_moving = False

    async def _continuous(self, velocity: tuple[float, float, float], timeout: float) -> None:
        self.device.ptz_moving = True
        step = 0.05
        elapsed = 0.0
        try:
            while elapsed < timeout:
                await asyncio.sleep(step)
                elapsed += step
                pos = self.device.ptz_position
                scale = step * 2.0 / SECONDS_ACROSS
                self.device.ptz_position = self._clamp(
                    [
                        pos[0] + velocity[0] * scale,
                        pos[1] + velocity[1] * scale,
                        pos[2] + velocity[2] * scale / 2,
                    ]
                )
        finally:
            self.device.ptz_moving = False

    async def close(self) -> None:
        self._halt()

    # ------------------------------------------------------------ operations

    async def call(self, op: etree._Element) -> Xml:
        return dispatch(self, op)

    def _op_GetNodes(self, op: etree._Element) -> Xml:
        return el("tptz:GetNodesResponse", self._node("tptz:PTZNode"))

    def _op_GetNode(self, op: etree._Element) -> Xml:
        if child_text(op, "NodeToken") != NODE_TOKEN:
            raise invalid_arg("ter:NoEntity", "no such node")
        return el("tptz:GetNodeResponse", self._node("tptz:PTZNode"))

    def _op_GetConfigurations(self, op: etree._Element) -> Xml:
        return el("tptz:GetConfigurationsResponse", self._configuration("tptz:PTZConfiguration"))

    def _op_GetConfiguration(self, op: etree._Element) -> Xml:
        if child_text(op, "PTZConfigurationToken") != CONFIG_TOKEN:
            raise invalid_arg("ter:NoConfig", "no such configuration")
        return el("tptz:GetConfigurationResponse", self._configuration("tptz:PTZConfiguration"))

    def _op_GetConfigurationOptions(self, op: etree._Element) -> Xml:
        if child_text(op, "ConfigurationToken") != CONFIG_TOKEN:
            raise invalid_arg("ter:NoConfig", "no such configuration")
        return el(
            "tptz:GetConfigurationOptionsResponse",
            el(
                "tptz:PTZConfigurationOptions",
                self._spaces("tt:Spaces"),
                el("tt:PTZTimeout", el("tt:Min", "PT1S"), el("tt:Max", "PT60S")),
            ),
        )

    def _op_GetStatus(self, op: etree._Element) -> Xml:
        state = "MOVING" if self.device.ptz_moving else "IDLE"
        return el(
            "tptz:GetStatusResponse",
            el(
                "tptz:PTZStatus",
                self._position("tt:Position", self.device.ptz_position),
                el("tt:MoveStatus", el("tt:PanTilt", state), el("tt:Zoom", state)),
                el("tt:UtcTime", iso_time(time.time())),
            ),
        )

    def _op_ContinuousMove(self, op: etree._Element) -> Xml:
        x, y, z = self._vector(child(op, "Velocity"))
        timeout_text = child_text(op, "Timeout")
        timeout = 5.0
        if timeout_text:
            from gateway.onvif.events import parse_duration

            try:
                timeout = min(60.0, parse_duration(timeout_text))
            except ValueError:
                raise invalid_arg("ter:TimeoutNotSupported", f"Timeout {timeout_text!r}") from None
        self._halt()
        self._move = asyncio.create_task(self._continuous((x or 0.0, y or 0.0, z or 0.0), timeout))
        self.device.ptz_moving = True
        return el("tptz:ContinuousMoveResponse")

    def _op_RelativeMove(self, op: etree._Element) -> Xml:
        x, y, z = self._vector(child(op, "Translation"))
        self._halt()
        pos = self.device.ptz_position
        self.device.ptz_position = self._clamp(
            [pos[0] + (x or 0), pos[1] + (y or 0), pos[2] + (z or 0)]
        )
        return el("tptz:RelativeMoveResponse")

    def _op_AbsoluteMove(self, op: etree._Element) -> Xml:
        x, y, z = self._vector(child(op, "Position"))
        self._halt()
        pos = self.device.ptz_position
        target = [
            pos[0] if x is None else x,
            pos[1] if y is None else y,
            pos[2] if z is None else z,
        ]
        if target != self._clamp(target):
            raise invalid_arg("ter:InvalidPosition", "position outside the generic space")
        self.device.ptz_position = target
        return el("tptz:AbsoluteMoveResponse")

    def _op_Stop(self, op: etree._Element) -> Xml:
        self._halt()
        return el("tptz:StopResponse")

    def _op_GetPresets(self, op: etree._Element) -> Xml:
        return el(
            "tptz:GetPresetsResponse",
            (
                el(
                    "tptz:Preset",
                    el("tt:Name", name),
                    self._position("tt:PTZPosition", pos),
                    attrs={"token": token},
                )
                for token, (name, pos) in self.device.presets.items()
            ),
        )

    def _op_GotoPreset(self, op: etree._Element) -> Xml:
        token = child_text(op, "PresetToken") or ""
        if token not in self.device.presets:
            raise invalid_arg("ter:NoToken", f"no preset {token!r}")
        self._halt()
        self.device.ptz_position = list(self.device.presets[token][1])
        return el("tptz:GotoPresetResponse")

    def _op_SetPreset(self, op: etree._Element) -> Xml:
        token = child_text(op, "PresetToken") or ""
        name = child_text(op, "PresetName") or ""
        if token and token not in self.device.presets:
            raise invalid_arg("ter:NoToken", f"no preset {token!r}")
        if not token:
            if len(self.device.presets) >= MAX_PRESETS:
                raise SoapFault(
                    "Receiver", ("ter:Action", "ter:TooManyPresets"), "preset memory full"
                )
            token = str(
                next(i for i in range(1, MAX_PRESETS + 2) if str(i) not in self.device.presets)
            )
        self.device.presets[token] = (name or f"Preset {token}", list(self.device.ptz_position))
        return el("tptz:SetPresetResponse", el("tptz:PresetToken", token))

    def _op_RemovePreset(self, op: etree._Element) -> Xml:
        token = child_text(op, "PresetToken") or ""
        if self.device.presets.pop(token, None) is None:
            raise invalid_arg("ter:NoToken", f"no preset {token!r}")
        return el("tptz:RemovePresetResponse")

    def _op_GotoHomePosition(self, op: etree._Element) -> Xml:
        self._halt()
        self.device.ptz_position = list(self.device.settings.get("ptz_home", [0.0, 0.0, 0.0]))
        return el("tptz:GotoHomePositionResponse")

    def _op_SetHomePosition(self, op: etree._Element) -> Xml:
        self.device.settings["ptz_home"] = list(self.device.ptz_position)
        return el("tptz:SetHomePositionResponse")


IMAGING_DEFAULTS: dict[str, Any] = {
    "Brightness": 50.0,
    "ColorSaturation": 50.0,
    "Contrast": 50.0,
    "Sharpness": 50.0,
    "IrCutFilter": "AUTO",
    "AutoFocusMode": "AUTO",
    "FocusPosition": 0.5,
}
LEVELS = ("Brightness", "ColorSaturation", "Contrast", "Sharpness")
IR_CUT_MODES = ("ON", "OFF", "AUTO")


class SimImaging:
    """The camera's imaging settings and focus lens over ``device.settings["imaging"]``."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.focus_moving = False

    @property
    def state(self) -> dict[str, Any]:
        stored: dict[str, Any] = self.device.settings.setdefault("imaging", {})
        for key, value in IMAGING_DEFAULTS.items():
            stored.setdefault(key, value)
        return stored

    async def call(self, op: etree._Element) -> Xml:
        return dispatch(self, op)

    def _op_GetImagingSettings(self, op: etree._Element) -> Xml:
        st = self.state
        return el(
            "timg:GetImagingSettingsResponse",
            el(
                "timg:ImagingSettings",
                (el(f"tt:{k}", text(float(st[k]))) for k in LEVELS[:3]),
                el("tt:Focus", el("tt:AutoFocusMode", st["AutoFocusMode"])),
                el("tt:IrCutFilter", st["IrCutFilter"]),
                el("tt:Sharpness", text(float(st["Sharpness"]))),
            ),
        )

    def _op_SetImagingSettings(self, op: etree._Element) -> Xml:
        settings = child(op, "ImagingSettings")
        changes: dict[str, Any] = {}
        for key in LEVELS:
            value = child_text(settings, key)
            if value is None:
                continue
            try:
                level = float(value)
            except ValueError:
                raise invalid_arg("ter:SettingsInvalid", f"{key} {value!r}") from None
            if not 0.0 <= level <= 100.0:
                raise invalid_arg("ter:SettingsInvalid", f"{key} {value} outside 0..100")
            changes[key] = level
        ir_cut = child_text(settings, "IrCutFilter")
        if ir_cut is not None:
            if ir_cut not in IR_CUT_MODES:
                raise invalid_arg("ter:SettingsInvalid", f"IrCutFilter {ir_cut!r}")
            changes["IrCutFilter"] = ir_cut
        focus_mode = child_text(settings, "Focus", "AutoFocusMode")
        if focus_mode is not None:
            if focus_mode not in ("AUTO", "MANUAL"):
                raise invalid_arg("ter:SettingsInvalid", f"AutoFocusMode {focus_mode!r}")
            changes["AutoFocusMode"] = focus_mode
        self.state.update(changes)  # all or nothing: validated first
        return el("timg:SetImagingSettingsResponse")

    @staticmethod
    def _range(tag: str, low: float, high: float) -> Xml:
        return el(tag, el("tt:Min", text(low)), el("tt:Max", text(high)))

    def _op_GetOptions(self, op: etree._Element) -> Xml:
        return el(
            "timg:GetOptionsResponse",
            el(
                "timg:ImagingOptions",
                (self._range(f"tt:{k}", 0, 100) for k in LEVELS[:3]),
                el(
                    "tt:Focus",
                    el("tt:AutoFocusModes", "AUTO"),
                    el("tt:AutoFocusModes", "MANUAL"),
                ),
                (el("tt:IrCutFilterModes", mode) for mode in IR_CUT_MODES),
                self._range("tt:Sharpness", 0, 100),
            ),
        )

    def _op_GetMoveOptions(self, op: etree._Element) -> Xml:
        return el(
            "timg:GetMoveOptionsResponse",
            el(
                "timg:MoveOptions",
                el("tt:Absolute", self._range("tt:Position", 0, 1)),
                el("tt:Relative", self._range("tt:Distance", -1, 1)),
                el("tt:Continuous", self._range("tt:Speed", -1, 1)),
            ),
        )

    def _op_Move(self, op: etree._Element) -> Xml:
        focus = child(op, "Focus")
        state = self.state
        position = float(state["FocusPosition"])
        try:
            if (value := child_text(focus, "Absolute", "Position")) is not None:
                position = float(value)
            elif (value := child_text(focus, "Relative", "Distance")) is not None:
                position += float(value)
            elif child(focus, "Continuous") is not None:
                self.focus_moving = True
                return el("timg:MoveResponse")
            else:
                raise invalid_arg("ter:InvalidMove", "Move without Absolute/Relative/Continuous")
        except ValueError:
            raise invalid_arg("ter:InvalidMove", "focus values must be numbers") from None
        state["FocusPosition"] = max(0.0, min(1.0, position))
        return el("timg:MoveResponse")

    def _op_Stop(self, op: etree._Element) -> Xml:
        self.focus_moving = False
        return el("timg:StopResponse")

    def _op_GetStatus(self, op: etree._Element) -> Xml:
        return el(
            "timg:GetStatusResponse",
            el(
                "timg:Status",
                el(
                    "tt:FocusStatus20",
                    el("tt:Position", text(float(self.state["FocusPosition"]))),
                    el("tt:MoveStatus", "MOVING" if self.focus_moving else "IDLE"),
                ),
            ),
        )


class SimBackend:
    """:class:`~gateway.onvif.backend.CameraBackend` of a simulated camera."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self._motion = SimMotion(device)
        self._ptz = SimPtz(device) if device.ptz else None
        self._imaging = SimImaging(device)
        self._jpegs: dict[str, bytes] = {}

    def identity(self) -> DeviceIdentity:
        d = self.device
        firmware = (
            f"{d.firmware} {d.build}"
            if d.vendor == "hikvision"
            else f"{d.firmware},build:{d.build}"
        )
        return DeviceIdentity(
            VENDOR_NAMES.get(d.vendor, d.vendor), d.model, firmware, d.serial, d.model, d.mac
        )

    def streams(self) -> Sequence[StreamInfo]:
        return default_streams(self.device)

    async def snapshot(self, stream: str) -> bytes:
        if stream not in self._jpegs:
            info = next(s for s in self.streams() if s.name == stream)
            width, height = min(info.width, 640), min(info.height, 360)
            self._jpegs[stream] = await asyncio.to_thread(encode_jpeg, width, height, len(stream))
        return self._jpegs[stream]

    async def reconnect(self) -> None:
        # SystemReboot on a simulated camera: count it so tests can see it happened.
        self.device.settings["onvif_reboots"] = (
            int(self.device.settings.get("onvif_reboots", 0)) + 1
        )

    def has_keyframe(self, stream: str) -> bool:
        # The simulated encoder serves its clips from a keyframe on every connection.
        return any(s.name == stream for s in self.streams())

    @property
    def ptz(self) -> SimPtz | None:
        return self._ptz

    @property
    def imaging(self) -> SimImaging:
        return self._imaging

    @property
    def motion(self) -> SimMotion:
        return self._motion


class _DiscoveryView:
    """A simulated camera's device as WS-Discovery announces it: the HTTP port is read when
    a probe arrives, because the camera binds it (port 0: any free) after the app started."""

    def __init__(self, virtual: VirtualDevice) -> None:
        self.virtual = virtual
        self.uuid = virtual.uuid
        self.name = virtual.name
        self.identity = virtual.identity
        self.location = virtual.location
        self.has_ptz = virtual.has_ptz
        self.advertise_host = virtual.advertise_host

    @property
    def port(self) -> int:
        backend = self.virtual.slots[0].backend
        assert isinstance(backend, SimBackend)
        return backend.device.http_port

    def xaddrs(self, host: str) -> tuple[str, ...]:
        """The camera's device service (plain HTTP: simulated cameras serve no TLS)."""
        return (f"http://{url_host(host)}:{self.port}{SERVICE_PATHS['device']}",)


def install(
    app: web.Application,
    device: SimDevice,
    *,
    rtsp_url_for: Callable[[str], str],
) -> VirtualDevice:
    """Add the camera's ONVIF services (/onvif/device_service, media_service, media2_service,
    events_service, ptz_service) to ``app``; credentials are ``device.username/password``.
    With ``device.settings["onvif_discovery"]`` true the camera also answers WS-Discovery
    probes (Hello/Bye included) on ``device.host``, as real cameras do.
    ``device.settings["clock_offset"]`` (seconds) sets the camera's clock that far from
    ours: GetSystemDateAndTime tells it, and WS-Security tokens are judged by it, as a
    camera whose clock drifted does."""
    backend = SimBackend(device)
    clock_offset = float(device.settings.get("clock_offset", 0.0))
    camera = CameraConfig(
        name=device.name,
        vendor=device.vendor,
        host=device.host,
        username=device.username,
        password=Secret(device.password),
        http_port=device.http_port,
        ptz="enabled" if device.ptz else "disabled",
        imaging="enabled",
    )
    virtual = VirtualDevice(
        name=device.name,
        slots=[CameraSlot(camera, backend)],
        nvr=False,
        port=device.http_port,
        rtsp_port=device.rtsp_port,
        username=device.username,
        password=device.password,
        settings=OnvifSettings(auth_window=300.0, discovery=False),
        uuid=f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, device.serial)}",
        rtsp_url_for=rtsp_url_for,
        clock=lambda: time.time() + clock_offset,
    )
    install_device(app, virtual)

    async def lifecycle(app: web.Application) -> Any:
        backend.motion.start()
        responder = None
        if device.settings.get("onvif_discovery"):
            from gateway.onvif.discovery import DiscoveryResponder

            # Like real cameras: answer WS-Discovery probes on the camera's own address.
            responder = await DiscoveryResponder.start(
                device.host,
                [_DiscoveryView(virtual)],
                int(device.settings.get("onvif_discovery_port", 3702)),
            )
        yield
        if responder is not None:
            await responder.close()
        await backend.motion.stop()
        if backend.ptz is not None:
            await backend.ptz.close()

    app.cleanup_ctx.append(lifecycle)
    return virtual
