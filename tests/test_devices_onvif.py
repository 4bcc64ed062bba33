"""The ONVIF device client against simulated cameras' own ONVIF services, and hostile ones.

The simulated camera's ONVIF face (gateway.sim.onvif) is served next to its vendor face on
loopback; faults are played on the ONVIF paths by the simulator's own fault player
(httpauth.play_faults), the same one the vendor faces use.
"""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web
from lxml import etree

from gateway.config import load
from gateway.devices.errors import (
    DeviceAuthError,
    DeviceConnectionError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeoutError,
    DeviceUnsupportedError,
)
from gateway.devices.factory import client_for
from gateway.devices.http import CameraHttp
from gateway.devices.onvif_client import OnvifClient, WithOnvif
from gateway.devices.soap import DEVICE_PATH, CameraSoap
from gateway.policy.audit import run_audit, run_enforce
from gateway.policy.db import PolicyStore
from gateway.sim import httpauth
from gateway.sim import onvif as sim_onvif
from gateway.sim.device import SimDevice
from gateway.soap import NS, SOAP12, SoapFault, el
from gateway.store import Store
from tests.conftest import free_port
from tests.test_policy_support import INSTALLERS, PASSWORD, make_device

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "gateway/policy/audit.schema.json").read_text())


def _faults_on_onvif(device: SimDevice) -> web.middleware:
    @web.middleware
    async def play(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if request.path.startswith("/onvif/"):
            faulted = await httpauth.play_faults(request, device)
            if faulted is not None:
                return faulted
        return await handler(request)

    return play


@contextlib.asynccontextmanager
async def onvif_cameras(
    *devices: SimDevice, vendor_face: bool = False, onvif_face: bool = True
) -> AsyncIterator[list[int]]:
    """Serve each device's ONVIF face (and optionally its vendor face) on 127.0.0.1."""
    runners: list[web.AppRunner] = []
    ports: list[int] = []
    try:
        for device in devices:
            app = web.Application(middlewares=[_faults_on_onvif(device)])
            httpauth.setup(app, device)
            if vendor_face:
                INSTALLERS[device.vendor](app, device)
            if onvif_face:
                sim_onvif.install(
                    app, device, rtsp_url_for=lambda stream: f"rtsp://127.0.0.1:554/{stream}"
                )
            runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            device.http_port = runner.addresses[0][1]
            ports.append(device.http_port)
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()


def _client(port: int, *, password: str = PASSWORD, timeout: float = 2.0) -> OnvifClient:
    return OnvifClient("cam", "127.0.0.1", port, "admin", password, timeout=timeout)


@pytest.mark.parametrize(
    ("vendor", "version", "build"),
    [("hikvision", "V5.5.800", "build 210628"), ("dahua", "2.800.0000016.0.R", "2020-06-05")],
)
async def test_inventory_through_onvif(vendor: str, version: str, build: str) -> None:
    device = make_device("cam", vendor)
    async with onvif_cameras(device) as (port,):
        client = _client(port)
        try:
            identity = await client.device_info()
            settings = await client.read_settings()
        finally:
            await client.close()
    # The manufacturer ONVIF reports decides the vendor, so advisories can be matched.
    assert identity.vendor == vendor
    assert (identity.model, identity.serial, identity.mac) == (
        device.model,
        device.serial,
        device.mac,
    )
    assert (identity.firmware, identity.build) == (version, build)
    assert settings["onvif.Discovery.Mode"] == "NonDiscoverable"
    assert settings["onvif.NTP.FromDHCP"] == "false"
    assert settings["onvif.NTP.Manual"] == ""
    assert settings["onvif.DateTimeType"] == "NTP"
    scopes = [v for k, v in settings.items() if k.startswith("onvif.Scopes[")]
    assert f"onvif://www.onvif.org/hardware/{device.model}" in scopes
    assert settings["onvif.NetworkInterfaces[0].HwAddress"] == device.mac
    assert settings["onvif.Profiles[0].Encoding"] == "H264"
    assert settings["onvif.Profiles[0].Resolution"] == "1920x1080"
    assert settings["onvif.Profiles[1].Resolution"] == "640x360"
    assert PASSWORD not in json.dumps(settings)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("unauthorized", DeviceAuthError),
        ("garbage", DeviceProtocolError),
        ("html", DeviceProtocolError),
        ("hang", DeviceTimeoutError),
        ("reset", DeviceConnectionError),
        ("wrong-password", DeviceAuthError),
    ],
)
async def test_faults_are_per_camera_errors(fault: str, error: type[DeviceError]) -> None:
    device = make_device("cam", "hikvision")
    async with onvif_cameras(device) as (port,):
        if fault == "wrong-password":
            client = _client(port, password="not-" + PASSWORD)
        else:
            device.faults.add(fault)
            client = _client(port, timeout=0.5)
        try:
            with pytest.raises(error) as info:
                await client.device_info()
        finally:
            await client.close()
    assert info.value.camera == "cam"
    assert str(info.value).startswith("camera cam: ONVIF ")
    assert PASSWORD not in str(info.value)


async def test_no_camera_listening_is_a_connection_error() -> None:
    client = _client(free_port())
    try:
        with pytest.raises(DeviceConnectionError, match="cannot connect"):
            await client.device_info()
    finally:
        await client.close()


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&lol2;</s:Body>
</s:Envelope>"""


@pytest.mark.parametrize("answer", ["entities", "huge", "huge-chunked", "not-found"])
async def test_hostile_answers_are_refused(answer: str) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if answer == "entities":
            return web.Response(body=BOMB, content_type="application/soap+xml")
        if answer == "not-found":
            return web.Response(status=404, text="404 Not Found", content_type="text/html")
        filler = b"<a>" + b"x" * 65536 + b"</a>"
        if answer == "huge":
            return web.Response(body=filler * 40, content_type="application/soap+xml")
        response = web.StreamResponse(headers={"Content-Type": "application/soap+xml"})
        await response.prepare(request)
        for _ in range(40):  # chunked: no Content-Length to refuse up front
            await response.write(filler)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/onvif/device_service", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = _client(runner.addresses[0][1])
    expected = DeviceUnsupportedError if answer == "not-found" else DeviceProtocolError
    try:
        with pytest.raises(expected) as info:
            await client.device_info()
    finally:
        await client.close()
        await runner.cleanup()
    if answer.startswith("huge"):
        assert "larger than" in info.value.message or "bytes" in info.value.message
    if answer == "entities":
        assert "not a SOAP reply" in info.value.message


def _config(tmp_path: Path, cameras: list[tuple[str, str, int]], policy: str = "") -> Path:
    text = textwrap.dedent(
        f"""
        state_dir = "{tmp_path / "state"}"
        [vms]
        username = "vms"
        password = "vms-password-123"
        """
    )
    for name, vendor, port in cameras:
        text += textwrap.dedent(
            f"""
            [[camera]]
            name = "{name}"
            vendor = "{vendor}"
            host = "127.0.0.1"
            http_port = {port}
            main_url = "rtsp://127.0.0.1:554/{name}"
            username = "admin"
            password = "{PASSWORD}"
            """
        )
    text += textwrap.dedent(
        """
        [policy]
        request_timeout = 0.5
        [policy.telemetry]
        ntp_server = "127.0.0.1"
        """
    )
    text += textwrap.dedent(policy)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


async def test_generic_cameras_are_audited_through_onvif(tmp_path: Path) -> None:
    old_dahua = make_device("old", "dahua")  # 2.800.0000016.0.R, build 2020-06-05
    other = make_device("other", "hikvision")
    broken = make_device("broken", "hikvision")
    async with onvif_cameras(old_dahua, other, broken) as ports:
        broken.faults.add("hang")
        policy = """
        [[policy.allow]]
        id = "cloud.not_checkable"
        cameras = ["other"]
        expires = 2099-01-01
        reason = "P2P checked off in the web UI on site"
        """
        names = ("old", "other", "broken")
        cameras = [(name, "generic", port) for name, port in zip(names, ports, strict=True)]
        config = load(_config(tmp_path, cameras, policy))
        store = Store.in_state_dir(config.state_dir)
        try:
            report = await run_audit(config, store)
            data = report.to_json()
            jsonschema.validate(data, SCHEMA)
            by_name = {c.name: c for c in report.cameras}
            old = {f.id: f for f in by_name["old"].findings}
            # Firmware checked as the Dahua ONVIF says it is.
            assert "CVE-2022-30563" in old and old["CVE-2022-30563"].kind == "vulnerability"
            # NTP as ONVIF reports it: not the gateway; fixed by hand, not by enforce.
            ntp = old["onvif.NTP.Manual"]
            assert (ntp.current, ntp.desired) == ("", "127.0.0.1")
            assert "enforce" not in ntp.action
            # What ONVIF cannot show is reported, never passed silently.
            for feature in ("cloud", "upnp", "ddns", "telnet", "ssh", "email", "ftp"):
                finding = old[f"{feature}.not_checkable"]
                assert (finding.severity, finding.status, finding.current) == (
                    "info",
                    "open",
                    "unknown",
                )
            assert "discovery.not_checkable" not in old  # allowed by default, and visible
            others = {f.id: f for f in by_name["other"].findings}
            assert others["cloud.not_checkable"].status == "accepted"
            assert by_name["old"].status == "non_compliant"
            # The hanging camera is a per-camera error; the others were audited.
            assert by_name["broken"].status == "error"
            assert by_name["broken"].error is not None
            assert by_name["broken"].error.kind == "timeout"
            inventory = PolicyStore(store).snapshot("old")
            assert inventory is not None and inventory["identity"]["serial"] == old_dahua.serial
            assert inventory["settings"]["onvif.Discovery.Mode"] == "NonDiscoverable"

            # Enforce changes nothing through ONVIF and logs no change it did not make.
            enforced = await run_enforce(config, store)
            jsonschema.validate(enforced.to_json(), SCHEMA)
            assert all(not c.changes for c in enforced.cameras)
            assert PolicyStore(store).audit_log() == []
            text = json.dumps(data) + json.dumps(enforced.to_json())
            assert PASSWORD not in text
        finally:
            store.close()
    for path in Path(config.state_dir).iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path


async def test_vendor_inventory_gains_what_onvif_tells(tmp_path: Path) -> None:
    with_onvif = make_device("lobby", "hikvision")
    without_onvif = make_device("gate", "dahua")
    async with (
        onvif_cameras(with_onvif, vendor_face=True) as (port_a,),
        onvif_cameras(without_onvif, vendor_face=True, onvif_face=False) as (port_b,),
    ):
        config = load(
            _config(tmp_path, [("lobby", "hikvision", port_a), ("gate", "dahua", port_b)])
        )
        lobby = client_for(config.camera("lobby"), timeout=2.0)
        gate = client_for(config.camera("gate"), timeout=2.0)
        assert isinstance(lobby, WithOnvif) and isinstance(gate, WithOnvif)
        try:
            settings = await lobby.read_settings()
            assert settings["EZVIZ.enabled"] == "true"  # the vendor API, as before
            assert settings["onvif.Manufacturer"] == "HIKVISION"
            assert settings["onvif.NTP.FromDHCP"] == "false"
            assert f"onvif://www.onvif.org/name/{with_onvif.name}" in settings.values()
            assert lobby.onvif_error is None
            # No ONVIF service: the vendor inventory alone, and no error for the camera.
            plain = await gate.read_settings()
            assert plain["T2UServer.Enable"] == "true"
            assert not any(k.startswith("onvif.") for k in plain)
            assert gate.onvif_error is not None and "HTTP 404" in gate.onvif_error
            identity = await gate.device_info()
            assert identity.mac == without_onvif.mac
        finally:
            await lobby.close()
            await gate.close()


async def test_tokens_are_dated_by_the_cameras_clock() -> None:
    """A camera whose clock is hours behind ours refuses tokens dated by ours; the client
    reads the camera's clock first, as real cameras with a narrow window need."""
    device = make_device("cam", "generic")
    device.settings["clock_offset"] = -3 * 3600.0
    async with onvif_cameras(device) as (port,):
        client = _client(port)
        try:
            identity = await client.device_info()
        finally:
            await client.close()
        assert identity.serial == device.serial
        # The same request dated by our clock is refused: the test can tell the difference.
        http = CameraHttp("cam", "127.0.0.1", port, "admin", PASSWORD, timeout=2.0)
        soap = CameraSoap(http, "admin", PASSWORD)
        try:
            with pytest.raises(SoapFault) as refused:
                await soap.call(
                    soap.url(DEVICE_PATH),
                    "GetDeviceInformation",
                    NS["tds"],
                    el("tds:GetDeviceInformation"),
                    read_timeout=2.0,
                )
        finally:
            await http.close()
    assert "ter:NotAuthorized" in refused.value.subcodes


def test_camera_onvif_clients_do_not_load_zeep() -> None:
    """zeep and onvif-zeep-async are the tests' ONVIF client, never the gateway's."""
    code = (
        "import sys\n"
        "import gateway.devices.onvif_client, gateway.devices.onvif_forward\n"
        "import gateway.devices.events, gateway.devices.factory\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zeep', 'onvif'))\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    # Nor does any module of the gateway import them, however late.
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("zeep", "onvif"), f"{path}: imports {name}"


async def test_older_camera_found_through_get_capabilities() -> None:
    """A camera without GetServices (a SOAP 1.1 fault) is found through GetCapabilities, and
    the media address it names (not reachable from here) is pointed at the address used."""
    seen: list[str] = []
    media_ns = "http://www.onvif.org/ver10/media/wsdl"

    def answer(body: str, soap11: bool = False) -> web.Response:
        ns = "http://schemas.xmlsoap.org/soap/envelope/" if soap11 else SOAP12
        return web.Response(
            body=f'<e:Envelope xmlns:e="{ns}"><e:Body>{body}</e:Body></e:Envelope>'.encode(),
            status=500 if "Fault" in body else 200,
            content_type="application/soap+xml",
        )

    async def device(request: web.Request) -> web.Response:
        operation = etree.QName(next(iter(etree.fromstring(await request.read())[-1]))).localname
        seen.append(operation)
        tds = f'xmlns:tds="{NS["tds"]}" xmlns:tt="{NS["tt"]}"'
        if operation == "GetSystemDateAndTime":
            return answer(
                f"<tds:GetSystemDateAndTimeResponse {tds}><tds:SystemDateAndTime>"
                "<tt:DateTimeType>Manual</tt:DateTimeType><tt:UTCDateTime><tt:Date><tt:Year>2024"
                "</tt:Year><tt:Month>1</tt:Month><tt:Day>2</tt:Day></tt:Date><tt:Time><tt:Hour>3"
                "</tt:Hour><tt:Minute>4</tt:Minute><tt:Second>5</tt:Second></tt:Time>"
                "</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
            )
        if operation == "GetServices":
            return answer(
                "<e:Fault><faultcode>e:Client</faultcode><faultstring>Method not implemented"
                "</faultstring></e:Fault>",
                soap11=True,
            )
        if operation == "GetCapabilities":
            return answer(
                f"<tds:GetCapabilitiesResponse {tds}><tds:Capabilities><tt:Media><tt:XAddr>"
                "http://10.255.255.1/onvif/Media</tt:XAddr></tt:Media></tds:Capabilities>"
                "</tds:GetCapabilitiesResponse>"
            )
        if operation != "GetDeviceInformation":
            return answer(
                '<e:Fault xmlns:ter="http://www.onvif.org/ver10/error"><e:Code><e:Value>'
                "e:Receiver</e:Value><e:Subcode><e:Value>ter:ActionNotSupported</e:Value>"
                "</e:Subcode></e:Code><e:Reason><e:Text>no</e:Text></e:Reason></e:Fault>"
            )
        return answer(
            f"<tds:GetDeviceInformationResponse {tds}><tds:Manufacturer>Acme</tds:Manufacturer>"
            "<tds:Model>Old-1</tds:Model><tds:FirmwareVersion>1.0</tds:FirmwareVersion>"
            "<tds:SerialNumber>S1</tds:SerialNumber></tds:GetDeviceInformationResponse>"
        )

    async def media(request: web.Request) -> web.Response:
        seen.append("media")
        return answer(
            f'<trt:GetProfilesResponse xmlns:trt="{media_ns}" xmlns:tt="{NS["tt"]}">'
            '<trt:Profiles token="p0"><tt:Name>main</tt:Name></trt:Profiles>'
            "</trt:GetProfilesResponse>"
        )

    app = web.Application()
    app.router.add_post("/onvif/device_service", device)
    app.router.add_post("/onvif/Media", media)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = _client(runner.addresses[0][1])
    try:
        identity = await client.device_info()
        settings = await client.read_settings()
    finally:
        await client.close()
        await runner.cleanup()
    assert (identity.vendor, identity.model, identity.serial) == ("generic", "Old-1", "S1")
    assert seen[:3] == ["GetSystemDateAndTime", "GetServices", "GetCapabilities"]
    assert seen.count("GetCapabilities") == 1  # services found once per client
    assert settings["onvif.Profiles[0].Name"] == "main"
    assert settings["onvif.DateTimeType"] == "Manual"
    # What the camera does not support (ActionNotSupported) is left out, not an error.
    assert "onvif.NTP.FromDHCP" not in settings and "onvif.Discovery.Mode" not in settings
