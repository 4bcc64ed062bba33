"""Motion from real cameras' event interfaces (gateway.devices.events) against the simulators:
Hikvision's ISAPI alert stream, Dahua's eventManager attach stream and the camera's own ONVIF
PullPoint; connection drops and resets with resubscription; the sans-IO parsers on hostile
input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.backoff import Backoff
from gateway.config import CameraConfig
from gateway.config_reader import Secret
from gateway.devices.events import (
    CameraMotion,
    DahuaMotion,
    HikvisionMotion,
    MotionEvent,
    MotionProtocolError,
    MultipartParser,
    OnvifMotion,
    motion_source_for,
    multipart_boundary,
    parse_dahua_event,
    parse_hikvision_alert,
    parse_pull_messages,
)
from gateway.devices.soap import reply_body
from gateway.sim import hikvision as sim_hikvision
from gateway.sim.camera import SimCamera
from gateway.sim.device import SimDevice
from gateway.sim.runner import SimFleet, default_stream_specs
from gateway.soap import SoapFault

MOTION_INTERVAL = 0.6


# --------------------------------------------------------------------------- parsers


def test_multipart_parts_split_anywhere_with_and_without_length() -> None:
    stream = (
        b"--boundary\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n\r\n"
        b"Code=VideoMotion;action=Start;index=0\r\n"
        b"--boundary\r\nContent-Type: text/plain\r\n\r\n"
        b"Code=VideoMotion;action=Stop;index=0\r\n"
        b"--boundary\r\n"
    )
    for step in (1, 7, len(stream)):
        parser = MultipartParser("boundary")
        parts = []
        for i in range(0, len(stream), step):
            parts += parser.feed(stream[i : i + step])
        assert [p.body for p in parts] == [
            b"Code=VideoMotion;action=Start;index=0",
            b"Code=VideoMotion;action=Stop;index=0",
        ], step
        assert parts[0].headers["content-length"] == "37"


def test_multipart_refuses_endless_input_with_bounded_memory() -> None:
    parser = MultipartParser("myboundary", max_part=4096)
    with pytest.raises(MotionProtocolError, match="no multipart boundary"):
        for _ in range(10_000):
            parser.feed(b"x" * 1000)  # an endless line without any boundary
            assert len(parser._buffer) < 4096
    parser = MultipartParser("myboundary", max_part=4096)
    parser.feed(b"--myboundary\r\nContent-Type: text/plain\r\n\r\n")
    with pytest.raises(MotionProtocolError, match="larger than 4096"):
        for _ in range(100):
            parser.feed(b"y" * 1000)  # a part that never ends
    parser = MultipartParser("myboundary", max_part=4096)
    with pytest.raises(MotionProtocolError, match="of 999999999 bytes refused"):
        parser.feed(b"--myboundary\r\nContent-Length: 999999999\r\n\r\nabc")


def test_multipart_boundary_from_content_type() -> None:
    assert multipart_boundary("multipart/mixed; boundary=boundary") == "boundary"
    assert multipart_boundary('multipart/x-mixed-replace; boundary="--myb"') == "myb"
    with pytest.raises(MotionProtocolError, match="expected a multipart stream"):
        multipart_boundary("text/html")
    with pytest.raises(MotionProtocolError, match="without boundary"):
        multipart_boundary("multipart/mixed")


def test_hikvision_alerts() -> None:
    device = SimDevice("hik1", "hikvision", "admin", "pw")
    active = parse_hikvision_alert(sim_hikvision.alert(device, "VMD", "active", 1))
    assert active is not None and active.active and active.channel == 1
    inactive = parse_hikvision_alert(sim_hikvision.alert(device, "VMD", "inactive", 1))
    assert inactive is not None and not inactive.active
    assert parse_hikvision_alert(sim_hikvision.alert(device, "videoloss", "inactive", 0)) is None
    with pytest.raises(MotionProtocolError, match="DOCTYPE"):
        parse_hikvision_alert(
            b'<!DOCTYPE a [<!ENTITY x "y">]><EventNotificationAlert>&x;</EventNotificationAlert>'
        )
    with pytest.raises(MotionProtocolError, match="malformed"):
        parse_hikvision_alert(b"<EventNotificationAlert><eventType>VMD")
    with pytest.raises(MotionProtocolError, match="eventState 'maybe'"):
        parse_hikvision_alert(
            b"<EventNotificationAlert><eventType>VMD</eventType>"
            b"<eventState>maybe</eventState></EventNotificationAlert>"
        )


def test_dahua_events() -> None:
    start = parse_dahua_event(b"Code=VideoMotion;action=Start;index=2\r\n")
    assert start is not None and start.active and start.channel == 3
    stop = parse_dahua_event(b'Code=VideoMotion;action=Stop;index=0;data={"Id":[0]}')
    assert stop is not None and not stop.active and stop.channel == 1
    assert parse_dahua_event(b"Heartbeat") is None
    assert parse_dahua_event(b"Code=VideoLoss;action=Start;index=0") is None
    assert parse_dahua_event(b"Code=VideoMotion;action=Pulse;index=0") is None
    assert parse_dahua_event(b"\xff\xfe garbage") is None


def test_pull_messages_motion_and_remaining_time() -> None:
    reply = b"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
 xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" xmlns:tt="http://www.onvif.org/ver10/schema"
 xmlns:tev="http://www.onvif.org/ver10/events/wsdl"><s:Body><tev:PullMessagesResponse>
<tev:CurrentTime>2025-01-06T22:51:16Z</tev:CurrentTime>
<tev:TerminationTime>2025-01-06T22:52:16Z</tev:TerminationTime>
<wsnt:NotificationMessage><wsnt:Topic>tns1:VideoSource/MotionAlarm</wsnt:Topic><wsnt:Message>
<tt:Message><tt:Data><tt:SimpleItem Name="State" Value="true"/></tt:Data></tt:Message>
</wsnt:Message></wsnt:NotificationMessage>
<wsnt:NotificationMessage><wsnt:Topic>tns1:Device/Trigger/DigitalInput</wsnt:Topic>
<wsnt:Message><tt:Message><tt:Data><tt:SimpleItem Name="LogicalState" Value="true"/>
</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage>
<wsnt:NotificationMessage><wsnt:Topic>tns1:RuleEngine/CellMotionDetector/Motion</wsnt:Topic>
<wsnt:Message><tt:Message><tt:Data><tt:SimpleItem Name="IsMotion" Value="false"/></tt:Data>
</tt:Message></wsnt:Message></wsnt:NotificationMessage>
</tev:PullMessagesResponse></s:Body></s:Envelope>"""
    result = parse_pull_messages(reply_body(reply, "cam"))
    assert result.motion == [True, False]
    assert result.remaining == 60.0
    fault = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault>'
        b"<s:Code><s:Value>s:Sender</s:Value></s:Code><s:Reason><s:Text>sender not authorized"
        b"</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"
    )
    with pytest.raises(SoapFault, match=r"camera cam: sender not authorized") as raised:
        reply_body(fault, "cam")
    assert raised.value.code == "Sender"


def test_backoff_is_capped_exponential_with_jitter() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    delays = [backoff.next_delay() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_vendor_picks_the_event_interface() -> None:
    def cam(vendor: str) -> CameraConfig:
        return CameraConfig("c", vendor, "127.0.0.1", "admin", Secret("pw"))

    assert type(motion_source_for(cam("hikvision"))) is HikvisionMotion
    assert type(motion_source_for(cam("dahua"))) is DahuaMotion
    assert type(motion_source_for(cam("generic"))) is OnvifMotion


# --------------------------------------------------------------------------- against the sims


@pytest.fixture
async def fleet(camera_password: str) -> AsyncIterator[SimFleet]:
    fleet = SimFleet.build(
        hikvision=1,
        dahua=1,
        password=camera_password,
        specs=default_stream_specs("test"),
        motion_interval=MOTION_INTERVAL,
    )
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def camera_config(sim: SimCamera, vendor: str, password: str | None = None) -> CameraConfig:
    d = sim.device
    return CameraConfig(
        name=d.name,
        vendor=vendor,
        host=d.host,
        username=d.username,
        password=Secret(password or d.password),
        http_port=d.http_port,
    )


class Watch:
    """Motion changes and connection status of one source, as queues."""

    def __init__(self, source: CameraMotion) -> None:
        self.source = source
        self.motion: asyncio.Queue[MotionEvent] = asyncio.Queue()
        self.status: asyncio.Queue[str] = asyncio.Queue()
        source.add_listener(self.motion.put_nowait)
        source.status_listeners.append(self.status.put_nowait)

    async def status_starting(self, prefix: str, timeout: float = 15.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                status = await self.status.get()
                if status.startswith(prefix):
                    return status

    async def motion_sequence(self, n: int, timeout: float = 15.0) -> list[bool]:
        seen: list[bool] = []
        async with asyncio.timeout(timeout):
            while len(seen) < n:
                seen.append((await self.motion.get()).active)
        return seen


VENDOR_PATHS = [
    pytest.param(0, "hikvision", HikvisionMotion, id="isapi"),
    pytest.param(1, "dahua", DahuaMotion, id="dahua"),
    pytest.param(0, "generic", OnvifMotion, id="onvif-hikvision"),
    pytest.param(1, "generic", OnvifMotion, id="onvif-dahua"),
]


@pytest.mark.parametrize(("index", "vendor", "kind"), VENDOR_PATHS)
async def test_motion_arrives_and_alternates(
    fleet: SimFleet, index: int, vendor: str, kind: type[CameraMotion]
) -> None:
    source = motion_source_for(
        camera_config(fleet.cameras[index], vendor), backoff=Backoff(0.05, 0.5)
    )
    assert type(source) is kind
    watch = Watch(source)
    source.start()
    try:
        assert await watch.status_starting("subscribed") == "subscribed"
        # Unknown -> inactive is no change, so the first change is motion starting.
        changes = await watch.motion_sequence(4)
        assert changes == [True, False, True, False]
        assert source.state is changes[-1]
        assert source.subscriptions == 1
    finally:
        await source.close()
    assert source._task is None and source._http is None


@pytest.mark.parametrize(
    ("index", "vendor"),
    [pytest.param(0, "hikvision", id="isapi"), pytest.param(1, "dahua", id="dahua")],
)
async def test_dropped_and_reset_connections_are_resubscribed(
    fleet: SimFleet, index: int, vendor: str
) -> None:
    sim = fleet.cameras[index]
    source = motion_source_for(camera_config(sim, vendor), backoff=Backoff(0.05, 0.4))
    watch = Watch(source)
    source.start()
    try:
        await watch.status_starting("subscribed")
        assert await watch.motion_sequence(1)  # events flow

        # The camera goes away mid-stream: the connection ends and motion is not stuck on.
        await sim.stop()
        lost = await watch.status_starting("lost")
        assert source.state is not True, lost
        # While it is down, attempts fail and are retried.
        await watch.status_starting("lost")

        # It comes back, but resets every connection: still retried, never subscribed.
        sim.device.faults.add("reset")
        await sim.start()
        reset = await watch.status_starting("lost")
        assert "subscribed" not in reset
        assert source.subscriptions == 1

        # The fault clears: resubscribed and motion flows again.
        sim.device.faults.clear()
        await watch.status_starting("subscribed")
        assert source.subscriptions == 2
        while not watch.motion.empty():
            watch.motion.get_nowait()
        assert len(await watch.motion_sequence(2)) == 2
    finally:
        await source.close()


async def test_onvif_pullpoint_resubscribes_after_the_camera_restarts(fleet: SimFleet) -> None:
    sim = fleet.cameras[0]
    source = OnvifMotion(camera_config(sim, "generic"), backoff=Backoff(0.05, 0.4))
    watch = Watch(source)
    source.start()
    try:
        await watch.status_starting("subscribed")
        await watch.motion_sequence(1)
        await sim.stop()
        await watch.status_starting("lost")
        await sim.start()
        # The restarted camera forgot the subscription; a new one is made.
        await watch.status_starting("subscribed")
        assert source.subscriptions == 2
        assert len(await watch.motion_sequence(2)) == 2
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("index", "vendor", "expected"),
    [
        pytest.param(0, "hikvision", "HTTP 401", id="isapi"),
        pytest.param(1, "dahua", "HTTP 401", id="dahua"),
        pytest.param(0, "generic", "not authorized", id="onvif"),
    ],
)
async def test_wrong_password_is_reported_and_retried(
    fleet: SimFleet, index: int, vendor: str, expected: str
) -> None:
    source = motion_source_for(
        camera_config(fleet.cameras[index], vendor, password="wrong"), backoff=Backoff(0.05, 0.2)
    )
    watch = Watch(source)
    source.start()
    try:
        first = await watch.status_starting("lost")
        second = await watch.status_starting("lost")
        assert expected in first and expected in second
        assert source.subscriptions == 0 and source.state is None
        assert expected in source.last_error
    finally:
        await source.close()


async def test_hikvision_motion_ends_after_the_active_hold(camera_password: str) -> None:
    """Firmware repeats "active" while motion lasts and may never say "inactive"."""
    fleet = SimFleet.build(
        hikvision=1,
        dahua=0,
        password=camera_password,
        specs=default_stream_specs("test"),
        motion_interval=4.0,
    )
    await fleet.start()
    source = HikvisionMotion(camera_config(fleet.cameras[0], "hikvision"), active_hold=0.3)
    watch = Watch(source)
    source.start()
    try:
        assert await watch.motion_sequence(1, timeout=10) == [True]
        started = time.monotonic()
        # The simulator says "inactive" only after 4 s; the hold ends motion long before.
        assert await watch.motion_sequence(1, timeout=3) == [False]
        assert time.monotonic() - started < 2.0
    finally:
        await source.close()
        await fleet.stop()
