"""Virtual ONVIF devices of the gateway against onvif-zeep-async, raw SOAP and the ONVIF XSDs.

The camera behind the virtual device is real as far as the ONVIF side can tell: its streams
are described from a clip encoded with PyAV and measured with ffprobe, its PTZ is a simulated
camera's own ONVIF PTZ service reached through the pass-through, its snapshot a real JPEG.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lxml import etree

from gateway.config import loads
from gateway.devices.onvif_forward import (
    CameraEndpoint,
    OnvifImagingForwarder,
    OnvifPtzForwarder,
)
from gateway.onvif.backend import DeviceIdentity, StreamInfo
from gateway.onvif.discovery import probe
from gateway.onvif.server import start_onvif
from gateway.onvif.xml import NS
from gateway.sim import onvif as sim_onvif
from gateway.sim.device import SimDevice

USER, PASSWORD = "vms", "vms-secret"
WSDL_DIR = Path(__import__("onvif").__file__).parent / "wsdl"
XS = "http://www.w3.org/2001/XMLSchema"
SOAP = "http://www.w3.org/2003/05/soap-envelope"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- real data


def encode_and_probe(tmp: Path, name: str, width: int, height: int, gop: int) -> StreamInfo:
    import av
    import numpy as np

    path = tmp / f"{name}.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"g": str(gop), "keyint_min": str(gop), "profile": "main", "bf": "0"}
        for i in range(20):
            img = np.full((height, width, 3), (i * 12) % 255, dtype=np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    info = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
            check=True,
            capture_output=True,
        ).stdout
    )
    s = info["streams"][0]
    num, den = (int(x) for x in s["avg_frame_rate"].split("/"))
    frames = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=key_frame",
            "-of",
            "csv=p=0",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    keys = [i for i, k in enumerate(frames) if k.startswith("1")]
    return StreamInfo(
        name=name,
        path=f"/cam1/{name}",
        codec=s["codec_name"].upper().replace("HEVC", "H265"),
        width=s["width"],
        height=s["height"],
        fps=num / den,
        bitrate_kbps=max(1, int(info["format"]["bit_rate"]) // 1000),
        gop=keys[1] - keys[0],
        profile=s["profile"],
    )


class ClipBackend:
    """A CameraBackend over measured clips, a simulated camera's PTZ and motion."""

    def __init__(self, streams: list[StreamInfo], ptz: OnvifPtzForwarder | None, sim: SimDevice):
        self._streams = streams
        self._ptz = ptz
        self.motion_source = sim_onvif.SimMotion(sim)
        self.reconnects = 0
        self.reconnected = asyncio.Event()
        self.imaging_forwarder: OnvifImagingForwarder | None = None

    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(
            "HIKVISION",
            "DS-2DE4425IW-DE",
            "V5.6.11 build 190426",
            "DS-2DE4425IW-DE20190512AAWRD12345678",
            "DS-2DE4425IW-DE",
            "44:19:b6:01:02:03",
        )

    def streams(self) -> list[StreamInfo]:
        return self._streams

    async def snapshot(self, stream: str) -> bytes:
        return await asyncio.to_thread(sim_onvif.encode_jpeg, 160, 120, 1)

    async def reconnect(self) -> None:
        self.reconnects += 1
        self.reconnected.set()

    def has_keyframe(self, stream: str) -> bool:
        return any(s.name == stream for s in self._streams)

    @property
    def ptz(self) -> OnvifPtzForwarder | None:
        return self._ptz

    @property
    def imaging(self) -> OnvifImagingForwarder | None:
        return self.imaging_forwarder

    @property
    def motion(self) -> sim_onvif.SimMotion:
        return self.motion_source


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> list[StreamInfo]:
    tmp = tmp_path_factory.mktemp("clips")
    return [encode_and_probe(tmp, "main", 320, 240, 10), encode_and_probe(tmp, "sub", 160, 120, 5)]


@pytest.fixture
async def sim_camera():
    device = SimDevice(
        name="ptzcam", vendor="hikvision", username="admin", password="cam-pw", ptz=True
    )
    app = web.Application()
    sim_onvif.install(
        app,
        device,
        rtsp_url_for=lambda s: (
            f"rtsp://127.0.0.1:554/Streaming/Channels/10{1 if s == 'main' else 2}"
        ),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    device.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield device
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@contextlib.asynccontextmanager
async def clip_gateway(
    streams: list[StreamInfo], sim_camera: SimDevice, *, vms_extra: str = ""
) -> AsyncIterator[Any]:
    """The virtual devices of one clip camera (and the NVR device), on an injected clock
    (``servers.clock.offset``); ``vms_extra``: more ``[vms]`` keys."""
    base, nvr = free_port(), free_port()
    config = loads(
        f"""
[server]
bind = "127.0.0.1"
rtsp_port = 8554
onvif_base_port = {base}
nvr_mode = true
[vms]
username = "{USER}"
password = "{PASSWORD}"
{vms_extra}
[[camera]]
name = "cam1"
vendor = "hikvision"
host = "127.0.0.1"
http_port = {sim_camera.http_port}
username = "admin"
password = "cam-pw"
ptz = "enabled"
[onvif]
auth_window = 30
discovery = false
nvr_port = {nvr}
location = "lab"
"""
    )
    forwarder = OnvifPtzForwarder(
        CameraEndpoint("cam1", "127.0.0.1", sim_camera.http_port, "admin", "cam-pw")
    )
    backend = ClipBackend(streams, forwarder, sim_camera)
    clock = Clock()
    servers = await start_onvif(config, {"cam1": backend}, clock=clock)
    servers.backend = backend  # type: ignore[attr-defined]
    servers.clock = clock  # type: ignore[attr-defined]
    servers.base = base  # type: ignore[attr-defined]
    servers.nvr_port = nvr  # type: ignore[attr-defined]
    try:
        yield servers
    finally:
        await servers.close()
        await forwarder.close()


@pytest.fixture
async def gateway(streams, sim_camera):
    async with clip_gateway(streams, sim_camera) as servers:
        yield servers


# --------------------------------------------------------------------------- raw SOAP


def security_header(
    user: str, password: str, *, created: str | None = None, nonce: bytes | None = None
) -> str:
    nonce = nonce or os.urandom(16)
    created = created or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    digest = base64.b64encode(
        hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    ).decode()
    # A default namespace, as Unifi Protect sends it: parsing must go by namespace.
    return (
        '<Security xmlns="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
        f"<UsernameToken><Username>{user}</Username>"
        '<Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">'
        f"{digest}</Password><Nonce>{base64.b64encode(nonce).decode()}</Nonce>"
        f'<Created xmlns="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">{created}</Created>'
        "</UsernameToken></Security>"
    )


def envelope(body: str, header: str = "") -> bytes:
    decls = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items() if p != "env")
    return f'<s:Envelope xmlns:s="{SOAP}" {decls}><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>'.encode()  # noqa: E501


async def post(
    port: int,
    data: bytes,
    *,
    path: str = "/onvif/device_service",
    ctype: str = "application/soap+xml; charset=utf-8",
    headers: dict | None = None,
):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{path}",
            data=data,
            headers={"Content-Type": ctype, **(headers or {})},
        ) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


def body_child(data: bytes) -> etree._Element:
    root = etree.fromstring(data)
    assert etree.QName(root).localname == "Envelope"
    return next(iter(root.find(f"{{{SOAP}}}Body")))


def fault_codes(data: bytes) -> list[str]:
    fault = body_child(data)
    assert etree.QName(fault).localname == "Fault"
    return [v.text for v in fault.iter(f"{{{SOAP}}}Value")]


_schemas: dict[str, etree.XMLSchema] = {}


def schema(wsdl: str) -> etree.XMLSchema:
    if wsdl not in _schemas:
        path = WSDL_DIR / f"{wsdl}.wsdl"
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        doc = etree.parse(str(path), parser)
        node = next(doc.iter(f"{{{XS}}}schema"))
        _schemas[wsdl] = etree.XMLSchema(
            etree.fromstring(etree.tostring(node), parser, base_url=str(path))
        )
    return _schemas[wsdl]


def assert_valid(wsdl: str, element: etree._Element) -> None:
    sch = schema(wsdl)
    doc = etree.ElementTree(copy.deepcopy(element))
    assert sch.validate(doc), f"{etree.QName(element).localname}: {sch.error_log}"


async def call_ok(port: int, body: str, path: str = "/onvif/device_service") -> etree._Element:
    status, _, data = await post(port, envelope(body, security_header(USER, PASSWORD)), path=path)
    assert status == 200, data.decode()
    return body_child(data)


DEVICE_OPS = [
    "<tds:GetSystemDateAndTime/>",
    "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>",
    "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>",
    "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>",
    "<tds:GetServiceCapabilities/>",
    "<tds:GetDeviceInformation/>",
    "<tds:GetScopes/>",
    "<tds:GetHostname/>",
    "<tds:GetNetworkInterfaces/>",
    "<tds:GetDNS/>",
    "<tds:GetNTP/>",
    "<tds:GetNetworkProtocols/>",
    "<tds:GetDiscoveryMode/>",
    "<tds:GetWsdlUrl/>",
    "<tds:GetUsers/>",
    "<tds:GetEndpointReference/>",
]
MEDIA_OPS = [
    "<trt:GetServiceCapabilities/>",
    "<trt:GetProfiles/>",
    "<trt:GetProfile><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetProfile>",
    "<trt:GetVideoSources/>",
    "<trt:GetVideoSourceConfigurations/>",
    "<trt:GetVideoSourceConfiguration><trt:ConfigurationToken>cam1_video_cfg</trt:ConfigurationToken></trt:GetVideoSourceConfiguration>",
    "<trt:GetVideoSourceConfigurationOptions/>",
    "<trt:GetCompatibleVideoSourceConfigurations><trt:ProfileToken>cam1_sub</trt:ProfileToken></trt:GetCompatibleVideoSourceConfigurations>",
    "<trt:GetVideoEncoderConfigurations/>",
    "<trt:GetVideoEncoderConfiguration><trt:ConfigurationToken>cam1_main_venc</trt:ConfigurationToken></trt:GetVideoEncoderConfiguration>",
    "<trt:GetVideoEncoderConfigurationOptions><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetVideoEncoderConfigurationOptions>",
    "<trt:GetCompatibleVideoEncoderConfigurations><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetCompatibleVideoEncoderConfigurations>",
    "<trt:GetGuaranteedNumberOfVideoEncoderInstances><trt:ConfigurationToken>cam1_video_cfg</trt:ConfigurationToken></trt:GetGuaranteedNumberOfVideoEncoderInstances>",
    "<trt:GetAudioSources/>",
    "<trt:GetAudioSourceConfigurations/>",
    "<trt:GetAudioEncoderConfigurations/>",
    "<trt:GetCompatibleAudioSourceConfigurations><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetCompatibleAudioSourceConfigurations>",
    "<trt:GetCompatibleAudioEncoderConfigurations><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetCompatibleAudioEncoderConfigurations>",
    "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetStreamUri>",
    "<trt:GetSnapshotUri><trt:ProfileToken>cam1_sub</trt:ProfileToken></trt:GetSnapshotUri>",
]


async def test_device_and_media_responses_validate_against_onvif_schemas(gateway):
    for op in DEVICE_OPS:
        assert_valid("devicemgmt", await call_ok(gateway.base, op))
    for op in MEDIA_OPS:
        assert_valid("media", await call_ok(gateway.base, op, "/onvif/media_service"))
    for op in (
        "<tev:GetServiceCapabilities/>",
        "<tev:GetEventProperties/>",
        "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>PT60S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
    ):
        assert_valid("events", await call_ok(gateway.base, op, "/onvif/events_service"))
    for op in (
        "<tptz:GetServiceCapabilities/>",
        "<tptz:GetNodes/>",
        "<tptz:GetConfigurations/>",
        "<tptz:GetStatus><tptz:ProfileToken>cam1_main</tptz:ProfileToken></tptz:GetStatus>",
        "<tptz:GetPresets><tptz:ProfileToken>cam1_main</tptz:ProfileToken></tptz:GetPresets>",
        "<tptz:GetConfigurationOptions><tptz:ConfigurationToken>PTZToken</tptz:ConfigurationToken></tptz:GetConfigurationOptions>",
        "<tptz:GetNode><tptz:NodeToken>PTZNODETOKEN</tptz:NodeToken></tptz:GetNode>",
    ):
        assert_valid("ptz", await call_ok(gateway.base, op, "/onvif/ptz_service"))


async def test_zeep_client_sees_the_camera_as_ingested(gateway, streams):
    from onvif import ONVIFCamera

    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        assert cam.xaddrs[NS["tr2"]] == f"http://127.0.0.1:{gateway.base}/onvif/media2_service"
        devmgmt = await cam.create_devicemgmt_service()
        info = await devmgmt.GetDeviceInformation()
        assert (info.Manufacturer, info.Model) == ("HIKVISION", "DS-2DE4425IW-DE")
        assert info.SerialNumber == "DS-2DE4425IW-DE20190512AAWRD12345678"
        scopes = [s.ScopeItem for s in await devmgmt.GetScopes()]
        assert "onvif://www.onvif.org/name/cam1" in scopes
        assert "onvif://www.onvif.org/location/lab" in scopes
        assert "onvif://www.onvif.org/hardware/DS-2DE4425IW-DE" in scopes
        nic = (await devmgmt.GetNetworkInterfaces())[0]
        assert nic.Info.HwAddress == "44:19:b6:01:02:03"
        assert nic.IPv4.Config.Manual[0].Address == "127.0.0.1"
        guid = (await devmgmt.GetEndpointReference()).GUID
        assert guid == gateway.device("cam1").uuid and guid.startswith("urn:uuid:")
        users = await devmgmt.GetUsers()
        assert [u.Username for u in users] == [USER]
        caps = await devmgmt.GetCapabilities({"Category": "All"})
        assert caps.PTZ.XAddr.endswith("/onvif/ptz_service")

        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        assert [p.token for p in profiles] == ["cam1_main", "cam1_sub"]
        for prof, stream in zip(profiles, streams, strict=True):
            enc = prof.VideoEncoderConfiguration
            assert (enc.Resolution.Width, enc.Resolution.Height) == (stream.width, stream.height)
            assert enc.RateControl.BitrateLimit == stream.bitrate_kbps
            assert enc.RateControl.FrameRateLimit == round(stream.fps)
            assert enc.H264.GovLength == stream.gop == (10 if stream.name == "main" else 5)
            assert prof.PTZConfiguration.NodeToken == "PTZNODETOKEN"
        uri = await media.GetStreamUri(
            {
                "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                "ProfileToken": "cam1_sub",
            }
        )
        assert uri.Uri == "rtsp://127.0.0.1:8554/cam1/sub"
        snap = await media.GetSnapshotUri({"ProfileToken": "cam1_main"})
        jpeg = await cam.get_snapshot("cam1_main")
        assert snap.Uri.endswith("/onvif/snapshot/cam1_main.jpg")
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"

        # SystemReboot reconnects the streams, nothing else.
        await devmgmt.SystemReboot()
        await asyncio.wait_for(gateway.backend.reconnected.wait(), 5)
        assert gateway.backend.reconnects == 1
    finally:
        await cam.close()


async def test_nvr_device_lists_every_camera_and_its_own_identity(gateway):
    profiles = await call_ok(gateway.nvr_port, "<trt:GetProfiles/>", "/onvif/media_service")
    assert [p.get("token") for p in profiles] == ["cam1_main", "cam1_sub"]
    info = await call_ok(gateway.nvr_port, "<tds:GetDeviceInformation/>")
    assert info.findtext(f"{{{NS['tds']}}}Model") == "ONVIF-Gateway-NVR"
    guid = (await call_ok(gateway.nvr_port, "<tds:GetEndpointReference/>")).findtext(
        f"{{{NS['tds']}}}GUID"
    )
    assert guid != gateway.device("cam1").uuid


async def test_media2_profiles_uris_and_encoders(gateway, streams):
    port = gateway.base
    profiles = await call_ok(
        port, "<tr2:GetProfiles><tr2:Type>All</tr2:Type></tr2:GetProfiles>", "/onvif/media2_service"
    )
    tr2, tt = NS["tr2"], NS["tt"]
    enc = profiles[0].find(f"{{{tr2}}}Configurations/{{{tr2}}}VideoEncoder")
    assert enc.get("GovLength") == str(streams[0].gop)
    assert enc.findtext(f"{{{tt}}}Encoding") == "H264"
    assert enc.find(f"{{{tt}}}RateControl").findtext(f"{{{tt}}}BitrateLimit") == str(
        streams[0].bitrate_kbps
    )
    assert profiles[0].find(f"{{{tr2}}}Configurations/{{{tr2}}}PTZ") is not None
    names_only = await call_ok(port, "<tr2:GetProfiles/>", "/onvif/media2_service")
    assert names_only[0].find(f"{{{tr2}}}Configurations") is None
    uri = await call_ok(
        port,
        "<tr2:GetStreamUri><tr2:Protocol>RtspUnicast</tr2:Protocol><tr2:ProfileToken>cam1_main</tr2:ProfileToken></tr2:GetStreamUri>",
        "/onvif/media2_service",
    )
    assert uri.findtext(f"{{{tr2}}}Uri") == "rtsp://127.0.0.1:8554/cam1/main"
    snap = await call_ok(
        port,
        "<tr2:GetSnapshotUri><tr2:ProfileToken>cam1_sub</tr2:ProfileToken></tr2:GetSnapshotUri>",
        "/onvif/media2_service",
    )
    assert snap.findtext(f"{{{tr2}}}Uri").endswith("/onvif/snapshot/cam1_sub.jpg")
    encs = await call_ok(port, "<tr2:GetVideoEncoderConfigurations/>", "/onvif/media2_service")
    assert [e.get("token") for e in encs] == ["cam1_main_venc", "cam1_sub_venc"]
    caps = await call_ok(port, "<tr2:GetServiceCapabilities/>", "/onvif/media2_service")
    assert caps[0].get("SnapshotUri") == "true"


async def test_h265_stream_is_reported_as_h265(gateway, streams):
    h265 = StreamInfo("main", "/cam1/main", "H265", 320, 240, 10.0, 300, 10, "Main")
    gateway.backend._streams = [h265, streams[1]]
    encs = await call_ok(
        gateway.base, "<tr2:GetVideoEncoderConfigurations/>", "/onvif/media2_service"
    )
    assert encs[0].findtext(f"{{{NS['tt']}}}Encoding") == "H265"
    assert encs[0].get("Profile") == "Main"


async def test_profile_changes_and_unknown_operations_get_proper_faults(gateway):
    status, headers, data = await post(
        gateway.base,
        envelope(
            "<trt:CreateProfile><trt:Name>SynoTestProfile</trt:Name></trt:CreateProfile>",
            security_header(USER, PASSWORD),
        ),
        path="/onvif/media_service",
        ctype="application/xml",
    )
    assert status == 500 and headers["Content-Type"].startswith("application/soap+xml")
    assert fault_codes(data) == ["env:Receiver", "ter:Action", "ter:MaxNVTProfiles"]
    status, _, data = await post(
        gateway.base,
        envelope("<tds:GetFooBar/>", security_header(USER, PASSWORD)),
        ctype="text/xml",
    )
    assert fault_codes(data) == ["env:Receiver", "ter:ActionNotSupported"]
    for op in (
        "<tds:SetSystemFactoryDefault><tds:FactoryDefault>Hard</tds:FactoryDefault></tds:SetSystemFactoryDefault>",
        "<tds:SetHostname><tds:Name>x</tds:Name></tds:SetHostname>",
        "<tds:UpgradeSystemFirmware/>",
    ):
        status, _, data = await post(gateway.base, envelope(op, security_header(USER, PASSWORD)))
        assert status == 400 and "ter:OperationProhibited" in fault_codes(data)
    # Dispatch is on the Body, whatever the SOAPAction header claims.
    status, _, data = await post(
        gateway.base,
        envelope("<tds:GetHostname/>"),
        headers={"SOAPAction": "http://www.onvif.org/ver10/device/wsdl/GetUsers"},
    )
    assert status == 200 and etree.QName(body_child(data)).localname == "GetHostnameResponse"


# --------------------------------------------------------------------------- authentication


async def test_authentication_matrix(gateway):
    port = gateway.base
    op = "<tds:GetDeviceInformation/>"
    status, headers, data = await post(port, envelope(op))
    assert status == 401 and "ter:NotAuthorized" in fault_codes(data)
    assert headers["WWW-Authenticate"].startswith("Digest ")
    status, _, data = await post(port, envelope(op, security_header(USER, "wrong")))
    assert status == 400 and fault_codes(data) == ["env:Sender", "ter:NotAuthorized"]
    token = security_header(USER, PASSWORD)
    assert (await post(port, envelope(op, token)))[0] == 200
    # The token signs no body: a sniffed one replayed with an operation that changes state
    # is refused, even at once from the same address (where a repeated Get* may pass, for
    # libonvif's sake: tests/test_onvif_security.py).
    reboot = envelope("<tds:SystemReboot/>", token)
    status, _, data = await post(port, reboot)
    assert status == 400 and "ter:NotAuthorized" in fault_codes(data)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _, data = await post(port, envelope(op, security_header(USER, PASSWORD, created=old)))
    assert status == 400 and "ter:NotAuthorized" in fault_codes(data)
    for pre in (
        "<tds:GetSystemDateAndTime/>",
        "<tds:GetCapabilities/>",
        "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>",
        "<tds:GetHostname/>",
        "<tds:GetWsdlUrl/>",
        "<tds:GetEndpointReference/>",
    ):
        status, _, data = await post(port, envelope(pre))
        assert status == 200, pre
    assert (
        await post(port, envelope("<tev:GetServiceCapabilities/>"), path="/onvif/events_service")
    )[0] == 200
    # HTTP Digest as the alternative.
    from gateway.digest import DigestClient

    client = DigestClient(USER, PASSWORD, allow_basic=False)
    client.handle_challenge([headers["WWW-Authenticate"]])
    auth = client.authorization("POST", "/onvif/device_service")
    status, _, data = await post(port, envelope(op), headers={"Authorization": auth})
    assert (
        status == 200 and etree.QName(body_child(data)).localname == "GetDeviceInformationResponse"
    )
    # The same answer replayed is refused (401 and a new challenge, not stale); the next
    # nonce count is accepted.
    status, headers, _ = await post(port, envelope(op), headers={"Authorization": auth})
    assert status == 401 and "stale" not in headers["WWW-Authenticate"]
    auth = client.authorization("POST", "/onvif/device_service")
    assert (await post(port, envelope(op), headers={"Authorization": auth}))[0] == 200


async def test_repeated_failures_are_slowed_down(gateway):
    bad = envelope("<tds:GetUsers/>", security_header(USER, "nope"))
    timings = []
    for _ in range(6):
        start = time.monotonic()
        assert (await post(gateway.base, bad))[0] == 400
        timings.append(time.monotonic() - start)
    assert max(timings[:3]) < 0.2
    assert timings[-1] >= 0.45  # 0.25 s doubled per failure past the third


# --------------------------------------------------------------------------- hostile input

HOSTILE = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>&c;</x></s:Body></s:Envelope>',  # noqa: E501
    "external entity": b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>&x;</x></s:Body></s:Envelope>',  # noqa: E501
    "doctype": b'<!DOCTYPE s SYSTEM "http://127.0.0.1:9/x.dtd"><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>',
    "deep": b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
    + b"<a>" * 10000
    + b"</a>" * 10000
    + b"</s:Body></s:Envelope>",
    "garbage": b"\x00\xff not xml at all",
    "not soap": b"<html><body>hi</body></html>",
    "empty body": b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>',
}


async def test_hostile_soap_is_refused_quickly(gateway):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, data in HOSTILE.items():
        start = time.monotonic()
        status, _, reply = await post(gateway.base, data)
        assert status == 400, name
        assert "ter:WellFormed" in fault_codes(reply), name
        assert time.monotonic() - start < 1.0, name
    huge = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        + b"x" * (10 * 1024 * 1024)
        + b"</s:Body></s:Envelope>"
    )
    start = time.monotonic()
    status, _, reply = await post(gateway.base, huge)
    assert status == 413 and time.monotonic() - start < 2.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


# --------------------------------------------------------------------------- events


async def test_pullpoint_round_trip_with_zeep(gateway):
    from onvif import ONVIFCamera

    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        events = await cam.create_events_service()
        sub = await events.CreatePullPointSubscription({"InitialTerminationTime": "PT120S"})
        assert sub.TerminationTime - sub.CurrentTime == dt.timedelta(seconds=120)
        # As onvif-zeep-async's PullPointManager does: the subscription's own address.
        address = sub.SubscriptionReference.Address._value_1
        assert "/onvif/subscription/" in address
        cam.xaddrs[f"{NS['tev']}/PullPointSubscription"] = address
        pull = await cam.create_pullpoint_service()
        first = await pull.PullMessages({"Timeout": dt.timedelta(seconds=5), "MessageLimit": 10})
        topics = sorted(m.Topic._value_1 for m in first.NotificationMessage)
        assert topics == [
            "tns1:RuleEngine/CellMotionDetector/Motion",
            "tns1:VideoSource/MotionAlarm",
        ]
        assert all(
            m.Message._value_1.PropertyOperation == "Initialized" for m in first.NotificationMessage
        )

        # Held until the motion arrives, then returned at once.
        waiter = asyncio.ensure_future(
            pull.PullMessages({"Timeout": dt.timedelta(seconds=60), "MessageLimit": 10})
        )
        await asyncio.sleep(0.2)
        assert not waiter.done()
        start = time.monotonic()
        gateway.backend.motion_source.set(True)
        got = await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - start < 2
        data_items = [m.Message._value_1.Data.SimpleItem[0] for m in got.NotificationMessage]
        assert {(d.Name, d.Value) for d in data_items} == {("State", "true"), ("IsMotion", "true")}
        sources = {m.Message._value_1.Source.SimpleItem[0].Value for m in got.NotificationMessage}
        assert sources == {"cam1_video", "cam1_video_cfg"}

        # Nothing queued: held until the Timeout, then empty.
        start = time.monotonic()
        empty = await pull.PullMessages({"Timeout": dt.timedelta(seconds=1), "MessageLimit": 10})
        assert 0.9 <= time.monotonic() - start < 3 and not empty.NotificationMessage

        await pull.SetSynchronizationPoint()
        sync = await pull.PullMessages({"Timeout": dt.timedelta(seconds=1), "MessageLimit": 10})
        assert len(sync.NotificationMessage) == 2

        subscription = await cam.create_subscription_service("PullPointSubscription")
        absolute = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        renewed = await subscription.Renew({"TerminationTime": absolute})
        assert abs((renewed.TerminationTime - renewed.CurrentTime).total_seconds() - 300) < 3
        await subscription.Unsubscribe()
        with pytest.raises(Exception, match="no such subscription"):
            await pull.PullMessages({"Timeout": dt.timedelta(seconds=1), "MessageLimit": 10})
    finally:
        await cam.close()


async def test_subscriptions_expire(gateway):
    created = await call_ok(
        gateway.base,
        "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>PT10S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
        "/onvif/events_service",
    )
    address = created.findtext(f".//{{{NS['wsa']}}}Address")
    path = address.split(str(gateway.base), 1)[1]
    broker = gateway.device("cam1").events
    assert len(broker.subscriptions) == 1
    gateway.clock.offset = 11.0
    broker.prune(gateway.clock())
    assert broker.subscriptions == {}
    status, _, data = await post(
        gateway.base,
        envelope(
            "<tev:PullMessages><tev:Timeout>PT1S</tev:Timeout><tev:MessageLimit>1</tev:MessageLimit></tev:PullMessages>",
            security_header(USER, PASSWORD),
        ),
        path=path,
    )
    assert status == 400 and "ter:InvalidArgVal" in fault_codes(data)


# --------------------------------------------------------------------------- PTZ


async def test_ptz_is_forwarded_to_the_camera(gateway, sim_camera):
    from onvif import ONVIFCamera

    cam = ONVIFCamera("127.0.0.1", gateway.base, USER, PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        ptz = await cam.create_ptz_service()
        nodes = await ptz.GetNodes()
        assert nodes[0].token == "PTZNODETOKEN"
        options = await ptz.GetConfigurationOptions({"ConfigurationToken": "PTZToken"})
        assert options.Spaces.ContinuousPanTiltVelocitySpace[0].URI.endswith("VelocityGenericSpace")
        await ptz.AbsoluteMove(
            {
                "ProfileToken": "cam1_main",
                "Position": {"PanTilt": {"x": 0.25, "y": -0.5}, "Zoom": {"x": 0.5}},
            }
        )
        assert sim_camera.ptz_position == [0.25, -0.5, 0.5]
        await ptz.RelativeMove(
            {"ProfileToken": "cam1_main", "Translation": {"PanTilt": {"x": 0.25, "y": 0.5}}}
        )
        assert sim_camera.ptz_position[:2] == [0.5, 0.0]
        await ptz.ContinuousMove(
            {"ProfileToken": "cam1_main", "Velocity": {"PanTilt": {"x": -1.0, "y": 0.0}}}
        )
        status = await ptz.GetStatus({"ProfileToken": "cam1_main"})
        assert status.MoveStatus.PanTilt == "MOVING"
        await ptz.Stop({"ProfileToken": "cam1_main", "PanTilt": True, "Zoom": True})
        assert not sim_camera.ptz_moving
        token = await ptz.SetPreset({"ProfileToken": "cam1_main", "PresetName": "door"})
        assert sim_camera.presets[token][0] == "door"
        await ptz.GotoHomePosition({"ProfileToken": "cam1_main"})
        assert sim_camera.ptz_position == [0.0, 0.0, 0.0]
        await ptz.GotoPreset({"ProfileToken": "cam1_main", "PresetToken": token})
        assert sim_camera.ptz_position[:2] != [0.0, 0.0]
        presets = await ptz.GetPresets({"ProfileToken": "cam1_main"})
        assert [p.Name for p in presets] == ["door"]
        await ptz.RemovePreset({"ProfileToken": "cam1_main", "PresetToken": token})
        assert sim_camera.presets == {}
        # The camera's own faults come back as faults.
        with pytest.raises(Exception, match="no preset"):
            await ptz.GotoPreset({"ProfileToken": "cam1_main", "PresetToken": "404"})
    finally:
        await cam.close()


async def test_ptz_policy_no_presets(gateway, sim_camera):
    gateway.backend._ptz.presets_allowed = False
    status, _, data = await post(
        gateway.base,
        envelope(
            "<tptz:SetPreset><tptz:ProfileToken>cam1_main</tptz:ProfileToken></tptz:SetPreset>",
            security_header(USER, PASSWORD),
        ),
        path="/onvif/ptz_service",
    )
    assert status == 400 and "ter:OperationProhibited" in fault_codes(data)
    assert sim_camera.presets == {}
    await call_ok(
        gateway.base,
        "<tptz:GotoHomePosition><tptz:ProfileToken>cam1_main</tptz:ProfileToken></tptz:GotoHomePosition>",
        "/onvif/ptz_service",
    )


# --------------------------------------------------------------------------- discovery


async def test_ws_discovery_hello_probe_bye(streams, sim_camera):
    import struct

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # A port of the test's own, not 3702, which something else on the host may hold: the
    # listener takes one first, the gateway joins it there (both with SO_REUSEPORT).
    listener.bind(("239.255.255.250", 0))
    port = listener.getsockname()[1]
    listener.setsockopt(
        socket.IPPROTO_IP,
        socket.IP_ADD_MEMBERSHIP,
        struct.pack("4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton("127.0.0.1")),
    )
    listener.setblocking(False)
    base = free_port()
    config = loads(
        f'[server]\nbind = "127.0.0.1"\nonvif_base_port = {base}\ndiscovery_port = {port}\n[vms]\nusername = "{USER}"\npassword = "{PASSWORD}"\n[[camera]]\nname = "cam1"\nvendor = "hikvision"\nhost = "127.0.0.1"\n'  # noqa: E501
    )
    backend = ClipBackend(streams, None, sim_camera)
    loop = asyncio.get_running_loop()
    servers = await start_onvif(config, {"cam1": backend})
    try:
        uuid = servers.device("cam1").uuid
        # Other devices on this host may announce themselves too: wait for ours.
        hello = await asyncio.wait_for(_receive_with(loop, listener, b"/Hello<", uuid), 5)
        assert uuid.encode() in hello
        matches = await probe("127.0.0.1", timeout=1.0, port=port)
        ours = [m for m in matches if m.address == uuid]
        assert ours and ours[0].xaddrs == (f"http://127.0.0.1:{base}/onvif/device_service",)
        assert "tds:Device" in ours[0].types
        directed = await probe("127.0.0.1", timeout=0.5, target="127.0.0.1", types="", port=port)
        assert any(m.address == uuid for m in directed)
    finally:
        await servers.close()
    bye = await asyncio.wait_for(_receive_with(loop, listener, b"/Bye<", uuid), 5)
    assert uuid.encode() in bye
    listener.close()


async def _receive_with(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, marker: bytes, uuid: str
) -> bytes:
    while True:
        data = await loop.sock_recv(sock, 65536)
        if marker in data and uuid.encode() in data:
            return data
