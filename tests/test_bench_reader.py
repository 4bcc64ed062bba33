"""The benchmark's lean reader: its sans-IO stream over interleaved bytes, then one session
against a scripted RTSP server on loopback (auth, keep-alive, kernel receive stamps)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from benchmarks.readers import (
    SO_TIMESTAMPNS,
    Counters,
    LatencyHistogram,
    LeanReader,
    StampedStream,
    kernel_receive_ns,
)
from gateway.digest import DigestAuthenticator
from gateway.rtp.interleaved import interleave
from gateway.rtp.receiver import TrackStats
from gateway.rtsp.client import RtspClientError
from gateway.rtsp.message import RtspConnectionParser, RtspProtocolError, RtspRequest, RtspResponse
from gateway.sim.latency import latency_sei

T0 = 1_700_000_000_000_000_000  # a wall-clock time in ns


def rtp(seq: int, ts: int = 0, payload: bytes = b"\x41\x00", marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, 0x1234) + payload


def video(seq: int, ts: int = 0, marker: bool = True, payload: bytes = b"\x41\x00") -> bytes:
    return interleave(0, rtp(seq, ts, payload, marker))


SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 {codec}/90000\r\na=control:trackID=0\r\n"
    "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=1\r\n"
)


def new_stream(codec: str = "H264") -> tuple[StampedStream, TrackStats, TrackStats]:
    """A stream as after SETUP: video on channels 0/1, audio on 2/3."""
    stream = StampedStream(LatencyHistogram(), LatencyHistogram())
    _, (v, a) = stream.describe(SDP.format(codec=codec).encode(), "rtsp://h/s/")
    stream.connection.channels.update({0: (v, False), 1: (v, True), 2: (a, False), 3: (a, True)})
    return stream, v.stats, a.stats


def feed(stream: StampedStream, data: bytes, received_ns: int = T0, now_ns: int = T0) -> None:
    stream.note(stream.feed(data, received_ns, now_ns))


def counts(stream: StampedStream) -> dict[str, int]:
    return Counters.read(stream.tracks).minus(Counters())


def test_packets_split_across_reads_count_as_whole_reads() -> None:
    data = b""
    for s in range(30):  # video fragments and audio interleaved, a loss and a duplicate
        if s != 17:
            data += video(s, 3000 * (s // 3), marker=s % 3 == 2)
        if s == 21:
            data += video(s, 3000 * 7)
        if s % 3 == 0:
            data += interleave(2, rtp(s // 3, 160 * s, b"\xff" * 160))
    whole, _, _ = new_stream()
    feed(whole, data)
    split, _, _ = new_stream()
    for i in range(len(data)):  # one byte per read: every header and payload is cut
        feed(split, data[i : i + 1])
    assert counts(split) == counts(whole)
    assert counts(whole) == {
        # 10 frames; the one whose marker packet (17) was lost ends at the next timestamp,
        # as in the gateway's RTSP reader
        "video_frames": 10,
        "audio_frames": 10,
        "packets": 40,  # 29 video, a duplicate, 10 audio
        "bytes": 30 * 14 + 10 * 172,
        "lost": 1,
        "duplicates": 1,
        "timestamp_backwards": 0,
        "malformed": 0,
    }


def test_sequence_wrap_is_not_loss_and_a_gap_is() -> None:
    stream, v, _ = new_stream()
    feed(stream, b"".join(video(s) for s in (65533, 65534, 65535, 0, 1)))
    assert (v.packets, v.lost) == (5, 0)
    feed(stream, video(3))  # 2 missing
    assert v.lost == 1
    feed(stream, video(6))  # 4 and 5 missing
    assert v.lost == 3


def test_gap_across_the_wrap_is_loss() -> None:
    stream, v, _ = new_stream()
    feed(stream, video(65534) + video(1))  # 65535 and 0 missing
    assert (v.packets, v.lost) == (2, 2)
    feed(stream, video(2))
    assert v.lost == 2


def test_loss_and_a_late_packet_making_up_for_it() -> None:
    stream, v, _ = new_stream()
    feed(stream, b"".join(video(s) for s in (10, 11, 13, 14)))
    assert v.lost == 1
    feed(stream, video(12))  # reordered, not lost after all
    assert v.lost == 0 and v.packets == 5


def test_duplicates_are_counted_and_not_frames() -> None:
    stream, v, _ = new_stream()
    feed(stream, b"".join(video(s) for s in (1, 2, 2, 3)))
    assert (v.packets, v.duplicates, v.lost, v.frames) == (4, 1, 0, 3)


def test_timestamp_going_backwards_with_wrap_allowed() -> None:
    stream, v, _ = new_stream()
    stamps = (0xFFFFF000, 0x00000100, 0x00000200, 0x00000150)  # wrap, then one step back
    feed(stream, b"".join(video(i + 1, ts) for i, ts in enumerate(stamps)))
    assert v.timestamp_backwards == 1


def test_rtsp_response_in_the_stream_is_skipped_even_when_split() -> None:
    body = b"$\x00\x13\x88" + b"x" * 4996  # looks like a frame: only Content-Length tells
    response = b"RTSP/1.0 200 OK\r\nCSeq: 7\r\nContent-Length: 5000\r\n\r\n" + body
    data = video(1) + response + video(2)
    for piece in (len(data), 1000, 7, 1):
        stream, v, _ = new_stream()
        for i in range(0, len(data), piece):
            feed(stream, data[i : i + piece])
        assert (v.packets, v.lost, stream.rtsp_messages) == (2, 0, 1), piece


def test_error_response_and_server_request_are_noted() -> None:
    stream, v, _ = new_stream()
    feed(
        stream,
        b"RTSP/1.0 454 Session Not Found\r\nCSeq: 9\r\n\r\n"
        + b"GET_PARAMETER rtsp://h/s RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        + video(1),
    )
    assert stream.rtsp_messages == 2 and v.packets == 1
    assert stream.rtsp_error_status == "RTSP/1.0 454 Session Not Found"


def test_rtcp_and_unknown_channels_are_not_media() -> None:
    stream, v, a = new_stream()
    feed(stream, interleave(1, b"\x80\xc8\x00\x06" + bytes(24)) + interleave(9, rtp(1)))
    assert v.rtcp_packets == 1 and v.packets == a.packets == 0


def test_short_or_non_rtp_frames_are_malformed() -> None:
    stream, v, _ = new_stream()
    feed(stream, interleave(0, b"\x80\x60\x00") + interleave(0, b"\x00" * 20) + video(1))
    assert (v.malformed, v.packets) == (2, 1)


def test_a_wrong_length_desynchronises_and_fails_clearly() -> None:
    stream, _, _ = new_stream()
    packet = rtp(1)
    lying = b"$\x00" + (len(packet) + 4).to_bytes(2, "big") + packet  # 4 bytes too long
    after = b"".join(video(s, payload=b"\x41" + bytes(1000)) for s in range(2, 40))
    # What follows is taken for the start of an RTSP message, until it cannot be one.
    with pytest.raises(RtspProtocolError, match="header section exceeds"):
        feed(stream, lying + after)


@pytest.mark.parametrize(
    "data",
    [
        b"RTSP/1.0 2x0 OK\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 999999999\r\n\r\n",
        b"RTSP/1.0 200 OK\r\n" + b"X-Pad: y\r\n" * 2000,
    ],
)
def test_bad_rtsp_messages_fail_with_a_reason(data: bytes) -> None:
    stream, _, _ = new_stream()
    with pytest.raises(RtspProtocolError):
        feed(stream, data)


def test_unfinished_header_is_held_not_failed() -> None:
    stream, v, _ = new_stream()
    feed(stream, b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n")
    feed(stream, b"\r\n" + video(1))
    assert v.packets == 1 and stream.rtsp_messages == 1


def test_megabytes_in_one_feed() -> None:
    stream, v, _ = new_stream()
    big = b"\x41" + bytes(1400)
    data = b"".join(video(s & 0xFFFF, ts=s, payload=big) for s in range(1000))  # ~1.4 MB
    feed(stream, data)
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
    stream, _, _ = new_stream(codec)
    stamp = T0 - 3_000_000
    payload = wrap(latency_sei(codec, stamp))  # type: ignore[operator]
    slice_nal = b"\x41\x00" if codec == "H264" else b"\x02\x01\x00"

    def frame(seq: int, ts: int, first: bytes = payload) -> bytes:
        return video(seq, ts, marker=False, payload=first) + video(seq + 1, ts, payload=slice_nal)

    feed(stream, frame(1, 0), T0, T0 + 2_000_000)
    assert stream.latency is not None and stream.app_latency is not None
    assert stream.latency.total == 0  # not recording yet
    stream.recording = True
    feed(stream, frame(3, 3000), T0, T0 + 2_000_000)
    assert stream.latency.counts == {3000: 1}
    assert stream.app_latency.counts == {5000: 1}
    # A fragment (FU-A / FU) carrying the same bytes is not where the stamp is looked for.
    fragment = (b"\x7c\x85" if codec == "H264" else b"\x62\x01\x93") + payload
    feed(stream, frame(5, 6000, fragment), T0, T0)
    assert stream.latency.total == 1
    # Behind packets the C walk takes a run at a time, the stamp is found all the same.
    middle = b"".join(
        video(s, 9000, marker=False, payload=slice_nal + bytes(40)) for s in (7, 8, 9)
    )
    feed(stream, middle + frame(10, 9000), T0, T0)
    assert stream.latency.total == 2


def test_latency_uses_the_read_that_completed_the_frame() -> None:
    stream, _, _ = new_stream()
    stream.recording = True
    frame = video(1, marker=False, payload=latency_sei("H264", T0)) + video(2)
    feed(stream, frame[:10], T0 + 1_000_000, T0 + 1_000_000)
    feed(stream, frame[10:30], T0 + 4_000_000, T0 + 4_000_000)
    feed(stream, frame[30:], T0 + 7_000_000, T0 + 8_000_000)
    assert stream.latency is not None and stream.latency.counts == {7000: 1}


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
        await wait_for(lambda: reader.stream.rtsp_messages == 1)
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
