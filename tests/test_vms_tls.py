"""TLS towards the VMS (issue 21): RTSPS and ONVIF over HTTPS, each through a real client.

Simulated cameras -> ``Gateway(config)`` with ``[server] rtsps_port`` and
``onvif_https_offset`` on loopback -> ffprobe plays rtsps:// with Digest credentials and the
generated certificate as its CA, a plain RTSP client on the TLS port fails cleanly, RTP over
UDP is refused on the TLS listener, onvif-zeep-async talks to the devices over HTTPS and
gets https XAddrs (and rtsps:// URIs when the gateway prefers them), and curl, pinned to
the certificate, asks Media2 for an RtspsUnicast URI that ffprobe then plays.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway import config as cfgmod
from gateway import tls
from gateway.config import ConfigError
from gateway.digest import DigestClient
from gateway.onvif.config import OnvifSettings
from gateway.onvif.core import VirtualDevice
from gateway.onvif.discovery import DiscoveryResponder
from gateway.onvif.xml import NS
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet
from tests.conftest import free_port, free_ports, gateway_config_text, require, run_tool
from tests.test_onvif_gateway import envelope, security_header
from tests.test_onvif_runtime import live, onvif_of

TLS_ONVIF_SERVICES = "\n[onvif]\ndiscovery = false\n"


def tls_config_text(
    fleet: SimFleet, tmp_path: Path, vms_password: str, *, server_extra: str = ""
) -> tuple[str, int]:
    """The fleet's gateway configuration with RTSPS and ONVIF over HTTPS on free ports;
    returns it and the first camera's HTTPS port."""
    count = len(fleet.cameras)
    ports = free_ports(2 * count)  # HTTP ports, then the HTTPS ones right after them
    text = gateway_config_text(
        fleet,
        tmp_path,
        vms_password,
        server_extra=f"rtsps_port = {free_port()}\nonvif_https_offset = {count}\n" + server_extra,
    )
    text = re.sub(r"onvif_base_port = \d+", f"onvif_base_port = {ports[0]}", text)
    return text + TLS_ONVIF_SERVICES, ports[count]


@pytest.fixture
async def tls_gateway(fleet: SimFleet, tmp_path: Path, vms_password: str) -> AsyncIterator[Gateway]:
    text, _ = tls_config_text(fleet, tmp_path, vms_password)
    gw = Gateway(cfgmod.loads(text, source="test.toml"))  # with the ONVIF service
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def certificate(gw: Gateway) -> Path:
    assert gw.vms_tls is not None
    return gw.vms_tls.cert


def rtsps_url(gw: Gateway, path: str, password: str | None) -> str:
    assert gw.rtsp is not None and gw.rtsp.tls_port is not None
    auth = f"vms:{password}@" if password is not None else ""
    return f"rtsps://{auth}127.0.0.1:{gw.rtsp.tls_port}{path}"


async def ffprobe(url: str, cert: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """ffprobe with TLS verification on, trusting exactly the gateway's certificate."""
    code, out, err = await run_tool(
        "ffprobe",
        "-v",
        "error",
        "-tls_verify",
        "1",
        "-ca_file",
        str(cert),
        *extra,
        "-show_streams",
        "-of",
        "json",
        url,
        timeout=45,
    )
    return code, (json.loads(out) if code == 0 else {}), err


# --------------------------------------------------------------------------- RTSPS


async def test_ffprobe_plays_rtsps_with_digest(tls_gateway: Gateway, vms_password: str) -> None:
    require("ffprobe")
    cert = certificate(tls_gateway)
    for path, codec in (("/hik1/main", "h264"), ("/dahua1/main", "hevc")):
        code, info, err = await ffprobe(rtsps_url(tls_gateway, path, vms_password), cert)
        assert code == 0, err
        assert [s["codec_name"] for s in info["streams"] if s["codec_type"] == "video"] == [codec]
    # Digest as on plain RTSP: no credentials, no stream.
    code, _, err = await ffprobe(rtsps_url(tls_gateway, "/hik1/main", None), cert)
    assert code != 0 and "401" in err


async def test_plain_rtsp_on_the_tls_port_fails_cleanly(
    tls_gateway: Gateway, vms_password: str
) -> None:
    require("ffprobe")
    assert tls_gateway.rtsp is not None and tls_gateway.rtsp.tls_port is not None
    port = tls_gateway.rtsp.tls_port
    # A raw RTSP request gets no RTSP answer: the connection just ends.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"OPTIONS rtsp://127.0.0.1:{port}/hik1/main RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 15)
    assert not data.startswith(b"RTSP/")
    writer.close()
    # A real client says so and gives up rather than hanging.
    code, _, err = await ffprobe(
        f"rtsp://vms:{vms_password}@127.0.0.1:{port}/hik1/main", certificate(tls_gateway)
    )
    assert code != 0, err
    # The listener is unharmed.
    code, _, err = await ffprobe(
        rtsps_url(tls_gateway, "/hik1/sub", vms_password), certificate(tls_gateway)
    )
    assert code == 0, err


async def rtsp_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    digest: DigestClient,
    method: str,
    uri: str,
    cseq: int,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {cseq}"]
    authorization = digest.authorization(method, uri)
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    status_line, *header_lines = head.decode().split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            found.setdefault(name.strip().lower(), value.strip())
    body = await reader.readexactly(int(found.get("content-length", "0")))
    return int(status_line.split()[1]), found, body


async def test_rtsps_refuses_udp_and_serves_interleaved(
    tls_gateway: Gateway, vms_password: str
) -> None:
    assert tls_gateway.rtsp is not None and tls_gateway.rtsp.tls_port is not None
    context = tls.client_context(certificate(tls_gateway))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", tls_gateway.rtsp.tls_port, ssl=context
    )
    base = f"rtsps://127.0.0.1:{tls_gateway.rtsp.tls_port}/hik1/main"
    digest = DigestClient("vms", vms_password, allow_basic=False)
    try:
        status, headers, _ = await rtsp_request(reader, writer, digest, "DESCRIBE", base, 1)
        assert status == 401
        digest.handle_challenge(headers["www-authenticate"])
        status, headers, sdp = await rtsp_request(reader, writer, digest, "DESCRIBE", base, 2)
        assert status == 200 and b"m=video" in sdp
        assert headers["content-base"].startswith("rtsps://")
        track = f"{base}/trackID=0"
        udp = {"Transport": "RTP/AVP;unicast;client_port=40000-40001"}
        status, _, _ = await rtsp_request(reader, writer, digest, "SETUP", track, 3, udp)
        assert status == 461
        # Offered both ways, the interleaved one is taken.
        both = {"Transport": "RTP/AVP;unicast;client_port=40000-40001,RTP/AVP/TCP;interleaved=0-1"}
        status, headers, _ = await rtsp_request(reader, writer, digest, "SETUP", track, 4, both)
        assert status == 200 and "interleaved=0-1" in headers["transport"]
        session = headers["session"].split(";")[0]
        status, _, _ = await rtsp_request(
            reader, writer, digest, "PLAY", base, 5, {"Session": session}
        )
        assert status == 200
        # Media arrives interleaved inside the TLS connection.
        marker = await asyncio.wait_for(reader.readexactly(4), 15)
        assert marker[0:1] == b"$" and marker[1] in (0, 1)
    finally:
        writer.close()


async def presented_fingerprint(port: int, cert: Path) -> str:
    """The SHA-256 fingerprint of the certificate a new TLS connection to ``port`` gets."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls.client_context(cert))
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return tls.fingerprint(ssl.DER_cert_to_PEM_cert(der).encode())
    finally:
        writer.close()


async def test_renewed_certificate_reaches_new_connections(tls_gateway: Gateway) -> None:
    assert tls_gateway.vms_tls is not None and tls_gateway.rtsp is not None
    assert tls_gateway.rtsp.tls_port is not None
    cert, key = tls_gateway.vms_tls.cert, tls_gateway.vms_tls.key
    https_port = onvif_of(tls_gateway).device("hik1").https_port
    assert https_port is not None
    old = tls_gateway.vms_tls.fingerprint
    assert await presented_fingerprint(tls_gateway.rtsp.tls_port, cert) == old
    # What an integrator's renewal does: new files in place; then a reload (the periodic
    # check would find them within a minute too).
    renewed = tls.generate(cert, key, ["127.0.0.1", "localhost"])
    await tls_gateway.reload(tls_gateway.site_config)
    assert tls_gateway.vms_tls.fingerprint == renewed.fingerprint != old
    assert await presented_fingerprint(tls_gateway.rtsp.tls_port, cert) == renewed.fingerprint
    assert await presented_fingerprint(https_port, cert) == renewed.fingerprint


# --------------------------------------------------------------------------- ONVIF over HTTPS


async def test_onvif_zeep_over_https(
    tls_gateway: Gateway, fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    from onvif import ONVIFCamera

    await live(tls_gateway, "hik1", "main")
    device = onvif_of(tls_gateway).device("hik1")
    assert device.https_port is not None
    https = f"https://127.0.0.1:{device.https_port}"
    cam = ONVIFCamera("https://127.0.0.1", device.https_port, "vms", vms_password, no_cache=True)
    try:
        await cam.update_xaddrs()
        assert cam.xaddrs[NS["trt"]] == f"{https}/onvif/media_service"
        assert cam.xaddrs[NS["tr2"]] == f"{https}/onvif/media2_service"
        devmgmt = await cam.create_devicemgmt_service()
        services = await devmgmt.GetServices({"IncludeCapability": False})
        assert {s.XAddr.split("/onvif/")[0] for s in services} == {https}
        caps = await devmgmt.GetCapabilities({"Category": "All"})
        assert caps.Device.XAddr == f"{https}/onvif/device_service"
        protocols = {p.Name: p.Port[0] for p in await devmgmt.GetNetworkProtocols()}
        assert protocols == {
            "HTTP": device.port,
            "HTTPS": device.https_port,
            "RTSP": device.rtsp_port,
        }
        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        uri = await media.GetStreamUri({"ProfileToken": profiles[0].token, "StreamSetup": setup})
        # Media1 has no way to ask for RTSPS: rtsp:// unless the gateway prefers RTSPS.
        assert uri.Uri.startswith("rtsp://127.0.0.1:")
        snapshot = await media.GetSnapshotUri({"ProfileToken": profiles[0].token})
        assert snapshot.Uri.startswith(f"{https}/onvif/snapshot/")
    finally:
        await cam.close()

    # Plain HTTP stays on its own port, with http XAddrs.
    plain = ONVIFCamera("127.0.0.1", device.port, "vms", vms_password, no_cache=True)
    try:
        await plain.update_xaddrs()
        assert plain.xaddrs[NS["trt"]].startswith(f"http://127.0.0.1:{device.port}/")
    finally:
        await plain.close()

    # With prefer_rtsps (applied by a reload), Media1 answers rtsps:// and ffprobe plays it.
    text, _ = tls_config_text(fleet, tmp_path, vms_password, server_extra="prefer_rtsps = true")
    current = tls_gateway.config.server
    text = re.sub(r"rtsps_port = \d+", f"rtsps_port = {current.rtsps_port}", text)
    # The [server] table comes first; the cameras' own rtsp_port lines stay as they are.
    text = re.sub(r"rtsp_port = \d+", f"rtsp_port = {current.rtsp_port}", text, count=1)
    text = re.sub(r"onvif_base_port = \d+", f"onvif_base_port = {current.onvif_base_port}", text)
    await tls_gateway.reload(cfgmod.loads(text, source="test.toml"))
    cam = ONVIFCamera("https://127.0.0.1", device.https_port, "vms", vms_password, no_cache=True)
    try:
        await cam.update_xaddrs()
        media = await cam.create_media_service()
        token = (await media.GetProfiles())[0].token
        uri = await media.GetStreamUri({"ProfileToken": token, "StreamSetup": setup})
    finally:
        await cam.close()
    assert tls_gateway.rtsp is not None
    assert uri.Uri == f"rtsps://127.0.0.1:{tls_gateway.rtsp.tls_port}/hik1/main"
    require("ffprobe")
    authed = uri.Uri.replace("rtsps://", f"rtsps://vms:{vms_password}@", 1)
    code, info, err = await ffprobe(authed, certificate(tls_gateway))
    assert code == 0, err
    assert info["streams"][0]["codec_name"] == "h264"


def soap(body: str, password: str | None = None) -> str:
    """A SOAP 1.2 request; with ``password``, signed with a WS-UsernameToken (curl's HTTP
    Digest sends its first POST without the body, which a SOAP service cannot parse)."""
    header = security_header("vms", password) if password is not None else ""
    return envelope(body, header).decode()


async def curl_soap(
    url: str, cert: Path, password: str, body: str, *, fail: bool = True
) -> tuple[int, str]:
    """POST a SOAP request with curl, pinned to ``cert``; the exit code and the answer."""
    code, out, err = await run_tool(
        "curl",
        "-sS",
        *(["--fail"] if fail else []),
        "--cacert",
        str(cert),
        "-H",
        "Content-Type: application/soap+xml; charset=utf-8",
        "--data-binary",
        soap(body, password),
        url,
        timeout=30,
    )
    assert code == 0 or not fail, err
    return code, out


async def curl_ok(url: str, cert: Path, password: str, body: str) -> etree._Element:
    return etree.fromstring((await curl_soap(url, cert, password, body))[1].encode())


async def test_curl_media2_rtsps_uri_played_by_ffprobe(
    tls_gateway: Gateway, vms_password: str
) -> None:
    require("curl", "ffprobe")
    await live(tls_gateway, "dahua1", "main")
    device = onvif_of(tls_gateway).device("dahua1")
    cert = certificate(tls_gateway)
    https = f"https://127.0.0.1:{device.https_port}"
    services = await curl_ok(
        f"{https}/onvif/device_service",
        cert,
        vms_password,
        "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>",
    )
    xaddrs = [x.text or "" for x in services.iter(f"{{{NS['tds']}}}XAddr")]
    assert xaddrs and all(x.startswith(f"{https}/onvif/") for x in xaddrs)

    def uri_request(protocol: str) -> str:
        return (
            f"<tr2:GetStreamUri><tr2:Protocol>{protocol}</tr2:Protocol>"
            "<tr2:ProfileToken>dahua1_main</tr2:ProfileToken></tr2:GetStreamUri>"
        )

    media2 = f"{https}/onvif/media2_service"
    answer = await curl_ok(media2, cert, vms_password, uri_request("RtspsUnicast"))
    uri = answer.findtext(f".//{{{NS['tr2']}}}Uri") or ""
    assert tls_gateway.rtsp is not None
    assert uri == f"rtsps://127.0.0.1:{tls_gateway.rtsp.tls_port}/dahua1/main"
    plain = await curl_ok(media2, cert, vms_password, uri_request("RTSP"))
    assert (plain.findtext(f".//{{{NS['tr2']}}}Uri") or "").startswith("rtsp://")
    code, info, err = await ffprobe(uri.replace("rtsps://", f"rtsps://vms:{vms_password}@"), cert)
    assert code == 0, err
    assert info["streams"][0]["codec_name"] == "hevc"
    # Without the certificate pinned, curl refuses the self-signed one.
    code, _, _ = await run_tool("curl", "-sS", "--fail", f"{https}/onvif/device_service")
    assert code != 0


async def test_https_only_on_the_devices_own_ports(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    """``onvif_http = false`` with offset 0: HTTPS on the usual ports, no plain HTTP."""
    require("curl")
    text = gateway_config_text(
        fleet, tmp_path, vms_password, server_extra="onvif_https_offset = 0\nonvif_http = false"
    )
    gw = Gateway(cfgmod.loads(text + TLS_ONVIF_SERVICES, source="test.toml"))
    await gw.start()
    try:
        await live(gw, "hik1", "main")
        device = onvif_of(gw).device("hik1")
        assert device.https_port == device.port and not device.http
        assert gw.rtsp is not None and gw.rtsp.tls_port is None  # RTSPS stays off
        assert DiscoveryResponder("127.0.0.1", [device]).endpoint(device).xaddrs == (
            f"https://127.0.0.1:{device.port}/onvif/device_service",
        )
        url = f"https://127.0.0.1:{device.port}/onvif/device_service"
        answer = await curl_ok(url, certificate(gw), vms_password, "<tds:GetSystemDateAndTime/>")
        assert answer.find(f".//{{{NS['tds']}}}SystemDateAndTime") is not None
        code, _, _ = await run_tool(
            "curl", "-sS", "--fail", "--data-binary", soap(""), f"http://127.0.0.1:{device.port}/"
        )
        assert code != 0
        # No RTSPS listener: Media2 refuses RtspsUnicast with the ONVIF fault.
        _, fault = await curl_soap(
            f"https://127.0.0.1:{device.port}/onvif/media2_service",
            certificate(gw),
            vms_password,
            "<tr2:GetStreamUri><tr2:Protocol>RtspsUnicast</tr2:Protocol>"
            "<tr2:ProfileToken>hik1_main</tr2:ProfileToken></tr2:GetStreamUri>",
            fail=False,
        )
        assert "InvalidStreamSetup" in fault and "RTSPS is not enabled" in fault
    finally:
        await gw.stop()


# --------------------------------------------------------------------------- configuration


def test_device_addresses_list_plain_then_https() -> None:
    device = VirtualDevice(
        name="cam1",
        slots=[],
        nvr=False,
        port=8000,
        rtsp_port=8554,
        username="vms",
        password="secret-enough",
        settings=OnvifSettings(),
        uuid="urn:uuid:00000000-0000-0000-0000-000000000001",
        https_port=8443,
    )
    assert device.xaddrs("192.0.2.5") == (
        "http://192.0.2.5:8000/onvif/device_service",
        "https://192.0.2.5:8443/onvif/device_service",
    )
    assert device.xaddrs("2001:db8::5")[1] == "https://[2001:db8::5]:8443/onvif/device_service"


BASE = """
[server]
{server}
[vms]
username = "vms"
password = "secret-enough"
[[camera]]
name = "cam1"
vendor = "generic"
host = "192.0.2.10"
username = "u"
password = "p"
main_url = "rtsp://192.0.2.10/main"
"""


def problems(server: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        cfgmod.loads(BASE.format(server=server))
    return dict(info.value.problems)


def test_tls_configuration_is_checked(tmp_path: Path) -> None:
    ok = cfgmod.loads(BASE.format(server="rtsps_port = 8322\nonvif_https_offset = 443"))
    assert ok.server.rtsps_port == 8322 and ok.server.onvif_https_port(8000) == 8443
    assert not cfgmod.loads(BASE.format(server="")).server.vms_tls  # off by default
    assert "workers = 1" in problems("rtsps_port = 8322\nworkers = 2")["server.rtsps_port"]
    assert "rtsps_port" in problems("prefer_rtsps = true")["server.prefer_rtsps"]
    assert "onvif_https_offset" in problems("onvif_http = false")["server.onvif_http"]
    assert "onvif_http = false" in problems("onvif_https_offset = 0")["server.onvif_https_offset"]
    (tmp_path / "c").write_text("x")
    (tmp_path / "k").write_text("x")
    own = f'tls_cert = "{tmp_path}/c"\ntls_key = "{tmp_path}/k"'
    assert "neither" in problems(own)["server.tls_cert"]
    assert "both" in problems(f'rtsps_port = 8322\ntls_cert = "{tmp_path}/c"')["server.tls_key"]
    clash = problems("rtsp_port = 8554\nonvif_https_offset = 554")
    assert "already used by server.rtsp_port" in clash["camera[0].onvif_port (HTTPS)"]
    assert "already used" in problems("rtsps_port = 8000")["camera[0].onvif_port"]


def test_generated_vms_certificate_names_the_vms_side(tmp_path: Path) -> None:
    first = tls.ensure_generated(tmp_path, ["192.0.2.5", "vms.example"], kind=tls.VMS)
    assert first.cert.name == "vms-tls.crt" and first.created
    assert {"192.0.2.5", "vms.example", "127.0.0.1"} <= set(first.names)
    assert first.key.stat().st_mode & 0o777 == 0o600
    kept = tls.ensure_generated(tmp_path, ["192.0.2.5"], kind=tls.VMS)
    assert not kept.created and kept.fingerprint == first.fingerprint
    # Served on another address now: a certificate that names it.
    moved = tls.ensure_generated(tmp_path, ["192.0.2.6"], kind=tls.VMS)
    assert moved.created and "192.0.2.6" in moved.names
    # The admin API's certificate is a file of its own.
    admin = tls.ensure_generated(tmp_path, ["192.0.2.6"], kind=tls.ADMIN)
    assert admin.cert.name == "admin-tls.crt" and admin.fingerprint != moved.fingerprint
    context = tls.client_context(moved.cert)
    assert context.verify_mode == ssl.CERT_REQUIRED


async def test_check_names_the_rtsps_listener_and_refuses_it_with_workers(tmp_path: Path) -> None:
    from tests.test_cli import gateway_cli

    path = tmp_path / "gateway.toml"
    path.write_text(BASE.format(server='bind = "192.0.2.5"\nrtsps_port = 8322'))
    code, out, err = await gateway_cli("check", "--config", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["rtsps"] == "rtsps://192.0.2.5:8322/"
    path.write_text(BASE.format(server="rtsps_port = 8322\nworkers = 2"))
    code, _, err = await gateway_cli("check", "--config", str(path))
    assert code != 0 and "rtsps_port: RTSPS needs workers = 1" in err
