"""Motion events of real cameras: the gateway's clients of the cameras' event interfaces.

Each :class:`CameraMotion` is a :class:`~gateway.onvif.backend.MotionSource` the virtual
devices' event services read (:class:`MotionEvent` for each change).

Three ways a camera reports motion, chosen by its vendor (:func:`motion_source_for`):

- Hikvision: ``GET /ISAPI/Event/notification/alertStream``, a never-ending multipart stream of
  ``EventNotificationAlert`` documents (``eventType`` VMD, ``eventState`` active/inactive).
  Firmware repeats "active" about once a second while motion lasts and does not always send
  "inactive", so motion also ends ``active_hold`` seconds after the last "active".
- Dahua: ``GET /cgi-bin/eventManager.cgi?action=attach&codes=[VideoMotion]``, a multipart
  stream of ``Code=VideoMotion;action=Start|Stop;index=N`` parts (N = channel - 1).
- generic: the camera's own ONVIF event service: CreatePullPointSubscription, then
  PullMessages in a loop (Renew when the subscription runs short), reading
  ``tns1:VideoSource/MotionAlarm`` (State) and ``tns1:RuleEngine/CellMotionDetector/Motion``
  (IsMotion).

The parsers are sans-IO (:class:`MultipartParser`, :func:`parse_hikvision_alert`,
:func:`parse_dahua_event`, :func:`parse_pull_messages`); every buffer is bounded. The asyncio
layer (:class:`CameraMotion`) talks to the camera through its
:class:`~gateway.devices.http.CameraHttp` (HTTP Digest) and, for ONVIF, the camera SOAP
client :class:`~gateway.devices.soap.CameraSoap` (WS-Security); it reconnects with capped
exponential backoff and jitter whenever the connection drops, and stops cleanly with
:meth:`CameraMotion.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from lxml import etree
from yarl import URL

from gateway.backoff import Backoff
from gateway.cancellation import cancel_and_wait, wait_for
from gateway.config import CameraConfig
from gateway.devices.errors import DeviceError
from gateway.devices.http import CameraHttp
from gateway.devices.soap import DEVICE_PATH, CameraSoap, CameraSoapError
from gateway.safexml import parse_xml
from gateway.soap import NS, SoapFault, child, child_text, children, el

log = logging.getLogger(__name__)

MAX_PART_BYTES = 64 * 1024  # one event part (headers and body); cameras send < 2 KiB

TEV = NS["tev"]
# WS-Addressing actions of the WS-BaseNotification subscription manager (Renew, Unsubscribe).
WSN_SUBSCRIPTION_MANAGER = "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager"
MOTION_TOPICS = {
    "VideoSource/MotionAlarm": "State",
    "RuleEngine/CellMotionDetector/Motion": "IsMotion",
}


@dataclass(frozen=True)
class MotionEvent:
    active: bool
    time: float  # Unix seconds


class MotionProtocolError(ValueError):
    """The camera's event stream or reply is unusable; the session is dropped and retried."""


# --------------------------------------------------------------------------- sans-IO parsers


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # lower-case names
    body: bytes


class MultipartParser:
    """Parts of a ``multipart/*`` event stream, fed in arbitrary chunks.

    A part ends at its Content-Length when given, else at the next boundary line. The buffer
    never holds more than ``max_part`` bytes: a camera sending an endless line or part gets
    :class:`MotionProtocolError`, not unbounded memory.
    """

    def __init__(self, boundary: str, *, max_part: int = MAX_PART_BYTES) -> None:
        if not boundary or len(boundary) > 200:
            raise MotionProtocolError(f"unusable multipart boundary {boundary[:40]!r}")
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.max_part = max_part
        self._buffer = bytearray()
        self._skipped = 0  # bytes seen since the last boundary without finding one

    def feed(self, data: bytes) -> list[Part]:
        self._buffer += data
        parts: list[Part] = []
        while True:
            part = self._next_part()
            if part is None:
                break
            parts.append(part)
        if len(self._buffer) > self.max_part:
            raise MotionProtocolError(
                f"event part larger than {self.max_part} bytes (or no boundary in it)"
            )
        return parts

    def _next_part(self) -> Part | None:
        buf = self._buffer
        start = buf.find(self.delimiter)
        if start < 0:
            # Keep only what could be the start of a delimiter split across chunks.
            keep = len(self.delimiter) - 1
            if len(buf) > keep:
                self._skipped += len(buf) - keep
                del buf[: len(buf) - keep]
            if self._skipped > self.max_part:
                raise MotionProtocolError(f"no multipart boundary in {self._skipped} bytes")
            return None
        self._skipped = 0
        if start:
            del buf[:start]
        head_end = buf.find(b"\r\n\r\n")
        sep = 4
        if head_end < 0:
            head_end = buf.find(b"\n\n")
            sep = 2
        if head_end < 0:
            return None
        header_lines = bytes(buf[len(self.delimiter) : head_end]).decode("latin-1").splitlines()
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        body_start = head_end + sep
        length_text = headers.get("content-length", "")
        if length_text.isdigit():
            length = int(length_text)
            if length > self.max_part:
                raise MotionProtocolError(f"event part of {length} bytes refused")
            if len(buf) < body_start + length:
                return None
            body = bytes(buf[body_start : body_start + length])
            del buf[: body_start + length]
        else:
            end = buf.find(self.delimiter, body_start)
            if end < 0:
                return None
            body = bytes(buf[body_start:end])
            del buf[:end]
        return Part(headers, body.strip(b"\r\n"))


def multipart_boundary(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type."""
    if not content_type.lower().startswith("multipart/"):
        raise MotionProtocolError(f"expected a multipart stream, got {content_type[:60]!r}")
    match = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type, re.IGNORECASE)
    if match is None:
        raise MotionProtocolError(f"multipart stream without boundary: {content_type[:80]!r}")
    # Some firmware announces the boundary with its leading dashes.
    return match.group(1).strip().removeprefix("--")


@dataclass(frozen=True)
class MotionChange:
    active: bool
    channel: int  # 1-based


def parse_hikvision_alert(body: bytes) -> MotionChange | None:
    """A VMD change from one EventNotificationAlert; None for other events (heartbeats)."""
    try:
        root = parse_xml(body, max_bytes=MAX_PART_BYTES)
    except ValueError as exc:
        raise MotionProtocolError(f"alert stream part: {exc}") from None
    if etree.QName(root).localname != "EventNotificationAlert":
        raise MotionProtocolError(f"alert stream part is a {etree.QName(root).localname}")
    if (child_text(root, "eventType") or "").strip() != "VMD":
        return None
    state = (child_text(root, "eventState") or "").strip().lower()
    if state not in ("active", "inactive"):
        raise MotionProtocolError(f"VMD alert with eventState {state[:20]!r}")
    channel_text = (
        child_text(root, "channelID") or child_text(root, "dynChannelID") or "1"
    ).strip()
    channel = int(channel_text) if channel_text.isdigit() else 1
    return MotionChange(state == "active", channel)


def parse_dahua_event(body: bytes) -> MotionChange | None:
    """A VideoMotion change from one attach-stream part; None for other codes, heartbeats."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text.startswith("Code="):
        return None  # "Heartbeat" and anything else without an event code
    # Later keys may carry JSON (data={...}); only the first three fields are needed.
    fields: dict[str, str] = {}
    for item in text.splitlines()[0].split(";", 3)[:3]:
        key, _, value = item.partition("=")
        fields[key.strip()] = value.strip()
    if fields.get("Code") != "VideoMotion":
        return None
    action = fields.get("action", "")
    if action not in ("Start", "Stop"):
        return None  # "Pulse" and other actions carry no state
    index = fields.get("index", "0")
    return MotionChange(action == "Start", (int(index) if index.isdigit() else 0) + 1)


def _iso_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class PullResult:
    motion: list[bool]  # motion states in the order received
    remaining: float | None  # seconds until the subscription terminates (camera's clock)


def parse_pull_messages(root: etree._Element) -> PullResult:
    """Motion states from a PullMessagesResponse (or CreatePullPointSubscriptionResponse)."""
    states: list[bool] = []
    for message in children(root, "NotificationMessage"):
        topic = (child_text(message, "Topic") or "").strip()
        path = "/".join(part.split(":", 1)[-1] for part in topic.split("/"))
        item_name = MOTION_TOPICS.get(path)
        if item_name is None:
            continue
        inner = child(child(message, "Message"), "Message")
        for item in children(child(inner, "Data"), "SimpleItem"):
            if item.get("Name") == item_name:
                value = (item.get("Value") or "").strip().lower()
                if value not in ("true", "false", "1", "0"):
                    raise MotionProtocolError(f"{path} with {item_name}={value[:20]!r}")
                states.append(value in ("true", "1"))
    current = _iso_seconds(child_text(root, "CurrentTime"))
    termination = _iso_seconds(child_text(root, "TerminationTime"))
    remaining = termination - current if current is not None and termination else None
    return PullResult(states, remaining)


# --------------------------------------------------------------------------- asyncio layer


# What ends one event session (and is retried); anything else is a bug, logged in full.
SESSION_ERRORS = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    MotionProtocolError,
    CameraSoapError,
    SoapFault,
    DeviceError,
)


class CameraMotion:
    """Motion of one camera from one event connection, kept open (and reopened) by a task.

    ``state`` is None until the camera said something. Listeners hear every change on the
    event loop. ``status_listeners`` hear ``"subscribed"`` for every successful
    (re)subscription and ``"lost: <reason>"`` whenever the connection or an attempt fails.
    """

    kind = "?"

    def __init__(
        self,
        camera: CameraConfig,
        *,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.camera = camera
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        # A connection silent for this long (cameras send heartbeats) is dropped and reopened.
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.subscriptions = 0
        self.last_error = ""
        self.status_listeners: list[Callable[[str], None]] = []
        self._state: bool | None = None
        self._listeners: list[Callable[[MotionEvent], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._http: CameraHttp | None = None

    # ---------------------------------------------------------------- MotionSource

    @property
    def state(self) -> bool | None:
        return self._state

    def add_listener(self, listener: Callable[[MotionEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _set(self, active: bool) -> None:
        before = bool(self._state)
        self._state = active
        if active == before:
            return  # unknown -> inactive is no change for a VMS
        event = MotionEvent(active, self.clock())
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: motion listener failed", self.camera.name)

    def _status(self, status: str) -> None:
        for listener in list(self.status_listeners):
            listener(status)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"motion {self.camera.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self._cleanup()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _cleanup(self) -> None:
        """Subclass hook run at close (e.g. Unsubscribe)."""

    @property
    def http(self) -> CameraHttp:
        if self._http is None:
            self._http = CameraHttp(
                self.camera.name,
                self.camera.host,
                self.camera.http_port,
                self.camera.username,
                self.camera.password.reveal(),
                timeout=self.connect_timeout,
            )
        return self._http

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
                reason = "camera closed the event connection"
            except asyncio.CancelledError:
                raise
            except SESSION_ERRORS as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # a bug must not end motion for good; log it fully
                log.exception("%s: %s motion session failed", self.camera.name, self.kind)
                reason = f"{type(exc).__name__}: {exc}"
            self.last_error = reason
            # Motion cannot be known while disconnected; never leave it stuck "active".
            if self._state:
                self._set(False)
            self._status(f"lost: {reason}")
            delay = self.backoff.next_delay()
            log.info(
                "%s: %s motion events lost (%s); retrying in %.1f s",
                self.camera.name,
                self.kind,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    def _subscribed(self) -> None:
        self.subscriptions += 1
        self.backoff.reset()
        self.last_error = ""
        log.info("%s: %s motion events subscribed", self.camera.name, self.kind)
        self._status("subscribed")

    async def _session(self) -> None:
        raise NotImplementedError


class MultipartMotion(CameraMotion):
    """Vendor HTTP event streams: one long GET, multipart parts parsed as they arrive."""

    path = ""

    def parse_part(self, part: Part) -> MotionChange | None:
        raise NotImplementedError

    async def _session(self) -> None:
        response = await self.http.open("GET", self.path, read_timeout=self.idle_timeout)
        async with response:
            if response.status != 200:
                raise MotionProtocolError(f"GET {self.path.split('?')[0]}: HTTP {response.status}")
            parser = MultipartParser(multipart_boundary(response.headers.get("Content-Type", "")))
            self._subscribed()
            while True:
                chunk = await response.content.readany()
                if not chunk:
                    return
                for part in parser.feed(chunk):
                    change = self.parse_part(part)
                    if change is not None and change.channel == self.camera.channel:
                        self._on_change(change.active)

    def _on_change(self, active: bool) -> None:
        self._set(active)


class HikvisionMotion(MultipartMotion):
    kind = "ISAPI"
    path = "/ISAPI/Event/notification/alertStream"

    def __init__(self, camera: CameraConfig, *, active_hold: float = 5.0, **kwargs: Any) -> None:
        super().__init__(camera, **kwargs)
        self.active_hold = active_hold
        self._hold: asyncio.TimerHandle | None = None

    def parse_part(self, part: Part) -> MotionChange | None:
        return parse_hikvision_alert(part.body)

    def _on_change(self, active: bool) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        if active:
            loop = asyncio.get_running_loop()
            self._hold = loop.call_later(self.active_hold, self._set, False)
        self._set(active)

    async def _cleanup(self) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None


class DahuaMotion(MultipartMotion):
    kind = "Dahua eventManager"
    path = "/cgi-bin/eventManager.cgi?action=attach&codes=[VideoMotion]&heartbeat=5"

    def parse_part(self, part: Part) -> MotionChange | None:
        return parse_dahua_event(part.body)


class OnvifMotion(CameraMotion):
    """The camera's own ONVIF PullPoint subscription."""

    kind = "ONVIF PullPoint"
    pull_timeout = 20.0  # seconds each PullMessages may be held by the camera
    duration = 120.0  # requested subscription length, renewed before it runs out

    def __init__(self, camera: CameraConfig, **kwargs: Any) -> None:
        super().__init__(camera, **kwargs)
        self._soap: CameraSoap | None = None
        self._subscription: URL | None = None

    @property
    def soap(self) -> CameraSoap:
        if self._soap is None or self._soap.http is not self.http:
            self._soap = CameraSoap(
                self.http, self.camera.username, self.camera.password.reveal(), clock=self.clock
            )
        return self._soap

    async def _call(self, url: URL, operation: str, namespace: str, body: str) -> etree._Element:
        return await self.soap.call(
            url, operation, namespace, body, read_timeout=self.pull_timeout + 10
        )

    async def _events_url(self, device_url: URL) -> URL:
        reply = await self._call(
            device_url,
            "GetCapabilities",
            NS["tds"],
            el("tds:GetCapabilities", el("tds:Category", "Events")),
        )
        xaddr = child_text(child(child(reply, "Capabilities"), "Events"), "XAddr")
        if not xaddr:
            raise MotionProtocolError("the camera lists no ONVIF event service")
        return self.soap.on_camera(xaddr)

    async def _session(self) -> None:
        device_url = self.soap.url(DEVICE_PATH)
        # WS-Security Created must fall in the camera's window: date it by the camera's clock.
        await self.soap.sync_clock(device_url, read_timeout=self.pull_timeout + 10)
        events_url = await self._events_url(device_url)
        created = await self._call(
            events_url,
            "CreatePullPointSubscriptionRequest",
            f"{TEV}/EventPortType",
            el(
                "tev:CreatePullPointSubscription",
                el("tev:InitialTerminationTime", f"PT{int(self.duration)}S"),
            ),
        )
        address = child_text(child(created, "SubscriptionReference"), "Address")
        if not address:
            raise MotionProtocolError("CreatePullPointSubscription gave no address")
        self._subscription = self.soap.on_camera(address)
        self._subscribed()
        remaining = parse_pull_messages(created).remaining or self.duration
        while True:
            if remaining < self.pull_timeout + 15:
                renewed = await self._call(
                    self._subscription,
                    "RenewRequest",
                    WSN_SUBSCRIPTION_MANAGER,
                    el("wsnt:Renew", el("wsnt:TerminationTime", f"PT{int(self.duration)}S")),
                )
                remaining = parse_pull_messages(renewed).remaining or self.duration
            reply = await self._call(
                self._subscription,
                "PullMessagesRequest",
                f"{TEV}/PullPointSubscription",
                el(
                    "tev:PullMessages",
                    el("tev:Timeout", f"PT{int(self.pull_timeout)}S"),
                    el("tev:MessageLimit", "64"),
                ),
            )
            result = parse_pull_messages(reply)
            for active in result.motion:
                self._set(active)
            remaining = result.remaining if result.remaining is not None else remaining - 1

    async def _cleanup(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None or self._http is None:
            return
        with contextlib.suppress(*SESSION_ERRORS):
            await wait_for(
                self._call(
                    subscription,
                    "UnsubscribeRequest",
                    WSN_SUBSCRIPTION_MANAGER,
                    el("wsnt:Unsubscribe"),
                ),
                3.0,
            )


def motion_source_for(camera: CameraConfig, *, backoff: Backoff | None = None) -> CameraMotion:
    """The motion source matching the camera's vendor (generic cameras: ONVIF); ``backoff``
    paces its reconnects (the default when None)."""
    if camera.vendor == "hikvision":
        return HikvisionMotion(camera, backoff=backoff)
    if camera.vendor == "dahua":
        return DahuaMotion(camera, backoff=backoff)
    return OnvifMotion(camera, backoff=backoff)


__all__ = [
    "Backoff",
    "CameraMotion",
    "DahuaMotion",
    "HikvisionMotion",
    "MotionEvent",
    "MotionProtocolError",
    "MultipartParser",
    "OnvifMotion",
    "motion_source_for",
    "parse_dahua_event",
    "parse_hikvision_alert",
    "parse_pull_messages",
]
