"""With several worker processes the configured admin port shows and controls the whole
gateway: lists and /metrics merged, a camera's routes run on its owner, the internal channel
refuses anyone but worker 0, and a worker that does not answer is named, not waited for."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.siblings import READ_TIMEOUT
from gateway.sim.runner import SimFleet
from tests.admin_support import OpenApi
from tests.conftest import require, run_tool
from tests.test_cli import GATEWAY
from tests.test_dashboard_browser import TWO_CARDS_WITH_PICTURES, browser, post_from_page
from tests.test_workers import Workers, running_workers

__all__ = ["browser"]  # the Chromium fixture, for the dashboard test

CAMERAS = ["hik1", "dahua1"]  # in the file's order: hik1 is worker 0's, dahua1 worker 1's


def _basic(workers: Workers) -> dict[str, str]:
    token = base64.b64encode(f"admin:{workers.admin_password}".encode()).decode()
    return {"Authorization": "Basic " + token}


async def _get_json(session: aiohttp.ClientSession, workers: Workers, path: str) -> tuple[int, Any]:
    async with session.get(workers.admin_url + path, headers=_basic(workers)) as response:
        return response.status, await response.json()


def _series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def _snapshot(session: aiohttp.ClientSession, workers: Workers, camera: str) -> bytes:
    """The camera's JPEG through the admin port; a 503 (no keyframe yet) is retried as its
    Retry-After says, for at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        url = f"{workers.admin_url}/snapshot/{camera}/main.jpg?width=320"
        async with session.get(url, headers=_basic(workers)) as response:
            if response.status == 200:
                assert response.headers["Content-Type"] == "image/jpeg"
                return await response.read()
            assert response.status == 503, await response.text()
            assert time.monotonic() < deadline, "no snapshot within 30 s"
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))


async def test_the_admin_port_serves_every_worker(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("promtool")
    openapi = OpenApi()
    async with (
        running_workers(fleet, tmp_path, vms_password) as workers,
        aiohttp.ClientSession() as session,
    ):
        status, body = await _get_json(session, workers, "/api/v1/cameras")
        assert status == 200
        openapi.validate("/api/v1/cameras", "get", 200, body)
        assert [c["name"] for c in body["cameras"]] == CAMERAS
        assert [c["worker"] for c in body["cameras"]] == [0, 1]
        assert body["worker"] == {"index": 0, "count": 2}
        assert body["unanswered"] == []

        # A camera worker 1 owns: its JSON, a snapshot, a live view and a reconnect.
        status, camera = await _get_json(session, workers, "/api/v1/cameras/dahua1")
        assert status == 200 and camera["name"] == "dahua1" and camera["worker"] == 1
        status, _ = await _get_json(session, workers, "/api/v1/cameras/nosuch")
        assert status == 404
        jpeg = await _snapshot(session, workers, "dahua1")
        assert jpeg.startswith(b"\xff\xd8")
        live = f"{workers.admin_url}/api/v1/live/dahua1/main"
        async with session.ws_connect(live, headers=_basic(workers)) as ws:
            init = await ws.receive(timeout=20)
            assert init.type == aiohttp.WSMsgType.TEXT
            assert json.loads(init.data)["type"] == "init"
            segment = await ws.receive(timeout=20)
            assert segment.type == aiohttp.WSMsgType.BINARY
            # The viewer is worker 1's client, listed through the admin port.
            status, clients = await _get_json(session, workers, "/api/v1/clients")
            viewers = [c for c in clients["clients"] if c["kind"] == "live-view"]
            assert [(v["camera"], v["peer"].startswith("127.0.0.1:")) for v in viewers] == [
                ("dahua1", True)
            ]
        # The owner checks the browser's Origin against the host the client asked.
        foreign = {**_basic(workers), "Origin": "http://elsewhere.example"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(live, headers=foreign)
        assert refused.value.status == 403
        async with session.post(
            f"{workers.admin_url}/api/v1/cameras/dahua1/reconnect", headers=_basic(workers)
        ) as response:
            assert response.status == 202, await response.text()

        # A reload runs on both workers and is recorded once.
        async with session.post(
            workers.admin_url + "/api/v1/reload", headers=_basic(workers)
        ) as response:
            assert response.status == 200, await response.text()
            changes = (await response.json())["changes"]
        assert sorted(changes["unchanged"]) == sorted(CAMERAS)
        assert changes["failed"] == []
        status, trail = await _get_json(session, workers, "/api/v1/admin-log")
        actions = [(e["action"], e["target"]) for e in trail["entries"]]
        assert actions.count(("reconnect", "dahua1")) == 1
        assert actions.count(("reload", None)) == 1
        reconnect = next(e for e in trail["entries"] if e["action"] == "reconnect")
        assert reconnect["account"] == "admin" and reconnect["source"].startswith("127.0.0.1:")

        async with session.get(workers.admin_url + "/metrics", headers=_basic(workers)) as response:
            assert response.status == 200
            text = await response.text()
    (tmp_path / "metrics.txt").write_text(text)
    code, out, err = await run_tool("sh", "-c", f"promtool check metrics < {tmp_path}/metrics.txt")
    assert code == 0, out + err
    series = _series(text)
    assert len(series) == len(set(series)), "a series twice"
    streams = {dict(labels)["camera"] for name, labels in series if name.endswith("_stream_up")}
    assert streams == set(CAMERAS)
    policy = {
        dict(labels)["camera"]
        for name, labels in series
        if name == "onvif_gateway_policy_compliant"
    }
    assert policy == set(CAMERAS)
    by_name = {name: dict(labels) for name, labels in series}
    assert by_name["onvif_gateway_cameras"] == {}
    up = {dict(labels)["worker"] for name, labels in series if name == "onvif_gateway_worker_up"}
    assert up == {"0", "1"}
    memory = {
        dict(labels)["worker"] for name, labels in series if name == "process_resident_memory_bytes"
    }
    assert memory == {"0", "1"}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("onvif_gateway_cameras", ())] == 2
    assert samples[("onvif_gateway_worker_up", (("worker", "1"),))] == 1


async def test_the_internal_channel_refuses_anyone_but_worker_0(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    async with running_workers(fleet, tmp_path, vms_password) as workers:
        directory = workers.handoff_dir()
        path = directory / "admin-1.sock"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not (directory / "admin-0.sock").exists()  # worker 0 is on the admin port
        connector = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=connector) as session:
            attempts: list[dict[str, str]] = [
                {},
                _basic(workers),  # the admin password is no key to the internal channel
                {"X-Gateway-Internal": "0" * 64, "X-Gateway-User": "admin"},
            ]
            for headers in attempts:
                headers = {**headers, "X-Gateway-Role": "admin"}
                for method, route in (("GET", "/api/v1/cameras"), ("POST", "/internal/reload")):
                    async with session.request(
                        method, "http://worker" + route, headers=headers
                    ) as response:
                        assert response.status == 403, (headers, route)
                        assert "token" in (await response.json())["error"]


async def test_a_worker_that_does_not_answer_is_named(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    async with running_workers(fleet, tmp_path, vms_password) as workers:
        worker_1 = workers.worker_pids()[1]
        # Stopped, not dead: the supervisor does not restart it, and its socket stays.
        os.kill(worker_1, signal.SIGSTOP)
        try:
            async with aiohttp.ClientSession() as session:
                started = time.monotonic()
                status, body = await _get_json(session, workers, "/api/v1/cameras")
                assert time.monotonic() - started < READ_TIMEOUT + 2
                assert status == 200
                assert [c["name"] for c in body["cameras"]] == ["hik1"]
                assert body["unanswered"] == [
                    {
                        "worker": 1,
                        "error": f"no answer within {READ_TIMEOUT:g} s",
                        "cameras": ["dahua1"],
                    }
                ]
                status, _ = await _get_json(session, workers, "/api/v1/cameras/dahua1")
                assert status == 504
                async with session.get(
                    workers.admin_url + "/metrics", headers=_basic(workers)
                ) as response:
                    text = await response.text()
                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }
                assert samples[("onvif_gateway_worker_up", (("worker", "0"),))] == 1
                assert samples[("onvif_gateway_worker_up", (("worker", "1"),))] == 0
                streams = {
                    dict(labels)["camera"]
                    for name, labels in _series(text)
                    if name.endswith("_stream_up")
                }
                assert streams == {"hik1"}
            code, out, err = await run_tool(
                *GATEWAY, "status", "--config", str(workers.config_path), timeout=60
            )
            assert code == 3, out + err
            assert "worker 1 did not answer" in err and "dahua1" in err
        finally:
            os.kill(worker_1, signal.SIGCONT)
        # Killed, it is restarted by the supervisor and the admin port answers for it again.
        os.kill(worker_1, signal.SIGKILL)
        assert workers.proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(workers.proc.stdout.readline(), 60))
        assert ready["event"] == "ready"
        async with aiohttp.ClientSession() as session:
            status, body = await _get_json(session, workers, "/api/v1/cameras")
        assert [c["name"] for c in body["cameras"]] == CAMERAS and body["unanswered"] == []


@pytest.mark.browser
@pytest.mark.slow
async def test_the_dashboard_shows_and_controls_every_worker(
    fleet: SimFleet, tmp_path: Path, vms_password: str, browser: Any
) -> None:
    async with running_workers(fleet, tmp_path, vms_password) as workers:
        page = await browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        # Plain HTTP from loopback: signing in with a password is allowed there.
        await page.goto(workers.admin_url + "/")
        await page.fill("#username", "admin")
        await page.fill("#password", workers.admin_password)
        await page.click("button[type=submit]")
        await page.wait_for_url(workers.admin_url + "/")
        # Both cameras, each with its snapshot: dahua1's comes from worker 1.
        await page.wait_for_function(
            TWO_CARDS_WITH_PICTURES,
            timeout=30_000,
        )
        # Worker 1's camera plays through worker 0 (its H.264 sub stream: Debian's
        # Chromium has no H.265 decoder).
        await page.click(".card[data-camera=dahua1] .watch")
        await page.locator("#live-message button", has_text="sub stream").click()
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1.0", timeout=20_000
        )
        await page.click("#live-close")
        # A cookie session's CSRF token is checked once, on worker 0; the owner reconnects.
        assert await post_from_page(page, "/api/v1/cameras/dahua1/reconnect") == 202
        await page.close()
        assert not problems, problems
