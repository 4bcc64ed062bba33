"""The virtual devices against the two Node.js ONVIF clients: npm `onvif` and node-onvif."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import private_network
from tests.test_onvif_gateway import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    ClipBackend,
    free_port,
    gateway,
    sim_camera,
    streams,
)

NODE_DIR = Path(__file__).parent / "node"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "onvif").is_dir(),
    reason="node or tests/node/node_modules missing (cd tests/node && npm install)",
)


async def run_node(script: str, *args: str, timeout: float = 60) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert out, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_npm_onvif_full_session(gateway, sim_camera):  # noqa: F811
    result = await run_node("npm_onvif_client.js", "127.0.0.1", str(gateway.base), USER, PASSWORD)
    assert result["ok"], result.get("error")
    # GetServices lists Media2, so npm `onvif` uses it for everything it calls (issue 17).
    assert result["media2"] is True
    for step in ("getVideoEncoderConfigurationOptions", "getOSDs", "getOSDOptions"):
        assert result["steps"][step] == "ok", step
    assert result["profiles"] == ["cam1_main", "cam1_sub"]
    assert result["info"]["manufacturer"] == "HIKVISION"
    assert result["streamUri"] == "rtsp://127.0.0.1:8554/cam1/main"
    assert result["snapshotUri"] == f"http://127.0.0.1:{gateway.base}/onvif/snapshot/cam1_main.jpg"
    assert result["initialMessages"] == 2
    assert result["ptzMoveStatus"]["panTilt"] == "MOVING"
    assert not sim_camera.ptz_moving  # stopped again
    assert gateway.device("cam1").events.subscriptions == {}  # unsubscribed


async def test_node_onvif_init_and_profiles(gateway):  # noqa: F811
    xaddr = f"http://127.0.0.1:{gateway.base}/onvif/device_service"
    result = await run_node("node_onvif_client.js", xaddr, USER, PASSWORD)
    assert result["ok"], result.get("error")
    assert result["info"]["SerialNumber"] == "DS-2DE4425IW-DE20190512AAWRD12345678"
    rtsp = {p["token"]: p["rtsp"] for p in result["profiles"]}
    assert rtsp == {
        "cam1_main": "rtsp://127.0.0.1:8554/cam1/main",
        "cam1_sub": "rtsp://127.0.0.1:8554/cam1/sub",
    }
    # fetchSnapshot sends Basic (off by default) and falls back to the Digest challenge.
    assert result["snapshot"]["ok"], result["snapshot"]


async def test_npm_onvif_discovery_probe(streams, sim_camera):  # noqa: F811
    from gateway.config import loads
    from gateway.onvif.server import start_onvif

    base = free_port()
    config = loads(
        f'[server]\nbind = "127.0.0.1"\nonvif_base_port = {base}\n'
        f'[vms]\nusername = "{USER}"\npassword = "{PASSWORD}"\n'
        '[[camera]]\nname = "cam1"\nvendor = "hikvision"\nhost = "127.0.0.1"\n'
    )
    # npm onvif probes port 3702 only: gateway and client meet in a namespace of their own.
    with private_network():
        servers = await start_onvif(config, {"cam1": ClipBackend(streams, None, sim_camera)})
        try:
            result = await run_node("npm_onvif_discover.js", "2000", "lo")
        finally:
            await servers.close()
    ours = [f for f in result["found"] if f["address"] == servers.devices[0].uuid]
    assert ours, result
    assert ours[0]["xaddrs"] == f"http://127.0.0.1:{base}/onvif/device_service"
