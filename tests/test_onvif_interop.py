# ruff: noqa: F811  (pytest fixtures imported from test_onvif_gateway are redefined as arguments)
"""The long tail of real clients (issue 17): what they call beyond streaming, answered from the
streams as measured and from the camera's own ONVIF services, and checked against the ONVIF
schemas where onvif-zeep-async ships them (Media2 has none there: checked by content)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from aiohttp import web

from gateway.devices.onvif_forward import CameraEndpoint, OnvifImagingForwarder, PtzCapabilities
from gateway.onvif import ptz
from gateway.onvif.core import CameraSlot
from gateway.onvif.discovery import WSD, Probe, ProbeMatch, probe_matches
from gateway.onvif.discovery import Endpoint as DiscoveryEndpoint
from gateway.onvif.xml import NS, WSA, parse_markup, parse_xml
from tests.test_onvif_gateway import (  # noqa: F401  (fixtures)
    PASSWORD,
    SOAP,
    USER,
    assert_valid,
    body_child,
    call_ok,
    envelope,
    fault_codes,
    gateway,
    post,
    security_header,
    sim_camera,
    streams,
)

TT, TR2, TDS = NS["tt"], NS["tr2"], NS["tds"]
MEDIA2 = "/onvif/media2_service"
MEDIA = "/onvif/media_service"
PTZ = "/onvif/ptz_service"
IMAGING = "/onvif/imaging_service"


async def call_fault(port: int, body: str, path: str = "/onvif/device_service") -> list[str]:
    _, _, data = await post(port, envelope(body, security_header(USER, PASSWORD)), path=path)
    return fault_codes(data)


# --------------------------------------------------------------------------- Device


DEVICE_GETTERS = [
    "<tds:GetNetworkDefaultGateway/>",
    "<tds:GetZeroConfiguration/>",
    "<tds:GetRelayOutputs/>",
    "<tds:GetIPAddressFilter/>",
    "<tds:GetDynamicDNS/>",
    "<tds:GetSystemLog><tds:LogType>System</tds:LogType></tds:GetSystemLog>",
    "<tds:GetCertificates/>",
    "<tds:GetAccessPolicy/>",
    "<tds:GetDNS/>",
]


async def test_device_getters_answer_and_reveal_nothing_of_the_host(gateway):
    for op in DEVICE_GETTERS:
        assert_valid("devicemgmt", await call_ok(gateway.base, op))
    # Newer than the devicemgmt WSDL onvif-zeep-async ships: no location is set.
    geo = await call_ok(gateway.base, "<tds:GetGeoLocation/>")
    assert geo.tag == f"{{{TDS}}}GetGeoLocationResponse" and len(geo) == 0
    dns = await call_ok(gateway.base, "<tds:GetDNS/>")
    # The host's resolvers (and the cameras' DNS sinkhole) stay private.
    assert dns.find(f".//{{{TT}}}DNSManual") is None
    assert dns.find(f".//{{{TT}}}DNSFromDHCP") is None
    # Loopback has no default route through it: none is shown.
    router = await call_ok(gateway.base, "<tds:GetNetworkDefaultGateway/>")
    assert router.find(f".//{{{TT}}}IPv4Address") is None
    log = await call_ok(
        gateway.base, "<tds:GetSystemLog><tds:LogType>Access</tds:LogType></tds:GetSystemLog>"
    )
    assert log.findtext(f".//{{{TT}}}String") == ""


async def test_capabilities_of_a_missing_category_is_no_such_service(gateway):
    for category in ("Analytics", "Imaging", "Bogus"):
        codes = await call_fault(
            gateway.base,
            f"<tds:GetCapabilities><tds:Category>{category}</tds:Category></tds:GetCapabilities>",
        )
        assert codes == ["env:Receiver", "ter:ActionNotSupported", "ter:NoSuchService"], category
    media = await call_ok(
        gateway.base,
        "<tds:GetCapabilities><tds:Category>Media</tds:Category></tds:GetCapabilities>",
    )
    assert media.find(f".//{{{TT}}}Media/{{{TT}}}XAddr") is not None


async def test_leading_whitespace_before_the_xml_declaration_is_accepted(gateway):
    data = b'\r\n  <?xml version="1.0" encoding="UTF-8"?>\n' + envelope("<tds:GetHostname/>")
    status, _, reply = await post(gateway.base, data)
    assert status == 200, reply
    assert body_child(reply).tag == f"{{{TDS}}}GetHostnameResponse"


# --------------------------------------------------------------------------- Media2 / Media


async def test_media2_options_reflect_the_ingested_streams(gateway, streams):
    port = gateway.base
    options = await call_ok(
        port,
        "<tr2:GetVideoEncoderConfigurationOptions><tr2:ProfileToken>cam1_sub</tr2:ProfileToken>"
        "</tr2:GetVideoEncoderConfigurationOptions>",
        MEDIA2,
    )
    sub = streams[1]
    [opt] = list(options)
    assert opt.get("GovLengthRange") == f"{sub.gop} {sub.gop}"
    assert opt.findtext(f"{{{TT}}}Encoding") == "H264"
    assert opt.get("ProfilesSupported") == sub.profile
    res = opt.find(f"{{{TT}}}ResolutionsAvailable")
    assert (res.findtext(f"{{{TT}}}Width"), res.findtext(f"{{{TT}}}Height")) == (
        str(sub.width),
        str(sub.height),
    )
    assert opt.find(f"{{{TT}}}BitrateRange").findtext(f"{{{TT}}}Max") == str(sub.bitrate_kbps)
    every = await call_ok(port, "<tr2:GetVideoEncoderConfigurationOptions/>", MEDIA2)
    assert len(every) == 2

    source = await call_ok(
        port,
        "<tr2:GetVideoSourceConfigurationOptions><tr2:ConfigurationToken>cam1_video_cfg"
        "</tr2:ConfigurationToken></tr2:GetVideoSourceConfigurationOptions>",
        MEDIA2,
    )
    width = source[0].find(f"{{{TT}}}BoundsRange/{{{TT}}}WidthRange")
    assert width.findtext(f"{{{TT}}}Max") == str(streams[0].width)
    audio = await call_ok(port, "<tr2:GetAudioEncoderConfigurationOptions/>", MEDIA2)
    assert len(audio) == 0  # the clips carry no audio

    analytics = await call_ok(port, "<tr2:GetAnalyticsConfigurations/>", MEDIA2)
    # The token the motion events name as VideoAnalyticsConfigurationToken.
    assert [a.get("token") for a in analytics] == ["cam1_analytics"]
    rule = analytics[0].find(f".//{{{TT}}}Rule")
    assert rule.get("Type") == "tt:CellMotionDetector"
    for empty in (
        "GetMetadataConfigurations",
        "GetAudioOutputConfigurations",
        "GetAudioDecoderConfigurations",
        "GetOSDs",
    ):
        assert len(await call_ok(port, f"<tr2:{empty}/>", MEDIA2)) == 0, empty
    osd = await call_ok(
        port,
        "<tr2:GetOSDOptions><tr2:ConfigurationToken>cam1_video_cfg</tr2:ConfigurationToken>"
        "</tr2:GetOSDOptions>",
        MEDIA2,
    )
    assert osd[0].find(f"{{{TT}}}MaximumNumberOfOSDs").get("Total") == "0"
    sync = await call_ok(
        port,
        "<tr2:SetSynchronizationPoint><tr2:ProfileToken>cam1_main</tr2:ProfileToken>"
        "</tr2:SetSynchronizationPoint>",
        MEDIA2,
    )
    assert sync.tag == f"{{{TR2}}}SetSynchronizationPointResponse"
    codes = await call_fault(
        port,
        "<tr2:GetOSDOptions><tr2:ConfigurationToken>nope</tr2:ConfigurationToken>"
        "</tr2:GetOSDOptions>",
        MEDIA2,
    )
    assert "ter:NoConfig" in codes


MEDIA1_ADDED = [
    "<trt:GetOSDs/>",
    "<trt:GetOSDOptions><trt:ConfigurationToken>cam1_video_cfg</trt:ConfigurationToken></trt:GetOSDOptions>",
    "<trt:GetVideoAnalyticsConfigurations/>",
    "<trt:GetMetadataConfigurations/>",
    "<trt:GetAudioOutputs/>",
    "<trt:GetAudioOutputConfigurations/>",
    "<trt:GetAudioDecoderConfigurations/>",
    "<trt:SetSynchronizationPoint><trt:ProfileToken>cam1_sub</trt:ProfileToken></trt:SetSynchronizationPoint>",
    "<trt:GetVideoSourceConfigurationOptions/>",
]


async def test_media1_additions_validate(gateway):
    for op in MEDIA1_ADDED:
        assert_valid("media", await call_ok(gateway.base, op, MEDIA))


async def test_synchronization_point_needs_a_live_stream(gateway):
    gateway.backend.has_keyframe = lambda stream: False
    codes = await call_fault(
        gateway.base,
        "<trt:SetSynchronizationPoint><trt:ProfileToken>cam1_main</trt:ProfileToken>"
        "</trt:SetSynchronizationPoint>",
        MEDIA,
    )
    assert codes == ["env:Receiver", "ter:Action", "ter:NotAvailable"]


async def test_h265_carries_its_gop_in_media1_and_media2(gateway, streams):
    from gateway.onvif.backend import StreamInfo

    h265 = StreamInfo("main", "/cam1/main", "H265", 640, 360, 12.5, 900, 25, "Main")
    gateway.backend._streams = [h265, streams[1]]
    config = await call_ok(
        gateway.base,
        "<trt:GetVideoEncoderConfiguration><trt:ConfigurationToken>cam1_main_venc"
        "</trt:ConfigurationToken></trt:GetVideoEncoderConfiguration>",
        MEDIA,
    )
    # (Encoding H265 is outside the ver10 enumeration, as on H.265 cameras: not validated.)
    assert config.findtext(f".//{{{TT}}}H265/{{{TT}}}GovLength") == "25"
    options = await call_ok(
        gateway.base,
        "<trt:GetVideoEncoderConfigurationOptions><trt:ProfileToken>cam1_main</trt:ProfileToken>"
        "</trt:GetVideoEncoderConfigurationOptions>",
        MEDIA,
    )
    assert_valid("media", options)
    h265_options = options.find(f".//{{{TT}}}Extension/{{{TT}}}Extension/{{{TT}}}H265")
    assert h265_options.find(f"{{{TT}}}GovLengthRange").findtext(f"{{{TT}}}Min") == "25"
    assert h265_options.find(f"{{{TT}}}FrameRateRange").findtext(f"{{{TT}}}Max") == "12"
    media2 = await call_ok(
        gateway.base,
        "<tr2:GetVideoEncoderConfigurationOptions><tr2:ConfigurationToken>cam1_main_venc"
        "</tr2:ConfigurationToken></tr2:GetVideoEncoderConfigurationOptions>",
        MEDIA2,
    )
    assert media2[0].get("GovLengthRange") == "25 25"
    assert media2[0].findtext(f"{{{TT}}}Encoding") == "H265"


# --------------------------------------------------------------------------- PTZ


async def test_ptz_capabilities_are_the_cameras_own(gateway, sim_camera):
    caps = await call_ok(gateway.base, "<tptz:GetServiceCapabilities/>", PTZ)
    assert caps[0].get("MoveStatus") == "true" and caps[0].get("StatusPosition") == "true"
    # A camera that does not claim MoveStatus: neither does the virtual device.
    forwarder = gateway.backend._ptz
    setup = await forwarder.setup()
    forwarder._setup = dataclasses.replace(
        setup, capabilities=PtzCapabilities(status_position=True)
    )
    caps = await call_ok(gateway.base, "<tptz:GetServiceCapabilities/>", PTZ)
    assert caps[0].get("MoveStatus") == "false" and caps[0].get("StatusPosition") == "true"
    services = await call_ok(
        gateway.base,
        "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>",
    )
    ptz = next(s for s in services if s.findtext(f"{{{TDS}}}Namespace") == NS["tptz"])
    assert ptz.find(f".//{{{NS['tptz']}}}Capabilities").get("MoveStatus") == "false"


def test_ptz_capabilities_are_read_and_shown_as_xs_boolean() -> None:
    # A camera's tptz:Capabilities attributes: "1" is true, anything absent is not claimed.
    caps = PtzCapabilities.from_attributes({"MoveStatus": "1", "EFlip": "true", "Extra": "true"})
    assert caps == PtzCapabilities(move_status=True, eflip=True)
    assert caps.attributes() == {
        "MoveStatus": "true",
        "StatusPosition": "false",
        "EFlip": "true",
        "Reverse": "false",
    }
    # The virtual device claims what every camera behind it claims.
    other = PtzCapabilities(move_status=True, status_position=True)
    assert caps.shared_with(other) == PtzCapabilities(move_status=True)
    shown = parse_markup(ptz.service_capabilities(caps.shared_with(other)))
    assert dict(shown.attrib) == {
        "MoveStatus": "true",
        "StatusPosition": "false",
        "EFlip": "false",
        "Reverse": "false",
        "GetCompatibleConfigurations": "false",
    }


def test_camera_endpoint_keeps_the_password_out_of_its_repr() -> None:
    endpoint = CameraEndpoint("cam1", "192.0.2.10", 80, "admin", "cam-secret")
    assert "cam-secret" not in repr(endpoint) and "cam1" in repr(endpoint)


async def test_nvr_mode_prefixes_ptz_tokens_per_camera(gateway, sim_camera):
    nvr = gateway.nvr_port
    nodes = await call_ok(nvr, "<tptz:GetNodes/>", PTZ)
    assert [n.get("token") for n in nodes] == ["cam1_PTZNODETOKEN"]
    configs = await call_ok(nvr, "<tptz:GetConfigurations/>", PTZ)
    assert [c.get("token") for c in configs] == ["cam1_PTZToken"]
    assert configs[0].findtext(f"{{{TT}}}NodeToken") == "cam1_PTZNODETOKEN"
    node = await call_ok(
        nvr, "<tptz:GetNode><tptz:NodeToken>cam1_PTZNODETOKEN</tptz:NodeToken></tptz:GetNode>", PTZ
    )
    assert_valid("ptz", node)
    assert node[0].get("token") == "cam1_PTZNODETOKEN"
    options = await call_ok(
        nvr,
        "<tptz:GetConfigurationOptions><tptz:ConfigurationToken>cam1_PTZToken"
        "</tptz:ConfigurationToken></tptz:GetConfigurationOptions>",
        PTZ,
    )
    assert_valid("ptz", options)
    profiles = await call_ok(nvr, "<trt:GetProfiles/>", MEDIA)
    assert profiles[0].find(f"{{{TT}}}PTZConfiguration").get("token") == "cam1_PTZToken"
    codes = await call_fault(
        nvr, "<tptz:GetNode><tptz:NodeToken>PTZNODETOKEN</tptz:NodeToken></tptz:GetNode>", PTZ
    )
    assert "ter:NoEntity" in codes
    # The camera's own device keeps the camera's tokens.
    single = await call_ok(gateway.base, "<tptz:GetNodes/>", PTZ)
    assert [n.get("token") for n in single] == ["PTZNODETOKEN"]


# --------------------------------------------------------------------------- Imaging


@pytest.fixture
async def imaging(gateway, sim_camera):
    forwarder = OnvifImagingForwarder(
        CameraEndpoint("cam1", "127.0.0.1", sim_camera.http_port, "admin", "cam-pw")
    )
    await forwarder.connect()
    gateway.backend.imaging_forwarder = forwarder
    yield forwarder
    await forwarder.close()


def set_policy(gateway, policy: str) -> None:
    for dev in gateway.devices:
        dev.slots = [
            CameraSlot(dataclasses.replace(s.config, imaging=policy), s.backend) for s in dev.slots
        ]


async def test_imaging_is_advertised_only_when_the_camera_has_it(gateway, sim_camera):
    services = await call_ok(gateway.base, "<tds:GetServices/>")
    assert NS["timg"] not in [s.findtext(f"{{{TDS}}}Namespace") for s in services]
    codes = await call_fault(
        gateway.base,
        "<timg:GetImagingSettings><timg:VideoSourceToken>cam1_video</timg:VideoSourceToken>"
        "</timg:GetImagingSettings>",
        IMAGING,
    )
    assert "ter:ActionNotSupported" in codes


async def test_imaging_forwarded_read_only_by_default(gateway, sim_camera, imaging):
    from onvif import ONVIFCamera

    caps = await call_ok(
        gateway.base,
        "<tds:GetCapabilities><tds:Category>Imaging</tds:Category></tds:GetCapabilities>",
    )
    assert caps.findtext(f".//{{{TT}}}Imaging/{{{TT}}}XAddr").endswith(IMAGING)
    every = await call_ok(gateway.base, "<tds:GetCapabilities/>")
    assert_valid("devicemgmt", every)
    services = await call_ok(
        gateway.base,
        "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>",
    )
    assert_valid("devicemgmt", services)
    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        assert NS["timg"] in cam.xaddrs
        service = await cam.create_imaging_service()
        settings = await service.GetImagingSettings({"VideoSourceToken": "cam1_video"})
        assert settings.IrCutFilter == "AUTO" and settings.Brightness == 50.0
        options = await service.GetOptions({"VideoSourceToken": "cam1_video"})
        assert set(options.IrCutFilterModes) == {"ON", "OFF", "AUTO"}
        status = await service.GetStatus({"VideoSourceToken": "cam1_video"})
        assert status.FocusStatus20.MoveStatus == "IDLE"
        with pytest.raises(Exception, match="read-only"):
            await service.SetImagingSettings(
                {"VideoSourceToken": "cam1_video", "ImagingSettings": {"IrCutFilter": "OFF"}}
            )
        assert sim_camera.settings["imaging"]["IrCutFilter"] == "AUTO"
        with pytest.raises(Exception, match="no imaging for video source"):
            await service.GetStatus({"VideoSourceToken": "other_video"})
    finally:
        await cam.close()
    for op in (
        "<timg:GetServiceCapabilities/>",
        "<timg:GetImagingSettings><timg:VideoSourceToken>cam1_video</timg:VideoSourceToken></timg:GetImagingSettings>",
        "<timg:GetOptions><timg:VideoSourceToken>cam1_video</timg:VideoSourceToken></timg:GetOptions>",
        "<timg:GetMoveOptions><timg:VideoSourceToken>cam1_video</timg:VideoSourceToken></timg:GetMoveOptions>",
        "<timg:GetStatus><timg:VideoSourceToken>cam1_video</timg:VideoSourceToken></timg:GetStatus>",
    ):
        assert_valid("imaging", await call_ok(gateway.base, op, IMAGING))


async def test_imaging_changes_reach_the_camera_when_enabled(gateway, sim_camera, imaging):
    from onvif import ONVIFCamera

    set_policy(gateway, "enabled")
    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        service = await cam.create_imaging_service()
        # Home Assistant's IR lamp switch.
        await service.SetImagingSettings(
            {"VideoSourceToken": "cam1_video", "ImagingSettings": {"IrCutFilter": "OFF"}}
        )
        assert sim_camera.settings["imaging"]["IrCutFilter"] == "OFF"
        await service.Move(
            {"VideoSourceToken": "cam1_video", "Focus": {"Absolute": {"Position": 0.8}}}
        )
        status = await service.GetStatus({"VideoSourceToken": "cam1_video"})
        assert status.FocusStatus20.Position == pytest.approx(0.8)
        with pytest.raises(Exception, match=r"outside 0\.\.100"):
            await service.SetImagingSettings(
                {"VideoSourceToken": "cam1_video", "ImagingSettings": {"Brightness": 140}}
            )
    finally:
        await cam.close()
    set_policy(gateway, "disabled")
    services = await call_ok(gateway.base, "<tds:GetServices/>")
    assert NS["timg"] not in [s.findtext(f"{{{TDS}}}Namespace") for s in services]


# --------------------------------------------------------------------------- addresses


async def test_advertise_host_names_every_uri(gateway):
    dev = gateway.device("cam1")
    dev.advertise_host = "cams.example.net"
    try:
        services = await call_ok(gateway.base, "<tds:GetServices/>")
        xaddrs = [s.findtext(f"{{{TDS}}}XAddr") for s in services]
        assert all(x.startswith(f"http://cams.example.net:{gateway.base}/") for x in xaddrs)
        uri = await call_ok(
            gateway.base,
            "<tr2:GetStreamUri><tr2:Protocol>RtspUnicast</tr2:Protocol>"
            "<tr2:ProfileToken>cam1_main</tr2:ProfileToken></tr2:GetStreamUri>",
            MEDIA2,
        )
        assert uri.findtext(f"{{{TR2}}}Uri") == "rtsp://cams.example.net:8554/cam1/main"
    finally:
        dev.advertise_host = ""


def test_probe_with_2005_08_addressing_is_answered_in_kind():
    probe = (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:a="{WSA}" xmlns:d="{WSD}" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header>'
        "<a:MessageID>urn:uuid:1b7c8a2e-0000-4000-8000-000000000001</a:MessageID>"
        "<a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>"
        f"<a:Action>{WSD}/Probe</a:Action></s:Header>"
        "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    ).encode()
    parsed = Probe.parse(b"\n " + probe)
    assert parsed.addressing == WSA
    ep = DiscoveryEndpoint("urn:uuid:x", ("onvif://www.onvif.org/name/cam1",), ("http://h/",))
    assert parsed.matches(ep)
    reply = probe_matches(ep, parsed.message_id, (1, 1), parsed.addressing)
    assert parse_xml(reply).find(f".//{{{WSA}}}RelatesTo").text == parsed.message_id
    [match] = ProbeMatch.parse_all(reply)
    assert match.relates_to == parsed.message_id and match.address == "urn:uuid:x"


# --------------------------------------------------------------------------- push events


class Consumer:
    """An HTTP notification consumer (as Home Assistant's webhook) on ``host``."""

    def __init__(self, host: str, status: int = 200) -> None:
        self.host = host
        self.status = status
        self.bodies: asyncio.Queue[bytes] = asyncio.Queue()
        self.hits = 0

    async def start(self) -> str:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            await self.bodies.put(await request.read())
            if 300 <= self.status < 400:
                raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/api/webhook/onvif", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{self.host}:{port}/api/webhook/onvif"

    async def close(self) -> None:
        await self.runner.cleanup()


async def test_push_subscription_with_home_assistants_notification_manager(gateway):
    from onvif import ONVIFCamera

    consumer = Consumer("127.0.0.2")  # on the network the VMS reached the gateway from
    url = await consumer.start()
    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        manager = await cam.create_notification_manager(url, dt.timedelta(seconds=60), lambda: None)
        broker = gateway.device("cam1").events
        [sub] = broker.subscriptions.values()
        assert sub.delivery is not None
        # The current state arrives first (PropertyOperation Initialized) ...
        first = await asyncio.wait_for(consumer.bodies.get(), 10)
        parsed = manager.process(first)
        topics = sorted(m.Topic._value_1 for m in parsed.NotificationMessage)
        assert topics == [
            "tns1:RuleEngine/CellMotionDetector/Motion",
            "tns1:VideoSource/MotionAlarm",
        ]
        # ... then every change.
        gateway.backend.motion_source.set(True)
        changed = manager.process(await asyncio.wait_for(consumer.bodies.get(), 10))
        values = {m.Message._value_1.Data.SimpleItem[0].Value for m in changed.NotificationMessage}
        assert values == {"true"}
        await manager.stop()  # Unsubscribe
        assert broker.subscriptions == {}
    finally:
        await cam.close()
        await consumer.close()


async def subscribe_raw(port: int, address: str) -> bytes:
    body = (
        "<wsnt:Subscribe><wsnt:ConsumerReference>"
        f"<wsa:Address>{address}</wsa:Address></wsnt:ConsumerReference>"
        "<wsnt:InitialTerminationTime>PT60S</wsnt:InitialTerminationTime></wsnt:Subscribe>"
    )
    _, _, data = await post(
        port, envelope(body, security_header(USER, PASSWORD)), path="/onvif/events_service"
    )
    return data


async def test_push_consumers_are_held_to_the_vms_side(gateway):
    for address, reason in (
        ("http://127.0.0.1:9/hook", "camera network"),  # the camera's own address
        ("http://192.0.2.10/hook", "neither the subscriber"),
        ("http://user:pw@127.0.0.2/hook", "credentials"),
        ("ftp://127.0.0.2/hook", "http://"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
    ):
        data = await subscribe_raw(gateway.base, address)
        assert "ter:InvalidArgVal" in fault_codes(data), address
        assert reason in data.decode(), (address, data)
    assert gateway.device("cam1").events.subscriptions == {}


async def test_push_follows_no_redirect_and_gives_up_on_a_dead_consumer(gateway, monkeypatch):
    from gateway.onvif import push

    monkeypatch.setattr(push, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(push, "MAX_BATCH", 1)  # one message per batch: batches are countable
    consumer = Consumer("127.0.0.2", status=302)
    url = await consumer.start()
    try:
        data = await subscribe_raw(gateway.base, url)
        assert body_child(data).tag == f"{{{NS['wsnt']}}}SubscribeResponse"
        broker = gateway.device("cam1").events
        [sub] = broker.subscriptions.values()
        # Two initial messages and two for the change: four batches queued. Each is tried
        # ATTEMPTS times, never following the redirect; after MAX_FAILED_BATCHES (3) the
        # subscription ends with the fourth still queued (bounded, and then dropped).
        gateway.backend.motion_source.set(True)
        await asyncio.wait_for(sub.task, 10)
        assert len(sub.queue) == 1
        assert broker.subscriptions == {}
        assert consumer.hits == push.ATTEMPTS * push.MAX_FAILED_BATCHES
    finally:
        await consumer.close()


def test_imaging_policy_and_advertise_host_are_validated():
    from gateway.config import ConfigError, loads

    base = '[vms]\nusername = "v"\npassword = "p"\n'
    camera = '[[camera]]\nname = "c"\nvendor = "hikvision"\nhost = "10.0.0.9"\n'
    config = loads(base + '[server]\nadvertise_host = "cams.example.net"\n' + camera)
    assert config.server.advertise_host == "cams.example.net"
    assert config.cameras[0].imaging == "read-only"  # the default
    assert loads(base + camera + 'imaging = "enabled"\n').cameras[0].imaging == "enabled"
    refused = r"camera\[0\], line 4\): imaging: must be enabled, read-only"
    with pytest.raises(ConfigError, match=refused):
        loads(base + camera + 'imaging = "on"\n')
    with pytest.raises(ConfigError, match=r"server\.advertise_host"):
        loads(base + '[server]\nadvertise_host = "http://x/"\n' + camera)


def test_push_consumer_address_rules():
    from gateway.onvif.push import ConsumerRefused, check_address

    def check(address: str, subscriber: str = "10.1.1.7") -> None:
        check_address(
            address,
            subscriber=subscriber,
            local_ip="127.0.0.1",  # lo: 127.0.0.0/8 is "the network the VMS came from"
            camera_hosts=["127.0.0.9"],
            camera_subnets=["127.0.5.0/24"],
        )

    check("127.0.0.2")  # on the VMS-side network
    check("10.1.1.7")  # the subscriber itself
    for address, reason in (
        ("127.0.0.9", "camera network"),
        ("127.0.5.20", "camera network"),
        ("127.0.0.1", "the gateway itself"),
        ("10.1.1.8", "neither the subscriber"),
        ("224.0.0.251", "not a unicast host"),
        ("not-an-ip", "not an IP address"),
    ):
        with pytest.raises(ConsumerRefused, match=reason):
            check(address)


def test_default_gateway_is_read_for_one_interface_only(tmp_path):
    from gateway.onvif.netinfo import default_gateway

    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "cam0\t00000000\t0132A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # via 192.168.50.1
        "vms0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 10.0.0.0/24, no router
    )
    assert default_gateway("cam0", str(route)) == "192.168.50.1"
    # The VMS side has no default route of its own: the camera network's is not shown.
    assert default_gateway("vms0", str(route)) is None
    assert default_gateway("vms0", str(tmp_path / "missing")) is None
