"""The virtual ONVIF devices of the running gateway, end to end.

Simulated cameras (a Hikvision with PTZ and H.264, a Dahua with H.265, and the Hikvision again
as a "generic" camera reached through its own ONVIF) -> ``Gateway(config)`` started with its
services -> onvif-zeep-async (an independent client) against each virtual device: stream URIs
that ffprobe plays, snapshots that decode, encoder configurations equal to what the gateway
measures, SystemReboot as an upstream reconnect under a connected client, motion from every
vendor path to a PullPoint subscriber, PTZ pass-through, inventory identity and reloads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from gateway import config as cfgmod
from gateway.digest import DigestClient
from gateway.media.hub import StreamHub
from gateway.onvif.backend import VENDOR_NAMES, DeviceIdentity, device_uuid
from gateway.onvif.service import OnvifService
from gateway.policy.db import PolicyStore
from gateway.rtsp.client import RtspReader
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet, default_stream_specs
from gateway.store import Store
from tests.conftest import (
    free_port,
    gateway_config_text,
    require,
    run_tool,
    stream_url,
    wait_for,
)
from tests.test_onvif_gateway import body_child, envelope, post, security_header

MOTION_INTERVAL = 1.0
INVENTORIED = {
    "vendor": "hikvision",
    "model": "DS-2DE4425IW-DE",
    "serial": "DS-2DE4425IW-DE20190512AAWRD12345678",
    "mac": "44:19:b6:01:02:03",
    "firmware": "V5.6.11",
    "build": "build 190426",
}


@pytest.fixture
async def fleet(camera_password: str) -> AsyncIterator[SimFleet]:
    fleet = SimFleet.build(
        hikvision=1,
        dahua=1,
        password=camera_password,
        specs=default_stream_specs("test"),
        motion_interval=MOTION_INTERVAL,
        ptz=True,  # the first camera (hik1)
    )
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def config_text(fleet: SimFleet, tmp_path: Path, vms_password: str) -> str:
    """hik1, dahua1, and onvif1: hik1's simulator again as a generic ONVIF camera."""
    hik = fleet.cameras[0]
    return gateway_config_text(fleet, tmp_path, vms_password) + (
        "\n[[camera]]\n"
        'name = "onvif1"\n'
        'vendor = "generic"\n'
        f'host = "{hik.device.host}"\n'
        f"http_port = {hik.device.http_port}\n"
        f'main_url = "{hik.rtsp_url("main")}"\n'
        f'username = "{hik.device.username}"\n'
        f'password = "{hik.device.password}"\n'
        'ptz = "disabled"\n'
    )


@pytest.fixture
async def gateway(fleet: SimFleet, tmp_path: Path, vms_password: str) -> AsyncIterator[Gateway]:
    # The policy inventory knows hik1's real identity before the gateway starts.
    store = Store.in_state_dir(tmp_path / "state")
    PolicyStore(store).save_inventory("hik1", "hikvision", INVENTORIED, [], {}, None, time.time())
    store.close()
    config = cfgmod.loads(config_text(fleet, tmp_path, vms_password), source="test.toml")
    gw = Gateway(config)  # with services: gateway.onvif.service starts the devices
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def onvif_of(gw: Gateway) -> OnvifService:
    return next(s for s in gw.services if isinstance(s, OnvifService))


async def live(gw: Gateway, camera: str, stream: str, timeout: float = 15.0) -> StreamHub:
    """The hub once its upstream is live and rate, bitrate and GOP have been measured."""
    hub = gw.hub(camera, stream)
    assert hub is not None
    measured = asyncio.Event()

    def listener(event: str, _hub: StreamHub) -> None:
        if event == "up":
            measured.set()

    hub.listeners.append(listener)
    try:
        if hub.state != "live":
            await asyncio.wait_for(measured.wait(), timeout)
        ready = await hub.wait_ready(timeout)
        assert ready, f"{camera}/{stream} not live"
    finally:
        hub.listeners.remove(listener)
    # Rate and GOP need two keyframes (1 s GOP in the test clips).
    deadline = time.monotonic() + timeout
    while hub.stats.gop_frames == 0 or hub.fps == 0:
        assert time.monotonic() < deadline, f"{camera}/{stream} never measured"
        await asyncio.sleep(0.1)
    return hub


class Client:
    """onvif-zeep-async against one virtual device."""

    def __init__(self, port: int, password: str) -> None:
        from onvif import ONVIFCamera

        self.port = port
        self.password = password
        self.camera = ONVIFCamera(
            "127.0.0.1", port, "vms", password, adjust_time=True, no_cache=True
        )

    async def __aenter__(self) -> Any:
        await self.camera.update_xaddrs()
        return self.camera

    async def __aexit__(self, *exc: object) -> None:
        await self.camera.close()


async def digest_get(url: str, user: str, password: str) -> tuple[int, str, bytes]:
    """GET with HTTP Digest (what ONVIF clients use for snapshot URIs)."""
    digest = DigestClient(user, password, allow_basic=False)
    path = url.split("/", 3)[3]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 401
            digest.handle_challenge(resp.headers.getall("WWW-Authenticate"))
        headers = {"Authorization": digest.authorization("GET", "/" + path) or ""}
        async with session.get(url, headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()


async def ffprobe_stream(uri: str, password: str) -> dict[str, Any]:
    authed = uri.replace("rtsp://", f"rtsp://vms:{password}@", 1)
    code, out, err = await run_tool(
        "ffprobe",
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-show_streams",
        "-of",
        "json",
        authed,
        timeout=30,
    )
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------- media


@pytest.mark.parametrize(
    ("camera", "codecs"),
    [("hik1", {"main": "h264", "sub": "h264"}), ("dahua1", {"main": "hevc", "sub": "h264"})],
)
async def test_stream_and_snapshot_uris_play(
    gateway: Gateway, vms_password: str, camera: str, codecs: dict[str, str]
) -> None:
    require("ffprobe")
    for stream in codecs:
        await live(gateway, camera, stream)
    device = onvif_of(gateway).device(camera)
    async with Client(device.port, vms_password) as cam:
        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        assert [p.token for p in profiles] == [f"{camera}_main", f"{camera}_sub"]
        for profile in profiles:
            stream = profile.token.rsplit("_", 1)[1]
            setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
            uri = (
                await media.GetStreamUri({"StreamSetup": setup, "ProfileToken": profile.token})
            ).Uri
            assert gateway.rtsp is not None
            assert uri == f"rtsp://127.0.0.1:{gateway.rtsp.port}/{camera}/{stream}"
            probed = await ffprobe_stream(uri, vms_password)
            video = next(s for s in probed["streams"] if s["codec_type"] == "video")
            info = gateway.stream_status(camera, stream)
            assert info is not None
            assert video["codec_name"] == codecs[stream]
            assert (video["width"], video["height"]) == (info.width, info.height)

            snapshot = (await media.GetSnapshotUri({"ProfileToken": profile.token})).Uri
            status, ctype, jpeg = await digest_get(snapshot, "vms", vms_password)
            assert status == 200 and ctype == "image/jpeg"
            with av.open(io.BytesIO(jpeg)) as container:
                frame = next(container.decode(video=0))
            assert frame.width > 0 and frame.height > 0


async def test_encoder_configurations_are_the_ingested_streams(
    gateway: Gateway, vms_password: str
) -> None:
    for camera in ("hik1", "dahua1"):
        for stream in ("main", "sub"):
            await live(gateway, camera, stream)
        device = onvif_of(gateway).device(camera)
        async with Client(device.port, vms_password) as cam:
            media = await cam.create_media_service()
            before = {s: gateway.stream_status(camera, s) for s in ("main", "sub")}
            configs = {c.token: c for c in await media.GetVideoEncoderConfigurations()}
            after = {s: gateway.stream_status(camera, s) for s in ("main", "sub")}
        for stream in ("main", "sub"):
            config = configs[f"{camera}_{stream}_venc"]
            b, a = before[stream], after[stream]
            assert b is not None and a is not None
            assert config.Encoding == b.codec
            assert (config.Resolution.Width, config.Resolution.Height) == (b.width, b.height)
            # Measured values may move between the two reads; the answer is one of them.
            rates = {max(1, round(b.fps)), max(1, round(a.fps))}
            assert config.RateControl.FrameRateLimit in rates
            kbps = sorted((b.bitrate // 1000, a.bitrate // 1000))
            assert kbps[0] * 0.95 <= config.RateControl.BitrateLimit <= kbps[1] * 1.05
            if b.codec == "H264":
                assert config.H264.GovLength in {b.gop_frames, a.gop_frames}
                assert config.H264.GovLength > 1

    # Media2 reports the H.265 stream as H.265 with its measured GOP.
    port = onvif_of(gateway).device("dahua1").port
    status, _, data = await post(
        port,
        envelope("<tr2:GetVideoEncoderConfigurations/>", security_header("vms", vms_password)),
        path="/onvif/media2_service",
    )
    assert status == 200, data.decode()
    found = {c.get("token"): c for c in body_child(data) if c.tag.endswith("}Configurations")}
    main = found["dahua1_main_venc"]
    info = gateway.stream_status("dahua1", "main")
    assert info is not None
    assert main.findtext("{http://www.onvif.org/ver10/schema}Encoding") == "H265"
    assert main.findtext(
        "{http://www.onvif.org/ver10/schema}Resolution/{http://www.onvif.org/ver10/schema}Width"
    ) == str(info.width)


# --------------------------------------------------------------------------- device


async def test_system_reboot_reconnects_upstream_under_a_connected_client(
    gateway: Gateway, vms_password: str
) -> None:
    hub = await live(gateway, "hik1", "main")
    reader = RtspReader(stream_url(gateway, "hik1", "main", vms_password))
    await reader.start()
    try:
        await reader.wait_frames(5, timeout=10, media="video")
        sessions = hub.upstream_sessions
        reconnected = asyncio.Event()

        def listener(event: str, _hub: StreamHub) -> None:
            if event == "up":
                reconnected.set()

        hub.listeners.append(listener)
        device = onvif_of(gateway).device("hik1")
        async with Client(device.port, vms_password) as cam:
            devmgmt = await cam.create_devicemgmt_service()
            message = await devmgmt.SystemReboot()
        assert "hik1" in message
        await asyncio.wait_for(reconnected.wait(), 15)
        hub.listeners.remove(listener)
        assert hub.upstream_sessions == sessions + 1
        # The client never noticed: still the same session, frames keep coming.
        received = reader.tracks[0].frames
        await reader.wait_frames(received + 25, timeout=10, media="video")
        assert device.reboots == ["hik1"]
    finally:
        await reader.close()


async def test_device_information_from_the_inventory(gateway: Gateway, vms_password: str) -> None:
    service = onvif_of(gateway)
    inventoried = service.device("hik1")
    async with Client(inventoried.port, vms_password) as cam:
        devmgmt = await cam.create_devicemgmt_service()
        info = await devmgmt.GetDeviceInformation()
    assert info.Manufacturer == VENDOR_NAMES["hikvision"]
    assert info.Model == INVENTORIED["model"]
    assert info.SerialNumber == INVENTORIED["serial"]
    assert info.FirmwareVersion == "V5.6.11 build 190426"
    # The urn:uuid is derived from the serial under the gateway's own secret: WS-Discovery
    # announces it to anyone, and it must not give the serial (or an address) away.
    public = device_uuid(
        DeviceIdentity("HIKVISION", "", "", INVENTORIED["serial"]), host="", name=""
    )
    assert inventoried.uuid.startswith("urn:uuid:") and inventoried.uuid != public

    # dahua1 has no inventory: its identity comes from the configuration.
    configured = service.device("dahua1")
    async with Client(configured.port, vms_password) as cam:
        devmgmt = await cam.create_devicemgmt_service()
        info = await devmgmt.GetDeviceInformation()
    assert info.Manufacturer == VENDOR_NAMES["dahua"]
    assert info.SerialNumber  # a stable one derived from the uuid
    assert configured.uuid != inventoried.uuid


async def test_ptz_is_found_and_forwarded(
    gateway: Gateway, fleet: SimFleet, vms_password: str
) -> None:
    await live(gateway, "hik1", "main")
    service = onvif_of(gateway)
    hik = service.cameras["hik1"].backend
    dahua = service.cameras["dahua1"].backend
    assert hik is not None and dahua is not None and hik._ptz and dahua._ptz
    await asyncio.wait_for(hik._ptz.settled.wait(), 30)
    await asyncio.wait_for(dahua._ptz.settled.wait(), 30)
    assert hik.ptz is not None and dahua.ptz is None
    assert service.cameras["onvif1"].backend is not None
    assert service.cameras["onvif1"].backend.ptz is None  # ptz = "disabled"

    async with Client(service.device("hik1").port, vms_password) as cam:
        ptz = await cam.create_ptz_service()
        await ptz.AbsoluteMove(
            {
                "ProfileToken": "hik1_main",
                "Position": {"PanTilt": {"x": 0.5, "y": -0.25}, "Zoom": {"x": 0.75}},
            }
        )
        status = await ptz.GetStatus({"ProfileToken": "hik1_main"})
    assert fleet.cameras[0].device.ptz_position == [0.5, -0.25, 0.75]
    assert status.Position.PanTilt.x == 0.5

    async with Client(service.device("dahua1").port, vms_password) as cam:
        caps = await (await cam.create_devicemgmt_service()).GetCapabilities({"Category": "All"})
    assert caps.PTZ is None


# --------------------------------------------------------------------------- events


async def pull_motion(port: int, password: str, timeout: float = 20.0) -> list[str]:
    """State values of MotionAlarm Changed notifications until one true and one false."""
    from onvif import ONVIFCamera

    from gateway.onvif.xml import NS

    cam = ONVIFCamera("127.0.0.1", port, "vms", password, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        events = await cam.create_events_service()
        sub = await events.CreatePullPointSubscription({"InitialTerminationTime": "PT120S"})
        cam.xaddrs[f"{NS['tev']}/PullPointSubscription"] = (
            sub.SubscriptionReference.Address._value_1
        )
        pull = await cam.create_pullpoint_service()
        states: list[str] = []
        deadline = time.monotonic() + timeout
        while not {"true", "false"} <= set(states):
            assert time.monotonic() < deadline, f"motion seen so far: {states}"
            got = await pull.PullMessages({"Timeout": dt.timedelta(seconds=5), "MessageLimit": 20})
            for message in got.NotificationMessage:
                inner = message.Message._value_1
                if (
                    message.Topic._value_1 == "tns1:VideoSource/MotionAlarm"
                    and inner.PropertyOperation == "Changed"
                ):
                    states.append(inner.Data.SimpleItem[0].Value)
        return states
    finally:
        await cam.close()


async def test_camera_motion_reaches_pullpoint_subscribers(
    gateway: Gateway, vms_password: str
) -> None:
    """Each vendor path: ISAPI alert stream (hik1), Dahua attach stream (dahua1), the
    camera's own ONVIF PullPoint (onvif1)."""
    service = onvif_of(gateway)
    kinds = {}
    for name in ("hik1", "dahua1", "onvif1"):
        backend = service.cameras[name].backend
        assert backend is not None
        kinds[name] = backend.motion.kind
    assert kinds == {"hik1": "ISAPI", "dahua1": "Dahua eventManager", "onvif1": "ONVIF PullPoint"}
    results = await asyncio.gather(
        *(
            pull_motion(service.device(name).port, vms_password)
            for name in ("hik1", "dahua1", "onvif1")
        )
    )
    for name, states in zip(("hik1", "dahua1", "onvif1"), results, strict=True):
        assert "true" in states and "false" in states, (name, states)
        # Changes alternate: the gateway forwards changes, not repeats.
        assert all(a != b for a, b in itertools.pairwise(states)), (name, states)


# --------------------------------------------------------------------------- life cycle


async def test_reload_adds_and_removes_devices_without_touching_the_others(
    gateway: Gateway, fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    service = onvif_of(gateway)
    kept = {name: service.cameras[name] for name in ("hik1", "dahua1")}
    removed_port = service.device("onvif1").port
    full = gateway.config
    without = cfgmod.loads(
        config_text(fleet, tmp_path, vms_password).split('\n[[camera]]\nname = "onvif1"')[0],
        source="test.toml",
    )
    # Same ports as before for the cameras that stay.
    without = replace_server(without, full)
    await gateway.reload(without)
    assert set(service.cameras) == {"hik1", "dahua1"}
    assert all(service.cameras[n] is kept[n] for n in kept)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(removed_port, envelope("<tds:GetSystemDateAndTime/>"))

    await gateway.reload(full)
    assert set(service.cameras) == {"hik1", "dahua1", "onvif1"}
    assert all(service.cameras[n] is kept[n] for n in kept)
    async with Client(service.device("onvif1").port, vms_password) as cam:
        info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
    assert info.Manufacturer == "Generic"


def replace_server(config: cfgmod.Config, like: cfgmod.Config) -> cfgmod.Config:
    from dataclasses import replace

    return replace(config, server=like.server, state_dir=like.state_dir)


async def test_unreachable_camera_does_not_block_start_up(
    tmp_path: Path, vms_password: str
) -> None:
    dead = free_port()  # nothing listens here
    base = free_port()
    config = cfgmod.loads(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[server]\nbind = "127.0.0.1"\nrtsp_port = {free_port()}\nonvif_base_port = {base}\n'
        f'[vms]\nusername = "vms"\npassword = "{vms_password}"\n'
        '[[camera]]\nname = "gone"\nvendor = "hikvision"\nhost = "127.0.0.1"\n'
        f'rtsp_port = {dead}\nhttp_port = {dead}\nusername = "admin"\npassword = "x"\n',
        source="test.toml",
    )
    gw = Gateway(config)
    started = time.monotonic()
    await gw.start()
    try:
        assert time.monotonic() - started < 5
        service = onvif_of(gw)
        backend = service.cameras["gone"].backend
        assert backend is not None
        async with Client(base, vms_password) as cam:
            media = await cam.create_media_service()
            # No stream was ever seen: no profile to offer yet, but a working device.
            assert await media.GetProfiles() == []
            info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
        assert info.Manufacturer == "HIKVISION"
        lost = asyncio.Event()
        backend.motion.status_listeners.append(lambda status: lost.set())
        await asyncio.wait_for(lost.wait(), 15)
        assert backend.motion.state is None and backend.motion.last_error
    finally:
        await gw.stop()


async def test_device_uuid_survives_a_later_inventory_and_restarts(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    """A VMS keys devices on the urn:uuid: the one first served must stay, even when the
    inventory later learns the camera's serial (which would derive a different one)."""
    config = cfgmod.loads(config_text(fleet, tmp_path, vms_password), source="test.toml")
    gw = Gateway(config)
    await gw.start()
    try:
        first = onvif_of(gw).device("dahua1").uuid
    finally:
        await gw.stop()
    store = Store.in_state_dir(tmp_path / "state")
    inventoried = {**INVENTORIED, "serial": "6J0123456789ABC"}
    PolicyStore(store).save_inventory("dahua1", "dahua", inventoried, [], {}, None, time.time())
    store.close()
    serial_based = device_uuid(
        DeviceIdentity("Dahua", "", "", inventoried["serial"]), host="", name=""
    )
    assert serial_based != first  # what the device would have switched to
    gw = Gateway(config)
    await gw.start()
    try:
        device = onvif_of(gw).device("dahua1")
        assert device.uuid == first
        async with Client(device.port, vms_password) as cam:
            devmgmt = await cam.create_devicemgmt_service()
            info = await devmgmt.GetDeviceInformation()
        assert info.SerialNumber == inventoried["serial"]  # identity still follows inventory
    finally:
        await gw.stop()


async def test_on_demand_camera_has_profiles_before_anyone_plays_it(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    """A VMS adding an on-demand camera needs its profiles although nothing streams yet:
    the gateway connects once to learn the formats, then closes the upstream again."""
    text = gateway_config_text(fleet, tmp_path, vms_password, camera_extra="on_demand = true")
    gw = Gateway(cfgmod.loads(text, source="test.toml"))
    await gw.start()
    try:
        device = onvif_of(gw).device("hik1")
        hub = gw.hub("hik1", "main")
        assert hub is not None and hub.on_demand
        profiles: list[Any] = []
        async with Client(device.port, vms_password) as cam:
            media = await cam.create_media_service()
            deadline = asyncio.get_running_loop().time() + 30
            while len(profiles) < 2:
                assert asyncio.get_running_loop().time() < deadline, "no profiles appeared"
                profiles = list(await media.GetProfiles())
                if len(profiles) < 2:
                    await asyncio.sleep(0.2)  # polling the device as a VMS would
        encodings = {p.VideoEncoderConfiguration.Encoding for p in profiles}
        assert encodings == {"H264"}
        assert hub.subscribers == []
        cam = fleet.cameras[0]
        assert cam.rtsp is not None

        def upstream_closed() -> bool:
            return not any(c.source is cam.hubs["main"] for c in cam.rtsp.clients())

        await wait_for(upstream_closed, 40, "the upstream to close after the linger time")
        assert hub.state == "idle"
    finally:
        await gw.stop()


async def test_a_token_is_good_at_one_device_once_and_reboots_are_rate_limited(
    gateway: Gateway, vms_password: str
) -> None:
    service = onvif_of(gateway)
    hik, dahua = service.device("hik1"), service.device("dahua1")
    header = security_header("vms", vms_password)
    info = envelope("<tds:GetDeviceInformation/>", header)
    status, _, _ = await post(hik.port, info)
    assert status == 200
    # The same token (sniffed) at another camera's device, with another body: refused.
    reboot = envelope("<tds:SystemReboot/>", header)
    status, _, _ = await post(dahua.port, reboot)
    assert status in (400, 401) and dahua.reboots == []
    # A fresh token reboots once; the next reboot within the interval is refused.
    status, _, _ = await post(
        dahua.port, envelope("<tds:SystemReboot/>", security_header("vms", vms_password))
    )
    assert status == 200 and dahua.reboots == ["dahua1"]
    status, headers, _ = await post(
        dahua.port, envelope("<tds:SystemReboot/>", security_header("vms", vms_password))
    )
    assert status == 503 and headers["Retry-After"] == "60"
    assert dahua.reboots == ["dahua1"]
