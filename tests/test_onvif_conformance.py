"""ONVIF conformance matrix: every client that installs here against every kind of virtual
device, each operation those clients call, pass/fail in one table (tests/onvif_matrix.py
writes it under the pytest temporary directory and prints it in the terminal summary).

Devices (simulated cameras behind a running ``Gateway`` in NVR mode): a Hikvision H.264
camera, a Dahua H.265 camera, a Hikvision PTZ camera, and the NVR-mode device over all three.
Clients: onvif-zeep-async with Home Assistant's and Frigate's call sequences, npm ``onvif``,
``node-onvif`` (with its snapshot fetch: Basic first, then Digest), python-requests with
HTTPDigestAuth in one Session, curl --digest, and curl -u (Basic, refused with the Digest
challenge as ``[vms] allow_basic`` is off) and --anyauth. Debian's onvif-util
needs network namespaces (it finds devices by multicast with loopback off): it runs in
tests/test_onvif_util.py and appears here as n/a. The rows "adopted at its own address" come
from tests/test_onvif_camera_address.py (per-camera addresses, in network namespaces).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import config as cfgmod
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet, default_stream_specs
from tests.conftest import gateway_config_text, run_tool
from tests.onvif_matrix import RESULTS, record
from tests.test_onvif_gateway import envelope
from tests.test_onvif_node import NODE_DIR, run_node
from tests.test_onvif_runtime import live, onvif_of

TIMG = "http://www.onvif.org/ver20/imaging/wsdl"
DEVICES = ("Hikvision H.264", "Dahua H.265", "PTZ camera", "NVR mode")


class Lab:
    def __init__(self, gw: Gateway, password: str) -> None:
        self.gw = gw
        self.password = password
        service = onvif_of(gw)
        assert service.nvr is not None
        self.ports = {
            "Hikvision H.264": service.cameras["hik2"].device.port,
            "Dahua H.265": service.cameras["dahua1"].device.port,
            "PTZ camera": service.cameras["hik1"].device.port,
            "NVR mode": service.nvr.device.port,
        }


@pytest.fixture
async def lab(camera_password: str, tmp_path: Path, vms_password: str) -> AsyncIterator[Lab]:
    fleet = SimFleet.build(
        hikvision=2,
        dahua=1,
        password=camera_password,
        specs=default_stream_specs("test"),
        motion_interval=1.0,
        ptz=True,  # hik1
    )
    await fleet.start()
    text = gateway_config_text(fleet, tmp_path, vms_password, server_extra="nvr_mode = true")
    gw = Gateway(cfgmod.loads(text, source="conformance.toml"))
    await gw.start()
    try:
        for cam in ("hik1", "hik2", "dahua1"):
            await live(gw, cam, "main")
        # PTZ and Imaging are found by background probes of the cameras' own ONVIF.
        service = onvif_of(gw)
        backend = service.cameras["hik1"].backend
        assert backend is not None and backend._ptz is not None
        await asyncio.wait_for(backend._ptz.settled.wait(), 30)
        for entry in service.cameras.values():
            assert entry.backend is not None and entry.backend._imaging is not None
            await asyncio.wait_for(entry.backend._imaging.settled.wait(), 30)
        yield Lab(gw, vms_password)
    finally:
        await gw.stop()
        await fleet.stop()


async def check(client: str, device: str, operation: str, job: Callable[[], Awaitable[Any]]) -> Any:
    """Run one operation and record it."""
    try:
        result = await job()
    except Exception as exc:
        record(client, device, operation, "fail", f"{type(exc).__name__}: {exc}")
        return None
    record(client, device, operation, "pass")
    return result


def failures(client: str) -> list[str]:
    return [
        f"{r.operation} on {r.device}: {r.detail}"
        for r in RESULTS
        if r.client == client and r.result == "fail"
    ]


# --------------------------------------------------------------------------- onvif-zeep-async


async def home_assistant(lab: Lab, device: str) -> None:
    """homeassistant/components/onvif: config flow, device setup, events, switches."""
    from onvif import ONVIFCamera

    client = "zeep: Home Assistant"
    cam = ONVIFCamera("127.0.0.1", lab.ports[device], "vms", lab.password, no_cache=True)
    try:
        await check(client, device, "GetServices (update_xaddrs)", cam.update_xaddrs)
        dev = await cam.create_devicemgmt_service()
        await check(client, device, "GetSystemDateAndTime", dev.GetSystemDateAndTime)
        await check(client, device, "GetDeviceInformation", dev.GetDeviceInformation)
        await check(client, device, "GetNetworkInterfaces", dev.GetNetworkInterfaces)
        await check(client, device, "GetCapabilities", dev.GetCapabilities)
        media = await cam.create_media_service()
        profiles = await check(client, device, "GetProfiles", media.GetProfiles) or []
        h264 = [p for p in profiles if p.VideoEncoderConfiguration.Encoding == "H264"]
        token = (h264 or profiles)[0].token if profiles else "none"
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        await check(
            client,
            device,
            "GetStreamUri",
            lambda: media.GetStreamUri({"StreamSetup": setup, "ProfileToken": token}),
        )

        async def snapshot() -> None:
            jpeg = await cam.get_snapshot(token)
            assert jpeg and jpeg[:2] == b"\xff\xd8", "no JPEG"

        await check(client, device, "GetSnapshotUri + snapshot", snapshot)
        events = await cam.create_events_service()
        await check(client, device, "GetEventProperties", events.GetEventProperties)
        await check(client, device, "Subscribe (webhook)", lambda: webhook(cam))

        async def pullpoint() -> None:
            manager = await cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
            pull = manager.get_service()
            got = await pull.PullMessages({"Timeout": dt.timedelta(seconds=5), "MessageLimit": 10})
            assert got.NotificationMessage, "no initial motion state"
            await manager.shutdown()

        await check(client, device, "PullPoint (fallback)", pullpoint)
        if TIMG in cam.xaddrs:
            imaging = await cam.create_imaging_service()
            source = profiles[0].VideoSourceConfiguration.SourceToken
            await check(
                client,
                device,
                "Imaging GetImagingSettings (IR lamp switch)",
                lambda: imaging.GetImagingSettings({"VideoSourceToken": source}),
            )
        else:
            record(client, device, "Imaging GetImagingSettings (IR lamp switch)", "fail",
                   "Imaging not advertised")  # fmt: skip
    finally:
        await cam.close()


async def webhook(cam: Any) -> None:
    """Home Assistant's webhook: Subscribe, then Notify POSTs (127.0.0.2: the VMS side)."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await got.put(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/api/webhook/onvif", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        manager = await cam.create_notification_manager(
            f"http://127.0.0.2:{port}/api/webhook/onvif", dt.timedelta(seconds=60), lambda: None
        )
        parsed = manager.process(await asyncio.wait_for(got.get(), 10))
        assert parsed.NotificationMessage, "Notify without messages"
        await manager.stop()
    finally:
        await runner.cleanup()


async def frigate(lab: Lab, device: str) -> None:
    """frigate/ptz/onvif.py: profiles, then PTZ with autotracking's calls."""
    from onvif import ONVIFCamera

    client = "zeep: Frigate"
    cam = ONVIFCamera("127.0.0.1", lab.ports[device], "vms", lab.password, no_cache=True)
    try:
        await cam.update_xaddrs()
        media = await cam.create_media_service()
        profiles = await check(client, device, "GetProfiles", media.GetProfiles) or []
        ptz_profiles = [p for p in profiles if getattr(p, "PTZConfiguration", None)]
        if not ptz_profiles:
            record(client, device, "PTZ (profile with PTZConfiguration)", "n/a", "no PTZ")
            return
        profile = ptz_profiles[0]
        ptz = await cam.create_ptz_service()

        async def capabilities() -> None:
            from zeep.helpers import serialize_object

            # The WSDL onvif-zeep-async ships predates MoveStatus: zeep keeps it among the
            # extra attributes, where Frigate's key search finds it.
            caps = serialize_object(await ptz.GetServiceCapabilities())
            extra = caps.get("_attr_1") or {}
            assert extra.get("MoveStatus") == "true", f"MoveStatus not claimed: {caps}"

        await check(client, device, "PTZ GetServiceCapabilities (MoveStatus)", capabilities)
        config_token = profile.PTZConfiguration.token
        await check(
            client,
            device,
            "PTZ GetConfigurationOptions",
            lambda: ptz.GetConfigurationOptions({"ConfigurationToken": config_token}),
        )
        tok = {"ProfileToken": profile.token}
        await check(client, device, "PTZ GetStatus", lambda: ptz.GetStatus(tok))
        await check(client, device, "PTZ GetPresets", lambda: ptz.GetPresets(tok))
        await check(
            client,
            device,
            "PTZ ContinuousMove",
            lambda: ptz.ContinuousMove({**tok, "Velocity": {"PanTilt": {"x": 0.2, "y": 0}}}),
        )
        await check(client, device, "PTZ Stop", lambda: ptz.Stop({**tok, "PanTilt": True}))
        await check(
            client,
            device,
            "PTZ RelativeMove",
            lambda: ptz.RelativeMove({**tok, "Translation": {"PanTilt": {"x": 0.1, "y": 0}}}),
        )
    finally:
        await cam.close()


# --------------------------------------------------------------------------- Node.js


async def npm_onvif(lab: Lab, device: str) -> None:
    client = "npm onvif (Media2)"
    result = await run_node(
        "npm_onvif_client.js", "127.0.0.1", str(lab.ports[device]), "vms", lab.password
    )
    for step, outcome in result["steps"].items():
        record(client, device, step, "pass" if outcome == "ok" else "fail", outcome)


async def node_onvif(lab: Lab, device: str) -> None:
    client = "node-onvif"
    xaddr = f"http://127.0.0.1:{lab.ports[device]}/onvif/device_service"
    result = await run_node("node_onvif_client.js", xaddr, "vms", lab.password)
    ok = result["ok"] and all(p["rtsp"] for p in result.get("profiles", []))
    record(
        client,
        device,
        "init (GetCapabilities, GetProfiles, GetStreamUri, GetSnapshotUri)",
        "pass" if ok else "fail",
        str(result.get("error") or ""),
    )
    snapshot = result.get("snapshot") or {}
    record(
        client,
        device,
        "fetchSnapshot (Basic refused, Digest fallback)",
        "pass" if snapshot.get("ok") else "fail",
        str(snapshot.get("error") or ""),
    )


# --------------------------------------------------------------------------- HTTP Digest


GET_INFO = envelope("<tds:GetDeviceInformation/>")


async def requests_digest(lab: Lab, device: str) -> None:
    import requests
    from requests.auth import HTTPDigestAuth

    client = "python-requests HTTPDigestAuth"
    base = f"http://127.0.0.1:{lab.ports[device]}"
    # One Session keeps its nonce across requests, as VMS HTTP stacks do (its expiry is
    # tested with an injected clock in tests/test_onvif_http_auth.py).
    session = requests.Session()
    session.auth = HTTPDigestAuth("vms", lab.password)

    def soap() -> None:
        resp = session.post(
            f"{base}/onvif/device_service",
            data=GET_INFO,
            headers={"Content-Type": "application/soap+xml"},
            timeout=10,
        )
        assert resp.status_code == 200 and b"GetDeviceInformationResponse" in resp.content, (
            resp.status_code
        )

    def snapshot() -> None:
        token = next(iter(onvif_tokens(lab, device)))
        resp = session.get(f"{base}/onvif/snapshot/{token}.jpg", timeout=10)
        assert resp.status_code == 200 and resp.content[:2] == b"\xff\xd8", resp.status_code

    with session:
        await check(client, device, "POST GetDeviceInformation", lambda: asyncio.to_thread(soap))
        await check(client, device, "GET snapshot", lambda: asyncio.to_thread(snapshot))
        await check(client, device, "POST again (kept nonce)", lambda: asyncio.to_thread(soap))


def onvif_tokens(lab: Lab, device: str) -> list[str]:
    service = onvif_of(lab.gw)
    for dev in service.devices:
        if dev.port == lab.ports[device]:
            return [p.token for p in dev.profiles()]
    raise LookupError(device)


async def curl_auth(lab: Lab, device: str, tmp: Path, client: str) -> None:
    """curl --digest or --anyauth: SOAP POST (an empty-body first request) and snapshot."""
    base = f"http://127.0.0.1:{lab.ports[device]}"
    body = tmp / "get-info.xml"
    body.write_bytes(GET_INFO)
    scheme = client.split()[1]
    common = ("curl", "-sS", scheme, "-u", f"vms:{lab.password}", "--max-time", "10")

    async def soap() -> None:
        code, out, err = await run_tool(
            *common,
            *("-H", "Content-Type: application/soap+xml", "--data-binary", f"@{body}"),
            f"{base}/onvif/device_service",
        )
        assert code == 0 and "GetDeviceInformationResponse" in out, err or out[:200]

    async def snapshot() -> None:
        token = onvif_tokens(lab, device)[0]
        jpeg = tmp / f"{token}.jpg"
        code, _, err = await run_tool(
            *common, "-o", str(jpeg), "-w", "%{http_code}", f"{base}/onvif/snapshot/{token}.jpg"
        )
        assert code == 0 and jpeg.read_bytes()[:2] == b"\xff\xd8", err

    await check(client, device, "POST GetDeviceInformation", soap)
    await check(client, device, "GET snapshot", snapshot)


async def curl_basic(lab: Lab, device: str) -> None:
    """curl -u sends Basic; with allow_basic off it must get 401 and the Digest challenge
    (never 400), so a client that can fall back does (curl does with --anyauth)."""
    client = "curl -u (Basic)"
    token = onvif_tokens(lab, device)[0]
    url = f"http://127.0.0.1:{lab.ports[device]}/onvif/snapshot/{token}.jpg"

    async def refused_with_challenge() -> None:
        argv = ("curl", "-sS", "-u", f"vms:{lab.password}", "--max-time", "10", "-o", "/dev/null")
        code, out, err = await run_tool(*argv, "-D", "-", url)
        assert code == 0, err
        assert out.startswith("HTTP/1.1 401"), out[:100]
        assert "www-authenticate: digest " in out.lower(), out[:400]

    await check(client, device, "GET snapshot: 401 + Digest challenge", refused_with_challenge)


# --------------------------------------------------------------------------- the matrix


CLIENTS = ["zeep: Home Assistant", "zeep: Frigate", "npm onvif (Media2)", "node-onvif"]
CLIENTS += ["python-requests HTTPDigestAuth", "curl --digest", "curl --anyauth"]
CLIENTS += ["curl -u (Basic)", "onvif-util"]


@pytest.mark.parametrize("client", CLIENTS)
async def test_client_against_every_virtual_device(lab: Lab, client: str, tmp_path: Path):
    if client == "onvif-util":
        for device in DEVICES:
            for operation in ("discover (-a)", "get profiles, get rtsp", "get network"):
                record(client, device, operation, "n/a", "runs in tests/test_onvif_util.py")
        pytest.skip("onvif-util runs in tests/test_onvif_util.py (network namespaces)")
    node_client = client in ("npm onvif (Media2)", "node-onvif")
    if node_client and (shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir()):
        pytest.skip("node or tests/node/node_modules missing (cd tests/node && npm ci)")
    if client.startswith("curl") and shutil.which("curl") is None:
        pytest.skip("needs curl")
    for device in DEVICES:
        if client == "zeep: Home Assistant":
            await home_assistant(lab, device)
        elif client == "zeep: Frigate":
            await frigate(lab, device)
        elif client == "npm onvif (Media2)":
            await npm_onvif(lab, device)
        elif client == "node-onvif":
            await node_onvif(lab, device)
        elif client == "python-requests HTTPDigestAuth":
            await requests_digest(lab, device)
        elif client == "curl -u (Basic)":
            await curl_basic(lab, device)
        else:
            await curl_auth(lab, device, tmp_path, client)
    assert not failures(client), failures(client)
