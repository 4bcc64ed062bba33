"""``onvif-gateway discover`` against simulated cameras that answer WS-Discovery like real
ones: the printed ``[[camera]]`` blocks load as configuration, vendors are told from one
unauthenticated request, and the exit codes say found / none / failure."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway import config as cfgmod
from gateway.onvif.commands import camera_name, tell_vendor, vendor_from_answer
from gateway.sim.runner import SimFleet, default_stream_specs
from tests.conftest import free_port, run_tool

REPO = Path(__file__).resolve().parent.parent


# The simulated cameras answer WS-Discovery on a port of their own, not 3702, which
# something else on the host may hold; `discover --port` probes it.
DISCOVERY_PORT = free_port(socket.SOCK_DGRAM)


@pytest.fixture
async def fleet(camera_password: str) -> AsyncIterator[SimFleet]:
    fleet = SimFleet.build(
        hikvision=1, dahua=1, password=camera_password, specs=default_stream_specs("test")
    )
    for cam in fleet.cameras:
        cam.device.settings["onvif_discovery"] = True
        cam.device.settings["onvif_discovery_port"] = DISCOVERY_PORT
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def discover(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_tool(
        sys.executable,
        "-m",
        "gateway",
        "discover",
        "--port",
        str(DISCOVERY_PORT),
        *args,
        timeout=60,
        env={"PYTHONPATH": str(REPO), **(env or {})},
    )


def ours(fleet: SimFleet, port: int) -> bool:
    return any(cam.device.http_port == port for cam in fleet.cameras)


async def test_blocks_for_every_camera_load_as_configuration(fleet: SimFleet) -> None:
    code, out, err = await discover("--address", "127.0.0.1", "--timeout", "1.5")
    assert code == 0, err
    # Other devices may answer on loopback too; keep the blocks of our simulated cameras.
    blocks = [b for b in out.split("\n\n") if "[[camera]]" in b]
    mine = [
        b
        for b in blocks
        if any(f"http_port = {c.device.http_port}\n" in b + "\n" for c in fleet.cameras)
    ]
    assert len(mine) == 2, out
    env_values = {}
    for block in mine:
        for line in block.splitlines():
            if line.startswith("password_env"):
                env_values[json.loads(line.split("=", 1)[1])] = "secret"
    os.environ.update(env_values)
    try:
        config = cfgmod.loads(
            '[vms]\nusername = "vms"\npassword = "x"\n\n' + "\n\n".join(mine), source="paste"
        )
    finally:
        for name in env_values:
            os.environ.pop(name, None)
    by_port = {cam.http_port: cam for cam in config.cameras}
    for sim in fleet.cameras:
        cam = by_port[sim.device.http_port]
        assert cam.vendor == sim.device.vendor
        assert cam.host == "127.0.0.1"
        # From the name scope; other simulated cameras on a shared host may answer the same
        # probe under the same name, and discover then numbers the later ones (name-2).
        assert re.fullmatch(rf"{sim.device.name}(-\d+)?", cam.name), cam.name
        assert cam.extra["model"] == sim.device.model
        assert cam.password.reveal() == "secret"
    assert "camera(s) found from 127.0.0.1" in err


async def test_json_with_a_directed_probe(fleet: SimFleet) -> None:
    code, out, err = await discover(
        "--address", "127.0.0.1", "--timeout", "1", "--json", "--target", "127.0.0.1"
    )
    assert code == 0, err
    found = [c for c in json.loads(out) if ours(fleet, c["http_port"])]
    vendors = {c["http_port"]: c["vendor"] for c in found}
    assert vendors == {c.device.http_port: c.device.vendor for c in fleet.cameras}
    for camera in found:
        assert camera["urn"].startswith("urn:uuid:")
        assert camera["xaddrs"] == [f"http://127.0.0.1:{camera['http_port']}/onvif/device_service"]
        realm = "IP Camera(" if camera["vendor"] == "hikvision" else "Login to "
        assert realm in camera["evidence"]


async def test_vendor_probe_can_be_skipped(fleet: SimFleet) -> None:
    code, out, _ = await discover(
        "--address", "127.0.0.1", "--timeout", "1", "--json", "--no-vendor-probe"
    )
    assert code == 0
    found = [c for c in json.loads(out) if ours(fleet, c["http_port"])]
    assert len(found) == 2 and {c["vendor"] for c in found} == {"generic"}
    assert all("skipped" in c["evidence"] for c in found)


async def test_usage_and_failures_have_their_exit_codes() -> None:
    code, _, err = await discover()
    assert code == 2 and "give --interface, --address or --config" in err
    code, _, err = await discover("--interface", "nosuchif0", "--timeout", "0.5")
    assert code == 3 and "nosuchif0" in err and "Traceback" not in err
    code, _, err = await discover("--address", "not-an-ip")
    assert code == 2 and "not an IP address" in err
    code, _, err = await discover("--address", "127.0.0.1", "--timeout", "0")
    assert code == 2 and "--timeout" in err


def test_none_found_in_an_empty_namespace() -> None:
    """Exit 1 when nobody answers: probed inside a namespace of our own with nothing in it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "needs root and iproute2 for a private network namespace"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    name = f"og-disc-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            [
                *("ip", "netns", "exec", name, sys.executable, "-m", "gateway", "discover"),
                *("--address", "127.0.0.1", "--timeout", "0.5", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == []
    assert "no ONVIF device answered from 127.0.0.1" in done.stderr


async def test_a_device_without_vendor_api_is_generic() -> None:
    import aiohttp

    app = web.Application()

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    app.router.add_get("/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            assert await tell_vendor(session, "127.0.0.1", port) == (
                "generic",
                "no vendor API answered",
            )
    finally:
        await runner.cleanup()


def test_vendor_answers_and_names() -> None:
    assert vendor_from_answer("/ISAPI/System/deviceInfo", 401, "IP Camera(12345)", b"") == (
        "hikvision"
    )
    body = b'<DeviceInfo xmlns="http://www.hikvision.com/ver20/XMLSchema">'
    assert vendor_from_answer("/ISAPI/System/deviceInfo", 200, "", body) == "hikvision"
    assert vendor_from_answer("/ISAPI/System/deviceInfo", 401, "Login to 4F0", b"") == "dahua"
    path = "/cgi-bin/magicBox.cgi?action=getDeviceType"
    assert vendor_from_answer(path, 200, "", b"type=IPC-HFW2431S") == "dahua"
    assert vendor_from_answer(path, 404, "Login to x", b"") is None
    assert vendor_from_answer(path, 401, "Some Camera", b"") is None
    taken: set[str] = set()
    assert camera_name("Front Door", "10.0.0.5", taken) == "Front-Door"
    assert camera_name("Front Door", "10.0.0.6", taken) == "Front-Door-2"
    assert camera_name("", "10.0.0.7", taken) == "cam-10-0-0-7"
    assert camera_name("---", "fd00::7", taken) == "cam-fd00-7"
