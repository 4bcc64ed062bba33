"""The benchmark's lean reader: the sans-IO walk over interleaved bytes, then one session
against a scripted RTSP server on loopback (auth, keep-alive, kernel receive stamps)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from benchmarks.readers import (
    MAX_RTSP_HEAD,
    SO_TIMESTAMPNS,
    Counters,
    InterleavedWalk,
    LatencyHistogram,
    LeanReader,
    TrackCount,
    kernel_receive_ns,
)
from gateway.digest import DigestAuthenticator
from gateway.rtp.interleaved import interleave
from gateway.rtsp.client import RtspClientError
from gateway.rtsp.message import RtspConnectionParser, RtspRequest, RtspResponse
from gateway.sim.latency import latency_sei

T0 = 1_700_000_000_000_000_000  # a wall-clock time in ns


def rtp(seq: int, ts: int = 0, payload: bytes = b"\x41\x00", marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, 0x1234) + payload


def video(seq: int, ts: int = 0, marker: bool = True, payload: bytes = b"\x41\x00") -> bytes:
    return interleave(0, rtp(seq, ts, payload, marker))


def new_walk(codec: str = "H264") -> tuple[InterleavedWalk, TrackCount, TrackCount]:
    v = TrackCount("video", codec)
    a = TrackCount("audio", "PCMU")
    return InterleavedWalk({0: v, 2: a}, LatencyHistogram(), LatencyHistogram()), v, a


def counts(walk: InterleavedWalk) -> dict[str, int]:
    return Counters.read(walk.tracks).minus(Counters())


def test_packets_split_across_reads_count_as_whole_reads() -> None:
    stream = b""
    for s in range(30):  # video fragments and audio interleaved, a loss and a duplicate
        if s != 17:
            stream += video(s, 3000 * (s // 3), marker=s % 3 == 2)
        if s == 21:
            stream += video(s, 3000 * 7)
        if s % 3 == 0:
            stream += interleave(2, rtp(s // 3, 160 * s, b"\xff" * 160))
    whole, _, _ = new_walk()
    whole.feed(stream, T0, T0)
    split, _, _ = new_walk()
    for i in range(len(stream)):  # one byte per read: every header and payload is cut
        split.feed(stream[i : i + 1], T0, T0)
    assert counts(split) == counts(whole)
    assert counts(whole) == {
        "video_frames": 9,  # 10 marker packets, one of them (17) lost
        "audio_frames": 10,
        "packets": 40,  # 29 video, a duplicate, 10 audio
        "bytes": 30 * 14 + 10 * 172,
        "lost": 1,
        "duplicates": 1,
        "timestamp_backwards": 0,
        "malformed": 0,
    }


def test_sequence_wrap_is_not_loss_and_a_gap_is() -> None:
    walk, v, _ = new_walk()
    walk.feed(b"".join(video(s) for s in (65533, 65534, 65535, 0, 1)), T0, T0)
    assert (v.packets, v.lost) == (5, 0)
    walk.feed(video(3), T0, T0)  # 2 missing
    assert v.lost == 1
    walk.feed(video(6), T0, T0)  # 4 and 5 missing
    assert v.lost == 3


def test_gap_across_the_wrap_is_loss() -> None:
    walk, v, _ = new_walk()
    walk.feed(video(65534) + video(1), T0, T0)  # 65535 and 0 missing
    assert (v.packets, v.lost) == (2, 2)
    walk.feed(video(2), T0, T0)
    assert v.lost == 2


def test_loss_and_a_late_packet_making_up_for_it() -> None:
    walk, v, _ = new_walk()
    walk.feed(b"".join(video(s) for s in (10, 11, 13, 14)), T0, T0)
    assert v.lost == 1
    walk.feed(video(12), T0, T0)  # reordered, not lost after all
    assert v.lost == 0 and v.packets == 5


def test_duplicates_are_counted_and_not_frames() -> None:
    walk, v, _ = new_walk()
    walk.feed(b"".join(video(s) for s in (1, 2, 2, 3)), T0, T0)
    assert (v.packets, v.duplicates, v.lost, v.frames) == (4, 1, 0, 3)


def test_timestamp_going_backwards_with_wrap_allowed() -> None:
    walk, v, _ = new_walk()
    stamps = (0xFFFFF000, 0x00000100, 0x00000200, 0x00000150)  # wrap, then one step back
    walk.feed(b"".join(video(i + 1, ts) for i, ts in enumerate(stamps)), T0, T0)
    assert v.timestamp_backwards == 1


def test_rtsp_response_in_the_stream_is_skipped_even_when_split() -> None:
    body = b"$\x00\x13\x88" + b"x" * 4996  # looks like a frame: only Content-Length tells
    response = b"RTSP/1.0 200 OK\r\nCSeq: 7\r\nContent-Length: 5000\r\n\r\n" + body
    stream = video(1) + response + b"\r\n" + video(2)
    for piece in (len(stream), 1000, 7, 1):
        walk, v, _ = new_walk()
        for i in range(0, len(stream), piece):
            walk.feed(stream[i : i + piece], T0, T0)
        assert (v.packets, v.lost, walk.rtsp_messages, walk.other_frames) == (2, 0, 1, 0), piece


def test_error_response_and_server_request_are_skipped_and_noted() -> None:
    walk, v, _ = new_walk()
    walk.feed(
        b"RTSP/1.0 454 Session Not Found\r\nCSeq: 9\r\n\r\n"
        + b"GET_PARAMETER rtsp://h/s RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        + video(1),
        T0,
        T0,
    )
    assert walk.rtsp_messages == 2 and v.packets == 1
    assert walk.rtsp_error_status == "RTSP/1.0 454 Session Not Found"


def test_rtcp_and_unknown_channels_are_not_media() -> None:
    walk, v, a = new_walk()
    walk.feed(interleave(1, b"\x80\xc8\x00\x06" + bytes(24)) + interleave(9, rtp(1)), T0, T0)
    assert walk.other_frames == 2 and v.packets == a.packets == 0


def test_short_or_non_rtp_frames_are_malformed() -> None:
    walk, v, _ = new_walk()
    walk.feed(interleave(0, b"\x80\x60\x00") + interleave(0, b"\x00" * 20) + video(1), T0, T0)
    assert (v.malformed, v.packets) == (2, 1)


def test_a_wrong_length_desynchronises_and_fails_clearly() -> None:
    walk, _, _ = new_walk()
    packet = rtp(1)
    lying = b"$\x00" + (len(packet) + 4).to_bytes(2, "big") + packet  # 4 bytes too long
    with pytest.raises(ValueError, match=r"expected an interleaved frame .* got bytes 80 e0 00 02"):
        walk.feed(lying + video(2) + video(3), T0, T0)
    with pytest.raises(ValueError, match="walk already failed"):
        walk.feed(video(4), T0, T0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"RTSP/1.0 2x0 OK\r\n\r\n", "malformed RTSP start line"),
        (b"HELLO\r\n", "malformed RTSP start line"),
        (b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"RTSP/1.0 200 OK\r\nContent-Length: 999999999\r\n\r\n", "exceeds 262144"),
        (b"RTSP/1.0 200 OK\r\n" + b"X-Pad: y\r\n" * 2000, f"exceeds {MAX_RTSP_HEAD} bytes"),
    ],
)
def test_bad_rtsp_messages_fail_with_a_reason(data: bytes, message: str) -> None:
    walk, _, _ = new_walk()
    with pytest.raises(ValueError, match=message):
        walk.feed(data, T0, T0)


def test_unfinished_header_is_held_not_failed() -> None:
    walk, v, _ = new_walk()
    walk.feed(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n", T0, T0)
    walk.feed(b"\r\n" + video(1), T0, T0)
    assert v.packets == 1 and walk.rtsp_messages == 1


def test_more_bytes_than_the_buffer_in_one_feed() -> None:
    walk, v, _ = new_walk()
    big = b"\x41" + bytes(1400)
    stream = b"".join(video(s & 0xFFFF, payload=big) for s in range(1000))  # ~1.4 MB
    walk.feed(stream, T0, T0)
    assert (v.packets, v.lost, v.frames) == (1000, 0, 1000)


@pytest.mark.parametrize(
    ("codec", "wrap"),
    [
        ("H264", lambda sei: sei),  # SEI NAL as a single-NAL packet
        ("H264", lambda sei: b"\x18" + len(sei).to_bytes(2, "big") + sei),  # STAP-A
        ("H265", lambda sei: sei),
        ("H265", lambda sei: b"\x60\x01" + len(sei).to_bytes(2, "big") + sei),  # AP
    ],
)
def test_sei_stamp_gives_kernel_and_app_latency(codec: str, wrap: object) -> None:
    walk, _, _ = new_walk(codec)
    stamp = T0 - 3_000_000
    payload = wrap(latency_sei(codec, stamp))  # type: ignore[operator]
    walk.feed(video(1, marker=False, payload=payload), T0, T0 + 2_000_000)
    assert walk.latency is not None and walk.app_latency is not None
    assert walk.latency.total == 0  # not recording yet
    walk.recording = True
    walk.feed(video(2, marker=False, payload=payload), T0, T0 + 2_000_000)
    assert walk.latency.counts == {3000: 1}
    assert walk.app_latency.counts == {5000: 1}
    # Also inside a run of in-order packets (the walk's fast path).
    walk.feed(video(3) + video(4, marker=False, payload=payload), T0, T0 + 2_000_000)
    assert walk.latency.counts == {3000: 2}
    # A fragment (FU-A / FU) carrying the same bytes is not where the stamp is looked for.
    fragment = (b"\x7c\x85" if codec == "H264" else b"\x62\x01\x93") + payload
    walk.feed(video(5, payload=fragment), T0, T0)
    assert walk.latency.total == 2
    # Mid-frame, after packets the C walk takes a run at a time: it stops before the stamp.
    middle = b"".join(video(s, marker=False, payload=b"\x7c\x01" + bytes(40)) for s in (6, 7, 8))
    walk.feed(middle + video(9, marker=False, payload=payload) + video(10), T0, T0)
    assert walk.latency.total == 3


def test_latency_uses_the_read_that_completed_the_packet() -> None:
    walk, _, _ = new_walk()
    walk.recording = True
    frame = video(1, marker=False, payload=latency_sei("H264", T0))
    walk.feed(frame[:10], T0 + 1_000_000, T0 + 1_000_000)
    walk.feed(frame[10:], T0 + 7_000_000, T0 + 8_000_000)
    assert walk.latency is not None and walk.latency.counts == {7000: 1}


def test_kernel_receive_stamp_arrives_on_loopback_tcp() -> None:
    """The premise of the reader: Linux attaches SCM_TIMESTAMPNS to TCP reads.

    The kernel switches receive stamping on a moment after the first socket asks for it (a
    deferred static key), so the first reads may come without; once they come, they stay.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        peer, _ = server.accept()
        buffer = bytearray(1000)
        with client, peer:

            def one_read() -> tuple[int, int | None, int, int]:
                before = time.time_ns()
                peer.sendall(b"x" * 100)
                n, ancillary, _, _ = client.recvmsg_into([buffer], socket.CMSG_SPACE(16))
                return n, kernel_receive_ns(ancillary), before, time.time_ns()

            deadline = time.monotonic() + 5.0
            while one_read()[1] is None:
                assert time.monotonic() < deadline, "no SCM_TIMESTAMPNS on loopback TCP"
            for _ in range(20):
                n, stamp, before, after = one_read()
                assert n == 100 and stamp is not None
                assert before <= stamp <= after


# --------------------------------------------------------------------------- one session


class ScriptedCamera:
    """An RTSP server on loopback speaking just enough for one LeanReader session: Digest auth
    on every request, one H.264 and one PCMU track, a 2 s session timeout, and then what the
    test sends with :meth:`send`."""

    SDP = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\n"
        b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n"
        b"m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=1\r\n"
    )

    def __init__(self) -> None:
        self.auth = DigestAuthenticator("cam", {"admin": "secret"}, b"k" * 32)
        self.methods: list[str] = []
        self.keepalive = asyncio.Event()
        self.playing = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"rtsp://127.0.0.1:{port}/main"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        parser = RtspConnectionParser("server")
        while data := await reader.read(4096):
            parser.feed(data)
            for event in parser.events():
                if isinstance(event, RtspRequest):
                    writer.write(bytes(self._answer(event)))

    def _answer(self, request: RtspRequest) -> RtspResponse:
        now = time.time()
        if self.auth.verify(request.method, request.headers.get("Authorization"), now) is None:
            return RtspResponse.for_request(
                request, 401, [("WWW-Authenticate", c) for c in self.auth.challenge(now)]
            )
        self.methods.append(request.method)
        if request.method == "OPTIONS":
            return RtspResponse.for_request(
                request, 200, {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER"}
            )
        if request.method == "DESCRIBE":
            return RtspResponse.for_request(
                request, 200, {"Content-Type": "application/sdp"}, self.SDP
            )
        if request.method == "SETUP":
            transport = request.headers["Transport"]
            return RtspResponse.for_request(
                request, 200, {"Transport": transport, "Session": "abc123;timeout=2"}
            )
        if request.method == "PLAY":
            self.playing.set()
        if request.method == "GET_PARAMETER":
            self.keepalive.set()
        return RtspResponse.for_request(request, 200)

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    """Until ``condition()`` holds (the reader has no per-packet hook to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def test_session_counts_stamps_keeps_alive_and_records_the_close() -> None:
    camera = ScriptedCamera()
    url = await camera.start()
    latency, app_latency = LatencyHistogram(), LatencyHistogram()
    reader = LeanReader(url, "admin", "secret", latency=latency, app_latency=app_latency)
    try:
        await reader.start()
        assert camera.methods == ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY"]
        reader.recording = True
        sei = latency_sei("H264")
        camera.send(
            video(1, marker=False, payload=sei)
            + video(2, marker=True)
            + interleave(2, rtp(7, payload=b"\xff" * 160))
        )
        await wait_for(lambda: reader.counters().packets == 3)
        # Keep-alive at half the 2 s session timeout; its response comes inside the stream.
        await asyncio.wait_for(camera.keepalive.wait(), 5.0)
        await wait_for(lambda: reader.walk is not None and reader.walk.rtsp_messages == 1)
        camera.send(video(4))  # sequence 3 never sent
        await wait_for(lambda: reader.counters().packets == 4)
        got = reader.counters()
        assert (got.video_frames, got.audio_frames, got.lost) == (2, 1, 1)
        assert latency.total == 1 and app_latency.total == 1
        kernel_ms, app_ms = latency.percentile(1.0), app_latency.percentile(1.0)
        assert kernel_ms is not None and app_ms is not None
        assert kernel_ms <= app_ms < 1000  # the kernel got the bytes before the reader did
        assert reader.read_stats.kernel_stamped >= 1  # the first reads may precede stamping
        assert reader.error is None
        await camera.stop()
        await asyncio.wait_for(reader.failed.wait(), 5.0)
        assert reader.error == "connection closed by server"
    finally:
        reader.close()
        await camera.stop()


async def test_wrong_password_is_a_401_error() -> None:
    camera = ScriptedCamera()
    url = await camera.start()
    reader = LeanReader(url, "admin", "wrong")
    try:
        with pytest.raises(RtspClientError, match="401"):
            await reader.start()
    finally:
        reader.close()
        await camera.stop()


async def test_refused_connection_is_an_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        reader = LeanReader(f"rtsp://127.0.0.1:{port}/x", "a", "b")
        with pytest.raises(RtspClientError, match="cannot connect"):
            await reader.start()


def test_run_queue_wait_is_read_from_schedstat_and_grows_under_contention() -> None:
    """benchmarks.procstat reads the kernel's run-queue wait: two busy processes on one CPU
    must between them wait about as long as one of them runs."""
    import os
    import subprocess
    import sys

    from benchmarks.procstat import run_queue_wait_ns

    cpu = sorted(os.sched_getaffinity(0))[0]
    spin = "import time\nend = time.monotonic() + 0.4\nwhile time.monotonic() < end: pass\n"
    spin += "print('done', flush=True)\ntime.sleep(30)\n"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", spin],
            stdout=subprocess.PIPE,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == b"done\n"
        waited = sum(run_queue_wait_ns(proc.pid) for proc in procs)
        assert waited > 150_000_000, waited  # each spun 0.4 s while the other held the CPU
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert run_queue_wait_ns(2**22 + 1) == 0  # no such process: nothing, not an error


def test_load_scheduling_is_read_and_a_load_in_another_autogroup_is_flagged() -> None:
    """benchmarks.procstat reads each process's policy, nice and autogroup; a camera process
    in a session of its own lands in another autogroup (where SCHED_IDLE no longer keeps it
    below the relay), and the check says so."""
    import os
    import subprocess
    import sys

    from benchmarks.procstat import load_below_relay, scheduling

    def idle() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def nice() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, 19)

    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    camera = subprocess.Popen(sleep, process_group=0, preexec_fn=idle)
    reader = subprocess.Popen(sleep, process_group=0, preexec_fn=nice)
    stray = subprocess.Popen(sleep, start_new_session=True, preexec_fn=idle)
    try:
        relay = scheduling(os.getpid())
        cam, rdr, alone = scheduling(camera.pid), scheduling(reader.pid), scheduling(stray.pid)
        assert cam["policy"] == "SCHED_IDLE" and rdr["policy"] == "SCHED_OTHER"
        assert rdr["nice"] == 19
        assert cam["autogroup"] == rdr["autogroup"] == relay["autogroup"]
        assert load_below_relay(relay, [cam], [rdr]) == []
        problems = load_below_relay(relay, [cam, alone], [relay])
        assert f"reader process 0 runs at nice {relay['nice']}, not below the relay" in problems
        if relay["autogroup"] is not None:  # a kernel with autogroups
            assert alone["autogroup"] != relay["autogroup"]
            assert any(p.startswith("camera process 1 is in /autogroup-") for p in problems)
        assert load_below_relay(relay, [relay], [])[0] == (
            "camera process 0 runs SCHED_OTHER, not SCHED_IDLE"
        )
    finally:
        for proc in (camera, reader, stray):
            proc.kill()
            proc.wait()
    with pytest.raises(ProcessLookupError):
        scheduling(2**22 + 1)
