"""Logs of a real ``onvif-gateway --log-json run``: one JSON line per event that matters
(camera up/down with the reason, client connect/disconnect, admin actions, policy changes,
reloads), and no secret anywhere: the camera, VMS and admin passwords are known to the test,
which exercises right and wrong credentials and then greps the whole output."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from gateway.rtsp.client import RtspClientError, RtspReader
from gateway.sim.runner import SimFleet
from tests.admin_support import admin_config_text
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow


class LogCapture:
    """Reads the gateway's stderr (JSON lines) as it comes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            try:
                self.records.append(json.loads(text))
            except json.JSONDecodeError:
                self.records.append({"msg": text, "not_json": True})

    def find(self, msg: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if msg in str(r.get("msg", "")) and all(r.get(k) == v for k, v in fields.items())
        ]

    async def expect(self, msg: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
        await wait_for(lambda: bool(self.find(msg, **fields)), timeout, f"log line {msg!r}")
        return self.find(msg, **fields)[-1]


async def test_events_are_logged_once_and_secrets_never(
    fleet: SimFleet, tmp_path: Path, vms_password: str, camera_password: str
) -> None:
    admin_password = "adm-Secr3t-" + vms_password[-6:]
    admin_port = free_port()
    config = tmp_path / "gateway.toml"
    text = admin_config_text(fleet, tmp_path, vms_password, admin_password, admin_port, tls=False)
    # One process: the test reads its one log stream and its one ready line.
    config.write_text(text.replace("[server]\n", "[server]\nworkers = 1\n", 1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--log-json",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    logs = LogCapture(proc.stderr)
    admin = f"http://127.0.0.1:{admin_port}"
    basic = "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode()
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert ready["event"] == "ready"
        rtsp = f"rtsp://127.0.0.1:{ready['rtsp_port']}/hik1/main"
        up = await logs.expect("camera stream up", stream="hik1/main")
        assert "url" in up and camera_password not in up["url"]

        # A VMS client: connect and disconnect; and one with a wrong password.
        reader = RtspReader(rtsp.replace("rtsp://", f"rtsp://vms:{quote(vms_password)}@"))
        await reader.start()
        await reader.wait_frames(5, timeout=15, media="video")
        await reader.close()
        opened = await logs.expect("client session opened", stream="hik1/main")
        closed = await logs.expect("client session closed", stream="hik1/main")
        assert opened["session"] == closed["session"] and opened["peer"].startswith("127.0.0.1:")
        wrong = RtspReader(rtsp, username="vms", password="not-" + vms_password)
        with pytest.raises(RtspClientError):
            await wrong.start()
        await wrong.close()

        # The camera goes away and comes back: down with a reason, then up again. (Before the
        # admin reconnect below: repeated warnings with the same text are rate limited.)
        dahua = fleet.cameras[1]
        await dahua.stop()
        down = await logs.expect("camera stream down", stream="dahua1/main", timeout=30)
        assert down["level"] == "warning" and down["reason"]
        ups = len(logs.find("camera stream up", stream="dahua1/main"))
        await dahua.start()
        await wait_for(
            lambda: len(logs.find("camera stream up", stream="dahua1/main")) > ups,
            40,
            "dahua1/main to come back up",
        )

        # Admin: wrong credentials, a failed form login, then actions.
        async with aiohttp.ClientSession() as session:
            wrong_basic = base64.b64encode(f"admin:x{admin_password}".encode()).decode()
            async with session.get(
                admin + "/api/v1/cameras", headers={"Authorization": "Basic " + wrong_basic}
            ) as response:
                assert response.status == 401
            async with session.post(
                admin + "/login",
                data={"username": "admin", "password": admin_password + "x"},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
            async with session.post(
                admin + "/api/v1/cameras/hik1/reconnect", headers={"Authorization": basic}
            ) as response:
                assert response.status == 202
            async with session.post(
                admin + "/api/v1/enforce", headers={"Authorization": basic}
            ) as response:
                assert response.status == 200
                enforce = await response.json()
            async with session.post(
                admin + "/api/v1/reload", headers={"Authorization": basic}
            ) as response:
                assert response.status == 200
        await logs.expect("admin authentication failed")
        await logs.expect("admin login failed")
        action = await logs.expect("admin action", action="reconnect")
        assert action["user"] == "admin" and action["camera"] == "hik1"
        await logs.expect("admin action", action="enforce")
        for camera in enforce["cameras"]:
            for change in camera.get("changes", []):
                await logs.expect(f"camera {camera['name']}: set {change['key']}")
        await logs.expect("configuration reloaded", unchanged="hik1,dahua1")
        assert len(logs.find("admin action", action="reconnect")) == 1

        proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: len(logs.find("configuration reloaded")) >= 2, 20, "the SIGHUP reload"
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await asyncio.wait_for(logs.task, 10)
    assert proc.returncode == 0

    everything = "\n".join(logs.lines)
    not_json = [r["msg"] for r in logs.records if r.get("not_json")]
    assert not not_json, not_json[:5]
    for secret in (camera_password, vms_password, admin_password):
        for form in (secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()):
            assert form not in everything, "a secret reached the log"
    assert basic.split()[1] not in everything
    assert "Traceback" not in everything
