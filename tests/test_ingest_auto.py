"""``ingest = "auto"`` (the default): the native RTSP client for what it handles, a fallback
to PyAV per stream for what it does not, with no client of the gateway disconnected, and
never for an outage (gateway.media.auto_ingest)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.codecs.sdp import parse_sdp
from gateway.media.auto_ingest import (
    MALFORMED_FRAMES,
    SETUP_FAILED,
    SETUP_FAILURE_LIMIT,
    UNSUPPORTED_SDP,
    AutoIngest,
    FallbackPolicy,
    MalformedWatch,
    fallback_reason,
    native_sdp_problem,
)
from gateway.media.native_ingest import NativeIngest
from gateway.rtsp.client import RtspClientError, RtspReader
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet, default_stream_specs
from tests.admin_support import OpenApi, admin_gateway
from tests.conftest import free_port, gateway_config_text, require, run_tool, stream_url, wait_for

# ------------------------------------------------------------------ what native takes (sans-IO)

HIKVISION_SDP = """v=0
o=- 1 1 IN IP4 192.0.2.10
s=Media Presentation
t=0 0
a=control:*
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=420029; packetization-mode=1; {H264_SETS}
a=control:trackID=1
m=audio 0 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=control:trackID=2
""".format(H264_SETS="sprop-parameter-sets=Z0IAKeKQFAe2AtwEBAaQeJEV,aM48gA==")

DAHUA_SDP = """v=0
o=- 2 2 IN IP4 192.0.2.11
s=Media Server
t=0 0
a=control:*
m=video 0 RTP/AVP 98
a=control:trackID=0
a=rtpmap:98 H265/90000
a=fmtp:98 profile-id=1;{H265_SETS}
m=audio 0 RTP/AVP 8
a=control:trackID=1
a=rtpmap:8 PCMA/8000
""".format(
    H265_SETS="sprop-sps=QgEBAWAAAAMAsAAAAwAAAwB4oAPAgBDlja5JMvTcBAQEAg==;sprop-pps=RAHA8vA8kAA="
    ";sprop-vps=QAEMAf//AWAAAAMAsAAAAwAAAwB4LAk="
)


def test_vendor_sdps_are_taken_natively() -> None:
    assert native_sdp_problem(parse_sdp(HIKVISION_SDP)) is None
    assert native_sdp_problem(parse_sdp(DAHUA_SDP)) is None
    # Audio neither path relays (G.726) is dropped by both: no reason to pay for PyAV.
    g726 = HIKVISION_SDP.replace(
        "RTP/AVP 0\na=rtpmap:0 PCMU/8000", "RTP/AVP 97\na=rtpmap:97 G726-32/8000"
    )
    assert native_sdp_problem(parse_sdp(g726)) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("packetization-mode=1", "packetization-mode=2"), "packetization-mode=2"),
        (("H264/90000", "JPEG/90000"), "not H.264/H.265"),
        (("sprop-parameter-sets=Z0IAKeKQFAe2AtwEBAaQeJEV", "sprop-parameter-sets=@@@"), "base64"),
        (("RTP/AVP 0\na=rtpmap:0 PCMU/8000", "RTP/AVP 97\na=rtpmap:97 MP4A-LATM/16000"), "LATM"),
    ],
)
def test_what_the_native_path_does_not_take(change: tuple[str, str], expected: str) -> None:
    sdp = parse_sdp(HIKVISION_SDP.replace(*change))
    problem = native_sdp_problem(sdp)
    assert problem is not None and expected in problem


def test_h265_with_decoding_order_numbers_falls_back() -> None:
    donl = DAHUA_SDP.replace("profile-id=1;", "profile-id=1;sprop-max-don-diff=2;")
    assert "decoding order" in (native_sdp_problem(parse_sdp(donl)) or "")


def _error(status: int, step: str, *, network: bool = False) -> RtspClientError:
    error = RtspClientError(status, "test", network=network)
    error.step = step
    return error


def test_outages_are_not_reasons_to_fall_back() -> None:
    for error in (
        _error(0, "connect", network=True),  # refused, unreachable
        _error(0, "describe", network=True),  # timeout, connection lost
        _error(401, "describe"),  # wrong password
        _error(403, "setup"),
        _error(404, "describe"),  # no such stream
        _error(503, "setup"),  # camera busy
        _error(0, ""),  # the playing session ended
    ):
        assert fallback_reason(error) is None, (error.status, error.step)
    assert fallback_reason(_error(0, "sdp")) == UNSUPPORTED_SDP
    assert fallback_reason(_error(461, "setup")) == SETUP_FAILED
    assert fallback_reason(_error(0, "play")) == SETUP_FAILED  # an answer we cannot parse


def test_setup_failures_fall_back_when_repeated() -> None:
    policy = FallbackPolicy(0)
    refused = _error(461, "setup")
    for _ in range(SETUP_FAILURE_LIMIT - 1):
        assert policy.session_failed(refused) is None
    # An outage between them starts the count again.
    assert policy.session_failed(_error(0, "connect", network=True)) is None
    for _ in range(SETUP_FAILURE_LIMIT - 1):
        assert policy.session_failed(refused) is None
    fallback = policy.session_failed(refused)
    assert fallback is not None and fallback[0] == SETUP_FAILED


def test_malformed_frames_within_a_window() -> None:
    watch = MalformedWatch(100, limit=5, window=60.0)
    assert not watch.exceeded(104, 10.0)  # four new ones
    assert not watch.exceeded(104, 69.0)
    assert not watch.exceeded(105, 71.0)  # the first four left the window
    assert watch.exceeded(109, 72.0)
    policy = FallbackPolicy(0)
    assert policy.frames_checked(3, 1.0) is None
    found = policy.frames_checked(1000, 2.0)
    assert found is not None and found[0] == MALFORMED_FRAMES


# ------------------------------------------------------------------ end to end


async def quirky_fleet(camera_password: str, quirk: str) -> SimFleet:
    """One Hikvision camera whose RTSP has ``quirk`` (gateway.sim.device.RTSP_QUIRKS)."""
    fleet = SimFleet.build(
        hikvision=1, dahua=0, password=camera_password, specs=default_stream_specs("test")
    )
    fleet.cameras[0].device.rtsp_quirks = frozenset({quirk})
    await fleet.start()
    return fleet


@pytest.fixture
async def private_nal_fleet(camera_password: str) -> AsyncIterator[SimFleet]:
    fleet = await quirky_fleet(camera_password, "private-nal")
    try:
        yield fleet
    finally:
        await fleet.stop()


def auto_ingest(gw: Gateway, camera: str, stream: str = "main") -> AutoIngest:
    ingest = gw.cameras[camera].ingests[stream]
    assert isinstance(ingest, AutoIngest)
    return ingest


async def test_malformed_frames_move_the_stream_to_pyav_with_clients_connected(
    private_nal_fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    """A camera whose frames the native path refuses (a private NAL unit type FFmpeg skips):
    the stream moves to PyAV, a client that was playing before keeps its session and gets
    the picture, and the reason shows in status, the admin API and the metrics. It stays on
    PyAV until a reload, which tries native again."""
    async with admin_gateway(
        private_nal_fleet, tmp_path, vms_password, wait_pictures=False
    ) as admin:
        gw = admin.gateway
        ingest = auto_ingest(gw, "hik1")
        assert ingest.kind == "native"
        reader = RtspReader(stream_url(gw, "hik1", "main", vms_password))
        await reader.start()
        try:
            # Playing before the switch: the native session relays the camera's audio.
            await reader.wait_frames(5, timeout=15, media="audio")
            await wait_for(lambda: ingest.kind == "pyav", 30, "the fallback to PyAV")
            await reader.wait_frames(50, timeout=30, media="video")
            assert reader.tracks[0].keyframes >= 1
            status = gw.stream_status("hik1", "main")
            assert status is not None
            assert (status.ingest, status.ingest_fallback) == ("pyav", MALFORMED_FRAMES)
            assert "malformed frames" in status.ingest_fallback_detail
            json.dumps(dataclasses.asdict(status))  # what status --json carries
            assert gw.ingest_fallbacks[("hik1", "main", MALFORMED_FRAMES)] == 1

            openapi = OpenApi()
            async with admin.session(headers=admin.basic()) as session:
                async with session.get(f"{admin.url}/api/v1/cameras") as response:
                    assert response.status == 200
                    body = await response.json()
                openapi.validate("/api/v1/cameras", "GET", 200, body)
                (camera,) = body["cameras"]
                main = camera["streams"][0]
                assert main["ingest"] == "pyav"
                assert main["ingest_fallback"]["reason"] == MALFORMED_FRAMES
                assert main["ingest_fallback"]["since"].endswith("Z")
                async with session.get(f"{admin.url}/metrics") as response:
                    metrics = await response.text()
            assert (
                'onvif_gateway_ingest_fallbacks_total{camera="hik1",reason="malformed_frames",'
                'stream="main"} 1.0' in metrics
            )
            # onvif-gateway status: a line under the table; --json has the API's fields.
            cli = (sys.executable, "-m", "gateway", "status", "-c", str(admin.config_path))
            code, out, err = await run_tool(*cli, timeout=60)
            assert code == 0, out + err
            assert "on PyAV until the next reload: hik1/main (malformed_frames: 5" in " ".join(
                out.split()
            )
            code, out, err = await run_tool(*cli, "--json", timeout=60)
            assert code == 0, err
            streams = json.loads(out)["cameras"][0]["streams"]
            assert streams[0]["ingest_fallback"]["reason"] == MALFORMED_FRAMES

            # No retry on its own: frames keep coming through PyAV.
            before = reader.tracks[0].frames
            await reader.wait_frames(before + 25, timeout=15, media="video")
            assert (
                ingest.kind == "pyav"
                and gw.ingest_fallbacks[("hik1", "main", MALFORMED_FRAMES)] == 1
            )

            # A reload tries native again (and this camera falls back again), with the
            # client still connected.
            async with (
                admin.session(headers=admin.basic()) as session,
                session.post(f"{admin.url}/api/v1/reload") as response,
            ):
                assert response.status == 200, await response.text()
            await wait_for(
                lambda: gw.ingest_fallbacks[("hik1", "main", MALFORMED_FRAMES)] == 2,
                30,
                "native tried again after the reload",
            )
            before = reader.tracks[0].frames
            await reader.wait_frames(before + 25, timeout=30, media="video")
        finally:
            await reader.close()
        assert reader.stats.session_id is not None and reader.tracks[0].ssrc_changes == 0


async def test_an_sdp_the_native_path_does_not_take_plays_through_pyav(
    camera_password: str, tmp_path: Path, vms_password: str
) -> None:
    """H.264 described as packetization-mode=2: decided from the DESCRIBE answer, at once;
    a real client (ffprobe) sees the stream."""
    require("ffprobe")
    fleet = await quirky_fleet(camera_password, "interleaved-sdp")
    try:
        gw = Gateway(
            cfgmod.loads(gateway_config_text(fleet, tmp_path, vms_password)), start_services=False
        )
        await gw.start()
        try:
            code, out, err = await run_tool(
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name",
                "-of",
                "json",
                stream_url(gw, "hik1", "main", vms_password),
                timeout=30,
            )
            assert code == 0, err
            assert {s["codec_type"] for s in json.loads(out)["streams"]} == {"video", "audio"}
            status = gw.stream_status("hik1", "main")
            assert status is not None and status.ingest == "pyav"
            assert status.ingest_fallback == UNSUPPORTED_SDP
            assert status.ingest_fallback_detail == "H.264 packetization-mode=2 (interleaved)"
            assert gw.ingest_fallbacks == {
                ("hik1", "main", UNSUPPORTED_SDP): 1,
                ("hik1", "sub", UNSUPPORTED_SDP): 1,
            }
        finally:
            await gw.stop()
    finally:
        await fleet.stop()


async def test_hikvision_and_dahua_run_native_under_auto(
    gateway: Gateway, vms_password: str
) -> None:
    for camera in ("hik1", "dahua1"):
        reader = RtspReader(stream_url(gateway, camera, "main", vms_password))
        await reader.start()
        try:
            await reader.wait_frames(25, timeout=20, media="video")
        finally:
            await reader.close()
        status = gateway.stream_status(camera, "main")
        assert status is not None
        assert (status.ingest, status.ingest_fallback) == ("native", None)
        hub = gateway.hub(camera, "main")
        assert hub is not None and hub.stats.relayed_frames > 0
        assert hub.stats.malformed_frames == 0
    assert gateway.ingest_fallbacks == {}


async def test_a_camera_that_is_down_stays_on_native(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    """Connection refused and a wrong password are outages: the native ingest keeps retrying
    (more times than a set-up failure would need to fall back) and never moves to PyAV."""
    hik, dahua = fleet.cameras
    text = gateway_config_text(fleet, tmp_path, vms_password)
    text = text.replace(f"rtsp_port = {hik.device.rtsp_port}\n", f"rtsp_port = {free_port()}\n")
    text = text.replace(f'password = "{dahua.device.password}"', 'password = "not-the-password"')
    gw = Gateway(cfgmod.loads(text), start_services=False)
    await gw.start()
    try:
        # A camera locks a client out after repeated failed logins: 401s, then no answer.
        for camera, errors in (("hik1", ("connect",)), ("dahua1", ("401", "timed out"))):
            ingest = auto_ingest(gw, camera)
            hub = gw.hub(camera, "main")
            assert hub is not None
            await wait_for(
                lambda i=ingest: (
                    isinstance(i.active, NativeIngest)  # type: ignore[misc]
                    and i.active.attempts > SETUP_FAILURE_LIMIT + 1
                ),
                30,
                f"{camera}: several native attempts",
            )
            assert hub.state == "down", hub.state
            assert any(e in hub.last_error for e in errors), hub.last_error
            status = gw.stream_status(camera, "main")
            assert status is not None
            assert (status.ingest, status.ingest_fallback) == ("native", None)
        assert gw.ingest_fallbacks == {}
    finally:
        await gw.stop()
