"""Stream states that tell the truth, end to end: a live camera, an idle on-demand one, one
that is down and a disabled one, as the admin API, ``/metrics``, ``onvif-gateway status``
and a snapshot see them; and the hub's part (``down_since``, waking for a keyframe)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway import config as cfgmod
from gateway.media.hub import HubState, StreamHub
from gateway.sim.runner import SimFleet
from gateway.view import StreamSample, should_stream
from tests.admin_support import AdminGateway, OpenApi, admin_gateway
from tests.conftest import free_port, wait_for
from tests.test_cli import gateway_cli
from tests.test_hub import H264, access_unit

SPEC = OpenApi()


class FakeUpstream:
    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    def start(self) -> None:
        self.starts += 1

    def stop(self) -> None:
        self.stops += 1

    def restart(self) -> None:
        pass


def test_should_stream() -> None:
    assert should_stream("live", on_demand=False)
    assert should_stream("down", on_demand=True)
    assert should_stream("connecting", on_demand=True)
    assert should_stream("idle", on_demand=False)  # an always-on stream is never idle by right
    assert not should_stream("idle", on_demand=True)
    assert not should_stream("disabled", on_demand=False)


def test_down_since_is_kept_through_retries_and_cleared_when_live() -> None:
    now = [1000.0]
    hub = StreamHub("cam/main", wallclock=lambda: now[0])
    hub.attach_upstream(FakeUpstream())
    assert hub.state is HubState.CONNECTING and hub.down_since is None
    hub.upstream_failed("connection refused")
    assert hub.state is HubState.DOWN and hub.down_since == 1000.0
    now[0] = 1030.0
    hub.upstream_failed("timed out")  # the feeder's retry fails too: still down since 1000
    assert hub.down_since == 1000.0 and hub.last_error == "timed out"
    hub.upstream_opened([H264])
    assert hub.state is HubState.LIVE and hub.down_since is None and hub.last_error == ""
    now[0] = 1100.0
    hub.upstream_failed("EOF")
    assert hub.down_since == 1100.0


async def test_wait_keyframe_wakes_an_idle_on_demand_hub_and_lets_it_go_idle() -> None:
    hub = StreamHub("cam/main", on_demand=True, linger=0.05)
    upstream = FakeUpstream()
    hub.attach_upstream(upstream)
    assert hub.state is HubState.IDLE and upstream.starts == 0

    async def camera() -> None:
        await asyncio.sleep(0)
        hub.upstream_opened([H264])
        hub.push(0, 0, False, access_unit(False), arrival=0.0)  # not decodable alone
        hub.push(0, 3600, True, access_unit(True), arrival=0.04)

    feeder = asyncio.ensure_future(camera())
    assert await hub.wait_keyframe(5.0)
    await feeder
    assert upstream.starts == 1 and hub.has_keyframe
    # Nobody subscribed: after the linger time the upstream stops and the hub is idle again.
    await wait_for(lambda: hub.state is HubState.IDLE, 5, "the linger time over")
    assert upstream.stops == 1 and not hub.has_keyframe
    # A camera that sends nothing: the wait is bounded and the hub goes idle again as well.
    assert not await hub.wait_keyframe(0.05)
    assert upstream.starts == 2


def _extra_cameras(fleet: SimFleet, dead_port: int) -> str:
    hik = fleet.cameras[0].device
    return f"""
[[camera]]
name = "lazy"
vendor = "hikvision"
host = "{hik.host}"
rtsp_port = {hik.rtsp_port}
http_port = {hik.http_port}
username = "{hik.username}"
password = "{hik.password}"
on_demand = true
onvif_port = {free_port()}

[[camera]]
name = "ghost"
vendor = "generic"
host = "127.0.0.1"
main_url = "rtsp://127.0.0.1:{dead_port}/stream"
username = "user"
password = "ghost-password"
onvif_port = {free_port()}

[[camera]]
name = "spare"
vendor = "hikvision"
host = "127.0.0.1"
username = "user"
password = "spare-password"
enabled = false
"""


async def _get(admin: AdminGateway, path: str) -> Any:
    async with (
        admin.session() as session,
        session.get(admin.url + path, headers=admin.basic()) as response,
    ):
        assert response.status == 200, path
        if response.content_type == "application/json":
            return await response.json()
        return await response.read()


def _streams(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{c['name']}/{s['stream']}": s for c in body["cameras"] for s in c["streams"]}


async def test_states_in_the_api_metrics_status_and_snapshots(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    extra = _extra_cameras(fleet, free_port())
    async with admin_gateway(
        fleet, tmp_path, vms_password, wait_pictures=False, extra_admin=extra
    ) as admin:
        gw = admin.gateway
        await wait_for(
            lambda: all(
                gw.hub(c, s).has_keyframe for c in ("hik1", "dahua1") for s in ("main", "sub")
            ),
            30,
            "pictures from the always-on cameras",
        )
        await wait_for(lambda: gw.hub("ghost", "main").state == "down", 30, "ghost down")
        # The ONVIF device learns the on-demand camera's formats once at start-up; then it
        # goes idle after the hub's linger time.
        await wait_for(
            lambda: all(gw.hub("lazy", s).state == "idle" for s in ("main", "sub")),
            30,
            "the on-demand camera idle",
        )

        body = await _get(admin, "/api/v1/cameras")
        SPEC.validate("/api/v1/cameras", "get", 200, body)
        streams = _streams(body)
        live = streams["hik1/main"]
        assert live["state"] == "live" and live["should_stream"] and live["down_since"] is None
        assert live["fps"] is not None and live["bitrate"] is not None
        idle = streams["lazy/main"]
        assert idle["state"] == "idle" and not idle["should_stream"]
        assert idle["fps"] is None and idle["bitrate"] is None
        down = streams["ghost/main"]
        assert down["state"] == "down" and down["should_stream"] and down["last_error"]
        assert down["fps"] is None and down["bitrate"] is None and down["gop_seconds"] is None
        since = datetime.strptime(down["down_since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - since).total_seconds()) < 60
        assert streams["spare/main"]["state"] == "disabled"
        assert not streams["spare/main"]["should_stream"]
        cameras = {c["name"]: c for c in body["cameras"]}
        assert [cameras[n]["state"] for n in ("hik1", "lazy", "ghost", "spare")] == [
            "live",
            "idle",
            "down",
            "disabled",
        ]

        text = (await _get(admin, "/metrics")).decode()
        samples = {
            (s.name, s.labels.get("camera"), s.labels.get("stream"), s.labels.get("state")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        up = "onvif_gateway_stream_up"
        assert samples[(up, "hik1", "main", None)] == 1.0
        assert samples[(up, "ghost", "main", None)] == 0.0
        assert (up, "lazy", "main", None) not in samples  # idle on demand is not down
        assert (up, "spare", "main", None) not in samples
        state = "onvif_gateway_stream_state"
        assert samples[(state, "lazy", "main", "idle")] == 1.0
        assert samples[(state, "spare", "main", "disabled")] == 1.0
        assert samples[(state, "ghost", "main", "down")] == 1.0
        since_metric = samples[
            ("onvif_gateway_stream_down_since_timestamp_seconds", "ghost", "main", None)
        ]
        assert abs(since_metric - since.timestamp()) < 1.0
        assert ("onvif_gateway_stream_down_since_timestamp_seconds", "hik1", "main", None) not in (
            samples
        )
        assert samples[("onvif_gateway_stream_frames_per_second", "ghost", "main", None)] == 0
        assert 'onvif_gateway_auth_failures_total{service="rtsp"} 0.0' in text
        assert 'onvif_gateway_auth_failures_total{service="admin"} 0.0' in text

        # The typed records the admin API and /metrics are built from (GatewayView).
        sampled = {(r.camera, r.stream): r for r in gw.stream_samples()}
        assert list(sampled)[-2:] == [("spare", "main"), ("spare", "sub")]
        assert sampled[("spare", "main")] == StreamSample.disabled("spare", "main")
        assert gw.stream_status("spare", "main") is None
        ghost = gw.stream_status("ghost", "main")
        assert ghost is not None and ghost.state == "down" and ghost.last_error
        assert ghost.down_since is not None
        assert sampled[("ghost", "main")].down_since == ghost.down_since
        assert sampled[("ghost", "main")].should_stream and ghost.should_stream
        assert not sampled[("lazy", "main")].should_stream
        assert sampled[("hik1", "main")].frames_in > 0 and sampled[("hik1", "main")].fps > 0

        # status: the down camera is the one problem, named with its error at 80 columns.
        narrow = {"COLUMNS": "80"}
        code, out, err = await gateway_cli("status", "-c", str(admin.config_path), env=narrow)
        assert code == 1, out + err
        assert max(len(line) for line in out.splitlines()) <= 80, out
        problems = [line for line in out.splitlines() if "not streaming" in line]
        assert len(problems) == 1 and "ghost/main" in problems[0] and "down" in problems[0]
        assert not re.search(r"\blazy\b.*not streaming", out)

        # A snapshot of the idle on-demand camera wakes it, and it goes idle again.
        lazy = gw.hub("lazy", "main")
        assert lazy is not None
        lazy.linger = 0.2
        jpeg = await _get(admin, "/snapshot/lazy/main.jpg?width=320")
        assert jpeg[:2] == b"\xff\xd8"
        await wait_for(lambda: lazy.state == "idle", 10, "the on-demand camera idle again")
        # A down camera's snapshot answers at once (503), it does not wait for the camera.
        async with admin.session() as session:
            started = asyncio.get_running_loop().time()
            async with session.get(
                admin.url + "/snapshot/ghost/main.jpg", headers=admin.basic()
            ) as response:
                assert response.status == 503
            assert asyncio.get_running_loop().time() - started < 5

        # Without the down camera, every stream that should stream does: exit 0, even with
        # the on-demand camera idle and one disabled.
        text = admin.config_path.read_text()
        admin.config_path.write_text(
            re.sub(r'\[\[camera\]\]\nname = "ghost".*?\n\n', "", text, flags=re.S)
        )
        await gw.reload(cfgmod.load(admin.config_path))
        code, out, err = await gateway_cli("status", "-c", str(admin.config_path), "--json")
        assert code == 0, out + err
        assert "ghost" not in {c["name"] for c in json.loads(out)["cameras"]}
