"""The streaming core end to end: simulated cameras -> PyAV ingest -> hub -> RTSP server ->
real clients (ffprobe/ffmpeg, GStreamer) and our efficient reader. The ``gateway`` here
says ``ingest = "pyav"``: PyAV is no longer the default (``auto``, tests/test_ingest_auto.py)
but stays the path for what the native client cannot take."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest

from gateway import config as cfgmod
from gateway.digest import DigestClient
from gateway.rtp.receiver import ReceivedFrame
from gateway.rtsp.client import RtspReader
from gateway.rtsp.message import RtspConnectionParser, RtspRequest, RtspResponse
from gateway.runtime import Gateway
from gateway.sim.camera import SimCamera
from gateway.sim.runner import SimFleet
from tests.conftest import gateway_config_text, require, run_tool, stream_url, wait_for

GST_PROBE = str(Path(__file__).parent / "tools" / "gst_rtsp_probe.py")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
async def gateway(fleet: SimFleet, tmp_path: Path, vms_password: str) -> AsyncIterator[Gateway]:
    text = gateway_config_text(fleet, tmp_path, vms_password, server_extra='ingest = "pyav"')
    gw = Gateway(cfgmod.loads(text, source="test.toml"), start_services=False)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def camera_sessions(cam: SimCamera, stream: str) -> int:
    """RTSP sessions the simulated camera has open on one stream (its upstream count)."""
    assert cam.rtsp is not None
    return sum(1 for c in cam.rtsp.clients() if c.source is cam.hubs[stream])


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize(
    ("camera", "codec", "audio"), [("hik1", "h264", "pcm_mulaw"), ("dahua1", "hevc", "pcm_alaw")]
)
async def test_ffprobe_sees_video_and_audio(
    gateway: Gateway, vms_password: str, transport: str, camera: str, codec: str, audio: str
) -> None:
    require("ffprobe")
    code, out, err = await run_tool(
        "ffprobe",
        "-v",
        "error",
        "-rtsp_transport",
        transport,
        "-show_entries",
        "stream=codec_type,codec_name,width,height",
        "-of",
        "json",
        stream_url(gateway, camera, "main", vms_password),
        timeout=30,
    )
    assert code == 0, err
    streams = json.loads(out)["streams"]
    kinds = {s["codec_type"]: s for s in streams}
    assert kinds["video"]["codec_name"] == codec
    assert (kinds["video"]["width"], kinds["video"]["height"]) == (320, 240)
    assert kinds["audio"]["codec_name"] == audio


async def assert_ffmpeg_decodes(url: str, transport: str, frames: int) -> None:
    """ffmpeg decodes ``frames`` video frames, with the audio, and reports no decoder error."""
    require("ffmpeg")
    code, _, err = await run_tool(
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-rtsp_transport",
        transport,
        "-i",
        url,
        "-map",
        "0:v",
        "-map",
        "0:a",
        "-frames:v",
        str(frames),
        "-f",
        "null",
        "-",
        timeout=40,
    )
    assert code == 0, err
    assert err.strip() == "", f"decoder reported errors: {err[-2000:]}"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("camera", ["hik1", "dahua1"])
async def test_ffmpeg_decodes_without_errors(
    gateway: Gateway, vms_password: str, transport: str, camera: str
) -> None:
    await assert_ffmpeg_decodes(stream_url(gateway, camera, "main", vms_password), transport, 60)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_gstreamer_plays_video_and_audio(
    gateway: Gateway, vms_password: str, transport: str
) -> None:
    require("gst-launch-1.0", SYSTEM_PYTHON)
    url = stream_url(gateway, "hik1", "main", None)
    code, out, err = await run_tool(
        SYSTEM_PYTHON,
        GST_PROBE,
        url,
        "--user",
        "vms",
        "--password",
        vms_password,
        "--protocols",
        transport,
        "--frames",
        "50",
        timeout=40,
    )
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert code == 0, f"{out} {err[-2000:]}"
    assert result["video_frames"] >= 50
    assert result["audio_buffers"] > 0
    assert result["error"] is None


async def test_one_upstream_session_for_many_clients(
    gateway: Gateway, fleet: SimFleet, vms_password: str
) -> None:
    require("ffmpeg")
    cam = fleet.cameras[0]
    hub = gateway.hub("hik1", "main")
    assert hub is not None
    await wait_for(lambda: hub.state == "live", 15, "the upstream to come up")
    url = stream_url(gateway, "hik1", "main", vms_password)
    readers = [RtspReader(url, transport="tcp") for _ in range(3)]
    for reader in readers:
        await reader.start()
    ffmpeg = asyncio.ensure_future(
        run_tool(
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-rtsp_transport",
            "udp",
            "-i",
            url,
            "-frames:v",
            "75",
            "-f",
            "null",
            "-",
            timeout=40,
        )
    )
    try:
        await wait_for(lambda: len(hub.subscribers) == 4, 20, "four VMS clients")
        for reader in readers:
            await reader.wait_frames(10, timeout=10, media="video")
        assert camera_sessions(cam, "main") == 1
        assert hub.upstream_sessions == 1
    finally:
        for reader in readers:
            await reader.close()
        code, _, err = await ffmpeg
    assert code == 0, err
    assert camera_sessions(cam, "main") == 1


async def test_wrong_or_missing_credentials_get_401_and_open_no_upstream(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("ffprobe")
    text = gateway_config_text(fleet, tmp_path, vms_password, camera_extra="on_demand = true")
    gw = Gateway(cfgmod.loads(text), start_services=False)
    await gw.start()
    cam = fleet.cameras[0]
    try:
        for password in ("wrong-password", None):
            code, _, err = await run_tool(
                "ffprobe",
                "-v",
                "error",
                "-rtsp_transport",
                "tcp",
                stream_url(gw, "hik1", "main", password),
                timeout=20,
            )
            assert code != 0
            assert "401" in err
        hub = gw.hub("hik1", "main")
        assert hub is not None
        assert hub.upstream_sessions == 0
        assert camera_sessions(cam, "main") == 0
        # With the right password the same on-demand stream opens its upstream.
        code, _, err = await run_tool(
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            stream_url(gw, "hik1", "main", vms_password),
            timeout=30,
        )
        assert code == 0, err
        assert hub.upstream_sessions == 1
    finally:
        await gw.stop()


async def test_client_survives_camera_restart(
    gateway: Gateway, fleet: SimFleet, vms_password: str
) -> None:
    """Camera killed and restarted: the VMS session stays up, RTP stays continuous, and
    frames after the restart decode."""
    hub = gateway.hub("hik1", "main")
    assert hub is not None
    received: list[ReceivedFrame] = []
    reader = RtspReader(
        stream_url(gateway, "hik1", "main", vms_password),
        on_frame=received.append,
        depacketize=True,
    )
    await reader.start()
    try:
        await reader.wait_frames(10, timeout=15, media="video")
        session_id = reader.stats.session_id
        cam = fleet.cameras[0]
        await cam.stop()
        await wait_for(lambda: hub.state == "down", 15, "the gateway to notice the camera died")
        before = len([f for f in received if f.track == 0])
        restarted = SimCamera(cam.device, cam.streams)
        fleet.cameras[0] = restarted
        await restarted.start()
        await wait_for(lambda: hub.state == "live", 20, "the upstream to reconnect")
        await reader.wait_frames(before + 30, timeout=20, media="video")
        assert reader.stats.session_id == session_id
        video = reader.tracks[0]
        assert video.lost == 0, "RTP sequence numbers must continue across the reconnect"
        assert video.timestamp_backwards == 0
        assert hub.stats.reconnects >= 1
        after = [f for f in received[before:] if f.track == 0]
        start = next(i for i, f in enumerate(after) if f.keyframe)
        decoder = av.CodecContext.create("h264", "r")
        decoded = 0
        for frame in after[start:]:
            assert frame.data is not None
            decoded += len(decoder.decode(av.Packet(frame.data)))
        assert decoded >= 20
    finally:
        await reader.close()


async def _stalled_client(port: int, path: str, password: str) -> socket.socket:
    """A client that sets up and plays a stream, then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    url = f"rtsp://127.0.0.1:{port}{path}"
    auth = DigestClient("vms", password)
    parser = RtspConnectionParser("client")
    cseq = 0
    session = ""

    def exchange(method: str, uri: str, headers: dict[str, str]) -> RtspResponse:
        nonlocal cseq
        for _ in range(2):
            cseq += 1
            hdrs = {"CSeq": str(cseq), **headers}
            if session:
                hdrs["Session"] = session
            authorization = auth.authorization(method, uri) if auth.ready else None
            if authorization:
                hdrs["Authorization"] = authorization
            sock.sendall(bytes(RtspRequest(method, uri, hdrs)))
            while True:
                event = parser.next_event()
                if isinstance(event, RtspResponse):
                    break
                data = sock.recv(65536)
                assert data, "server closed the connection"
                parser.feed(data)
            if event.status == 401:
                auth.handle_challenge(event.headers.get_all("WWW-Authenticate"))
                continue
            return event
        raise AssertionError("authentication failed")

    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(
        None, exchange, "DESCRIBE", url, {"Accept": "application/sdp"}
    )
    assert response.status == 200
    response = await loop.run_in_executor(
        None,
        exchange,
        "SETUP",
        url + "/trackID=0",
        {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
    )
    assert response.status == 200
    session = (response.headers.get("Session") or "").split(";")[0]
    response = await loop.run_in_executor(None, exchange, "PLAY", url, {"Range": "npt=0-"})
    assert response.status == 200
    return sock


async def test_stalled_client_does_not_delay_healthy_client(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    budget = 65536
    text = gateway_config_text(
        fleet,
        tmp_path,
        vms_password,
        server_extra=f"client_send_budget = {budget}\nclient_stall_timeout = 2.0",
    )
    gw = Gateway(cfgmod.loads(text), start_services=False)
    await gw.start()
    try:
        hub = gw.hub("hik1", "main")
        assert hub is not None and gw.rtsp is not None
        await wait_for(lambda: hub.state == "live", 15, "the upstream")
        healthy = RtspReader(stream_url(gw, "hik1", "main", vms_password))
        await healthy.start()
        stalled = await _stalled_client(gw.rtsp.port, "/hik1/main", vms_password)
        try:
            stalled_session = next(
                s
                for s in gw.rtsp.sessions.values()
                if s.tcp and s.conn.peer[1] == stalled.getsockname()[1]
            )
            peak_backlog = 0
            largest_frame = 0

            def stalled_dropped() -> bool:
                nonlocal peak_backlog, largest_frame
                transport = stalled_session.conn.transport
                if transport is not None:
                    peak_backlog = max(peak_backlog, transport.get_write_buffer_size())
                largest_frame = max([largest_frame] + [f.size for f in hub.gop])
                return hub.stats.slow_disconnects >= 1

            frames_before = healthy.tracks[0].frames
            await wait_for(stalled_dropped, 60, "the stalled client to be disconnected")
            assert stalled_session.dropped > 0
            assert peak_backlog <= budget + largest_frame
            # The healthy client kept receiving in real time throughout.
            await healthy.wait_frames(frames_before + 25, timeout=5, media="video")
            gaps = healthy.tracks[0].as_dict()["max_frame_gap"]
            assert gaps is not None and gaps < 0.5, f"healthy client stalled for {gaps}s"
            assert healthy.tracks[0].lost == 0
        finally:
            stalled.close()
            await healthy.close()
    finally:
        await gw.stop()


async def test_new_client_starts_from_cached_keyframe(gateway: Gateway, vms_password: str) -> None:
    """The GOP cache: a new reader gets a decodable keyframe at once, not after a GOP."""
    hub = gateway.hub("hik1", "main")
    assert hub is not None
    await wait_for(lambda: bool(hub.gop), 15, "a cached keyframe")
    reader = RtspReader(stream_url(gateway, "hik1", "main", vms_password))
    await reader.start()
    try:
        await reader.wait_frames(1, timeout=10, media="video")
        first = reader.tracks[0]
        assert first.keyframes >= 1
        assert reader.stats.first_frame_time is not None
        # The test GOP is 1 s; starting from the cache must beat waiting for the next one.
        assert reader.stats.first_frame_time < 0.5
    finally:
        await reader.close()


def test_cli_check_reports_every_problem(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[vms]\nusername = "vms"\n[[camera]]\nname = "a b"\nhost = "x"\ncolour = "red"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{bad}: vms.password: is required" in proc.stderr
    assert f'{bad}: camera "a b" (camera[0], line 3): name:' in proc.stderr
    assert f'{bad}: camera "a b" (camera[0], line 3): colour: unknown key' in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("camera", ["hik1", "dahua1"])
async def test_native_ingest_serves_decodable_streams_and_survives_restart(
    fleet: SimFleet, tmp_path: Path, vms_password: str, camera: str
) -> None:
    """The optional native ingest (our asyncio RTSP client instead of PyAV) behind the same
    hub: real ffmpeg decodes the relayed camera payloads with no error, and a camera restart
    keeps the client's session."""
    require("ffmpeg")
    text = gateway_config_text(fleet, tmp_path, vms_password, server_extra='ingest = "native"')
    gw = Gateway(cfgmod.loads(text), start_services=False)
    await gw.start()
    try:
        hub = gw.hub(camera, "main")
        assert hub is not None
        await wait_for(lambda: hub.state == "live", 15, "the native upstream")
        await assert_ffmpeg_decodes(stream_url(gw, camera, "main", vms_password), "tcp", 40)
        # The camera's own payloads went out as they came: nothing was rebuilt or refused.
        assert hub.stats.relayed_frames > 0
        assert hub.stats.repacketized_frames == 0 and hub.stats.malformed_frames == 0
        reader = RtspReader(stream_url(gw, camera, "main", vms_password))
        await reader.start()
        try:
            await reader.wait_frames(10, timeout=15, media="video")
            index = 0 if camera == "hik1" else 1
            cam = fleet.cameras[index]
            await cam.stop()
            await wait_for(lambda: hub.state == "down", 15, "the camera to be seen down")
            before = reader.tracks[0].frames
            restarted = SimCamera(cam.device, cam.streams)
            fleet.cameras[index] = restarted
            await restarted.start()
            await reader.wait_frames(before + 25, timeout=25, media="video")
            assert reader.tracks[0].lost == 0
            assert reader.tracks[0].timestamp_backwards == 0
            assert camera_sessions(restarted, "main") == 1
        finally:
            await reader.close()
    finally:
        await gw.stop()
