"""RtspReader against a real RTSP server that is not ours (GStreamer's gst-rtsp-server, run by
Debian's /usr/bin/python3 which has gi), plus a scripted server for exact RTP accounting."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import av
import pytest

import gateway.rtp.receiver as receiver_module
from gateway.codecs.sdp import parse_sdp
from gateway.rtp.interleaved import interleave, interleaved_payloads
from gateway.rtp.receiver import ReceivedFrame, RtpReceiver, SpanCallback, receiver_for
from gateway.rtsp.client import RtspClientError, RtspReader
from gateway.rtsp.client_connection import ClientConnection
from gateway.rtsp.message import RtspConnectionParser, RtspProtocolError, RtspRequest, RtspResponse

GST_PYTHON = "/usr/bin/python3"

# Runs under Debian's python3: an RTSP server with H.264 video and PCMU audio, optional auth.
GST_SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

Gst.init(None)
port, auth_kind, user, password = sys.argv[1:5]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency key-int-max=50 speed-preset=ultrafast bitrate=500 "
    "! rtph264pay name=pay0 pt=96 config-interval=-1 "
    "audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! mulawenc "
    "! rtppcmupay name=pay1 )"
)
factory.set_shared(True)
if auth_kind != "none":
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    if auth_kind == "digest":
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        auth.add_digest(user, password, token)
    else:
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    factory.add_role_from_structure(Gst.Structure.new_from_string(
        "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
server.get_mount_points().add_factory("/test", factory)
if server.attach(None) == 0:
    sys.exit("cannot attach the RTSP server")
GLib.MainLoop().run()
"""


def _gst_rtsp_server_available() -> bool:
    if not os.path.exists(GST_PYTHON):
        return False
    probe = subprocess.run(
        [GST_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_gst = pytest.mark.skipif(
    not _gst_rtsp_server_available(), reason="needs gst-rtsp-server for /usr/bin/python3"
)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GstServer:
    port: int
    user: str
    password: str

    def url(self, credentials: bool = False) -> str:
        auth = f"{self.user}:{self.password}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/test"


async def _wait_accepting(port: int, proc: asyncio.subprocess.Process, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError("gst-rtsp-server exited before listening") from None
            if loop.time() > deadline:
                raise RuntimeError(f"gst-rtsp-server not listening after {timeout}s") from None
            await asyncio.sleep(0.05)  # polling another process's port: nothing to await
            continue
        writer.close()
        await writer.wait_closed()
        return


@pytest.fixture
async def gst_server(request: pytest.FixtureRequest) -> AsyncIterator[GstServer]:
    auth_kind = getattr(request, "param", "none")
    server = GstServer(free_tcp_port(), "viewer", "pa ss:w0rd")
    proc = await asyncio.create_subprocess_exec(
        GST_PYTHON, "-c", GST_SERVER, str(server.port), auth_kind, server.user, server.password,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_accepting(server.port, proc, 20)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def assert_clean_stream(reader: RtspReader) -> None:
    video, audio = reader.stats.tracks
    assert (video.media, video.encoding, video.clock_rate) == ("video", "H264", 90000)
    assert (audio.media, audio.encoding, audio.clock_rate) == ("audio", "PCMU", 8000)
    for track in (video, audio):
        assert track.packets > 0 and track.bytes > 12 * track.packets
        assert track.lost == 0
        assert track.reordered == 0 and track.duplicates == 0
        assert track.timestamp_backwards == 0
        assert track.malformed == 0
        assert track.ssrc is not None
        # RTP-Info announced the first sequence number we then received.
        assert track.rtp_info_seq == track.first_seq
    assert video.keyframes >= 1
    first = reader.stats.first_frame_time
    assert first is not None and 0 < first < 5


@needs_gst
async def test_tcp_interleaved_both_tracks(gst_server: GstServer) -> None:
    reader = RtspReader(gst_server.url(), transport="tcp")
    await reader.start()
    try:
        await reader.wait_frames(10, timeout=20)
        video, audio = reader.stats.tracks
        assert video.frames >= 10 and audio.frames >= 10
        # Frames are whole pictures: at 25 fps, far fewer frames than packets is impossible.
        assert video.packets >= video.frames
        assert_clean_stream(reader)
        assert reader.stats.session_id
    finally:
        await reader.close()


@needs_gst
@pytest.mark.parametrize("gst_server", ["digest"], indirect=True)
async def test_udp_with_digest_auth_and_depacketizing(gst_server: GstServer) -> None:
    frames: list[ReceivedFrame] = []
    reader = RtspReader(
        gst_server.url(credentials=True),
        transport="udp",
        on_frame=frames.append,
        depacketize=True,
    )
    await reader.start()
    try:
        await reader.wait_frames(25, timeout=20, media="video")
        await reader.wait_frames(5, timeout=20, media="audio")
        assert_clean_stream(reader)
    finally:
        await reader.close()
    video = [f for f in frames if f.track == 0]
    audio = [f for f in frames if f.track == 1]
    assert len(video) >= 25 and len(audio) >= 5
    assert all(f.data is not None and f.data.startswith(b"\x00\x00\x00\x01") for f in video)
    # PCMU is one byte per sample: each packet's length is the timestamp step to the next.
    for this, following in itertools.pairwise(audio):
        assert this.data is not None
        assert (following.timestamp - this.timestamp) & 0xFFFFFFFF == len(this.data)
    # The depacketized access units decode: the keyframe gives a 320x240 picture.
    codec = av.CodecContext.create("h264", "r")
    first_key = next(i for i, f in enumerate(video) if f.keyframe)
    pictures = []
    for frame in video[first_key:]:
        assert frame.data is not None
        pictures += codec.decode(av.Packet(frame.data))
    assert pictures and (pictures[0].width, pictures[0].height) == (320, 240)
    timestamps = [f.timestamp for f in video]
    assert timestamps == sorted(timestamps)


@needs_gst
@pytest.mark.parametrize("gst_server", ["basic"], indirect=True)
async def test_basic_auth_and_keepalive(gst_server: GstServer) -> None:
    reader = RtspReader(
        gst_server.url(),
        username=gst_server.user,
        password=gst_server.password,
        keepalive_interval=0.2,
    )
    await reader.start()
    try:
        # About two seconds of video: long enough for several keep-alives at 0.2 s.
        await reader.wait_frames(50, timeout=20, media="video")
        assert reader.stats.keepalives >= 2
        assert_clean_stream(reader)
    finally:
        await reader.close()


@needs_gst
@pytest.mark.parametrize("gst_server", ["digest"], indirect=True)
async def test_wrong_password_is_401(gst_server: GstServer) -> None:
    reader = RtspReader(gst_server.url(), username=gst_server.user, password="wrong")
    with pytest.raises(RtspClientError) as info:
        await reader.start()
    assert info.value.status == 401
    with pytest.raises(RtspClientError) as info:
        await RtspReader(gst_server.url()).start()  # no credentials at all
    assert info.value.status == 401


@needs_gst
async def test_unknown_path_is_404(gst_server: GstServer) -> None:
    reader = RtspReader(gst_server.url().replace("/test", "/nothing"))
    with pytest.raises(RtspClientError) as info:
        await reader.start()
    assert info.value.status == 404


async def test_connection_refused() -> None:
    reader = RtspReader(f"rtsp://127.0.0.1:{free_tcp_port()}/x")
    with pytest.raises(RtspClientError, match="cannot connect") as info:
        await reader.start()
    assert info.value.status == 0


# --------------------------------------------------------------------------- scripted server

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=scripted\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"a=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"a=fmtp:96 packetization-mode=1\r\na=control:trackID=0\r\n"
)


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, 0x1234) + payload


IDR = bytes([0x65, 0x88, 0x84])
P_SLICE = bytes([0x41, 0x9A, 0x02])
FU_A_IDR_MIDDLE = bytes([0x7C, 0x05, 0x11])  # FU-A continuing an IDR NAL (no start bit)

# (seq, timestamp, payload, marker): the reader joins mid-frame, then wraps the sequence
# number, loses packet 2, gets 4 late, 5 twice, and one timestamp that goes backwards.
SCRIPT = [
    (65533, 1000, FU_A_IDR_MIDDLE, True),  # end of a keyframe whose start we never saw
    (65534, 4600, IDR, True),  # a complete keyframe
    (65535, 8200, P_SLICE, True),
    (0, 11800, P_SLICE, True),
    (1, 15400, P_SLICE, True),
    (3, 19000, P_SLICE, True),  # 2 lost
    (5, 26200, P_SLICE, True),  # 4 not yet arrived
    (4, 22600, P_SLICE, True),  # late: reordered, and its timestamp goes backwards
    (5, 26200, P_SLICE, True),  # duplicate
    (6, 29800, IDR, True),
]


class ScriptedServer:
    """Answers the RTSP handshake, then plays SCRIPT over TCP interleaved channel 4."""

    def __init__(
        self,
        close_after_play: bool = False,
        play_status: int = 200,
        script: list[tuple[int, int, bytes, bool]] = SCRIPT,
        unanswered: tuple[str, ...] = (),
    ) -> None:
        self.script = script
        self.unanswered = unanswered
        self.requests: list[RtspRequest] = []
        self.close_after_play = close_after_play
        self.play_status = play_status
        self.torn_down = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtspConnectionParser("server")
        try:
            while data := await reader.read(4096):
                parser.feed(data)
                for event in parser.events():
                    if isinstance(event, RtspRequest):
                        self.requests.append(event)
                        if event.method in self.unanswered:
                            continue
                        writer.write(bytes(self.respond(event)))
                        if event.method == "PLAY" and self.play_status == 200:
                            writer.write(b"".join(interleave(4, rtp(*p)) for p in self.script))
                            if self.close_after_play:
                                writer.close()
                                return
                        if event.method == "TEARDOWN":
                            self.torn_down.set()
                await writer.drain()
        finally:
            writer.close()

    def respond(self, req: RtspRequest) -> RtspResponse:
        base = "rtsp://127.0.0.1/s/"
        answers: dict[str, Callable[[], RtspResponse]] = {
            "OPTIONS": lambda: RtspResponse.for_request(
                req, 200, {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"}
            ),
            "DESCRIBE": lambda: RtspResponse.for_request(
                req, 200, {"Content-Base": base, "Content-Type": "application/sdp"}, SDP
            ),
            "SETUP": lambda: RtspResponse.for_request(
                req,
                200,
                {
                    "Session": "sess1;timeout=30",
                    # The server picks other channels than offered: the reader must follow.
                    "Transport": "RTP/AVP/TCP;unicast;interleaved=4-5;ssrc=00001234",
                },
            ),
            "PLAY": lambda: RtspResponse.for_request(
                req, self.play_status, {"RTP-Info": f"url={base}trackID=0;seq=65533;rtptime=1000"}
            ),
        }
        return answers.get(req.method, lambda: RtspResponse.for_request(req, 200))()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedServer, str]]:
    server = ScriptedServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"rtsp://127.0.0.1:{port}/s"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_rtp_accounting_with_wrap_loss_reorder_duplicate(
    scripted: tuple[ScriptedServer, str],
) -> None:
    server, url = scripted
    reader = RtspReader(url)
    await reader.start()
    try:
        # Every packet but the duplicate ends a frame: 9 frames means all were processed.
        await reader.wait_frames(9, timeout=10)
        (video,) = reader.stats.tracks
        assert video.control_url == "rtsp://127.0.0.1/s/trackID=0"
        assert video.packets == 10
        assert video.duplicates == 1
        assert video.reordered == 1
        # Expected 65533..6 = 10 sequence numbers, 9 distinct arrived: only 2 is lost.
        assert video.lost == 1
        assert video.timestamp_backwards == 1
        assert video.frames == 9
        # The first frame was joined mid-fragment: not counted as a keyframe.
        assert video.keyframes == 2
        assert (video.rtp_info_seq, video.rtp_info_rtptime) == (65533, 1000)
        assert video.ssrc == 0x1234
        assert reader.stats.session_timeout == 30
        with pytest.raises(ValueError, match="no audio track in this session"):
            await reader.wait_frames(1, timeout=1, media="audio")
    finally:
        await reader.close()
    assert server.torn_down.is_set()
    methods = [r.method for r in server.requests]
    assert methods[:4] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]
    setup = server.requests[2]
    assert setup.uri == "rtsp://127.0.0.1/s/trackID=0"
    assert setup.headers.get("Transport") == "RTP/AVP/TCP;unicast;interleaved=0-1"
    assert server.requests[3].headers.get("Session") == "sess1"
    assert server.requests[3].uri == "rtsp://127.0.0.1/s/"


FU_A_IDR = (bytes([0x7C, 0x85, 0x01]), bytes([0x7C, 0x45, 0x02]))  # start, end
FU_A_P = (bytes([0x5C, 0x81, 0x03]), bytes([0x5C, 0x41, 0x04]))

# For relay_payloads: a frame joined mid-way, a fragmented keyframe, a lost marker (the next
# timestamp ends the frame), a frame with a lost packet, then a clean keyframe.
PAYLOAD_SCRIPT = [
    (100, 1000, FU_A_IDR_MIDDLE, True),
    (101, 4600, FU_A_IDR[0], False),
    (102, 4600, FU_A_IDR[1], True),
    (103, 8200, P_SLICE, False),
    (104, 11800, P_SLICE, True),
    (106, 15400, FU_A_P[0], False),  # 105 lost
    (107, 15400, FU_A_P[1], True),
    (108, 19000, IDR, True),
]


async def test_relay_payloads_hands_over_complete_frames_only() -> None:
    """The native ingest's mode: each complete frame as the camera's RTP payloads."""
    server = ScriptedServer(script=PAYLOAD_SCRIPT)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    frames: list[ReceivedFrame] = []
    reader = RtspReader(f"rtsp://127.0.0.1:{port}/s", on_frame=frames.append, relay_payloads=True)
    try:
        await reader.start()
        await reader.wait_frames(6, timeout=10)
        got = [(f.timestamp, f.keyframe, f.payloads, f.data) for f in frames]
        assert got == [
            (1000, False, None, None),
            (4600, True, list(FU_A_IDR), None),
            (8200, False, [P_SLICE], None),
            (11800, False, [P_SLICE], None),
            (15400, False, None, None),
            (19000, True, [IDR], None),
        ]
        assert reader.stats.tracks[0].lost == 1
    finally:
        await reader.close()
        listener.close()
        await listener.wait_closed()


async def test_server_closing_fails_waiters() -> None:
    server = ScriptedServer(close_after_play=True)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader = RtspReader(f"rtsp://127.0.0.1:{port}/s")
    try:
        await reader.start()
        with pytest.raises(RtspClientError, match="connection") as info:
            await reader.wait_frames(1000, timeout=10)
        assert info.value.status == 0
        # Frames that arrived before the close were still counted.
        assert reader.stats.tracks[0].packets == 10
        with pytest.raises(RtspClientError):
            await reader.run_for(5)
    finally:
        await reader.close()
        listener.close()
        await listener.wait_closed()


async def test_frames_cut_by_reads_anywhere_arrive_once_and_whole() -> None:
    """The reader's fast path over received bytes: a "$" frame cut at any byte, and a
    response between frames, give exactly what one whole read gives."""
    answer = b"RTSP/1.0 200 OK\r\nCSeq: 99\r\nContent-Length: 3\r\n\r\nabc"
    stream = b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[:4]) + answer
    stream += b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[4:])

    def play(
        chunks: list[bytes],
    ) -> tuple[list[tuple[int, bool, list[bytes] | None]], int, list[RtspResponse]]:
        frames: list[ReceivedFrame] = []
        connection, tracks = connect(SDP, {4: 0}, on_frame=frames.append)
        messages = [m for chunk in chunks for m in connection.receive(chunk, 0.0)]
        assert all(isinstance(m, RtspResponse) for m in messages)
        responses = [m for m in messages if isinstance(m, RtspResponse)]
        return (
            [(f.timestamp, f.keyframe, f.payloads) for f in frames],
            tracks[0].stats.packets,
            responses,
        )

    whole = play([stream])
    assert whole[1] == len(PAYLOAD_SCRIPT) and len(whole[0]) == 6
    assert [(r.status, r.cseq, r.body) for r in whole[2]] == [(200, 99, b"abc")]
    for cut in range(1, len(stream)):
        assert play([stream[:cut], stream[cut:]]) == whole, cut
    assert play([stream[i : i + 3] for i in range(0, len(stream), 3)]) == whole


AV_SDP = SDP + b"m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=1\r\n"


def connect(
    sdp: bytes,
    channels: dict[int, int],
    *,
    on_frame: Callable[[ReceivedFrame], None] | None = None,
    on_span: SpanCallback | None = None,
) -> tuple[ClientConnection, list[RtpReceiver]]:
    """The client end of a connection in memory, playing ``sdp``'s tracks in relay mode on
    the given interleaved channels (channel -> track), as after SETUP and PLAY."""
    described = parse_sdp(sdp)
    tracks = [
        receiver_for(
            i,
            media,
            f"rtsp://127.0.0.1/s/{media.control}",
            on_frame=on_frame,
            relay_payloads=True,
            on_span=on_span,
        )
        for i, media in enumerate(described.media)
    ]
    connection = ClientConnection()
    for channel, track in channels.items():
        connection.channels[channel] = (tracks[track], False)
    return connection, tracks


async def test_relay_payloads_hands_over_each_g711_packet_as_a_frame() -> None:
    """G.711 packets stand on their own: each goes over as it came, with its own timestamp,
    and a lost one costs nothing but itself. Video frames are collected as before."""
    frames: list[ReceivedFrame] = []
    connection, tracks = connect(AV_SDP, {0: 0, 2: 1}, on_frame=frames.append)
    assert tracks[1].depacketizer is None  # nothing to reassemble

    def pcmu(seq: int, ts: int, samples: bytes) -> bytes:
        return struct.pack("!BBHII", 0x80, 0x80, seq, ts, 0x99) + samples

    stream = interleave(2, pcmu(7, 160, b"\x7f" * 160))
    stream += interleave(0, rtp(1, 3600, IDR, True))
    stream += interleave(2, pcmu(9, 480, b"\x01" * 80))  # 8 lost
    assert connection.receive(stream, 0.0) == ()
    got = [(f.track, f.timestamp, f.keyframe, f.payloads, f.data) for f in frames]
    assert got == [
        (1, 160, False, [b"\x7f" * 160], None),
        (0, 3600, True, [IDR], None),
        (1, 480, False, [b"\x01" * 80], None),
    ]
    assert tracks[1].stats.lost == 1


RelayedFrame = tuple[int, int, bool, list[bytes] | None, str]


def play_relay(chunks: list[bytes], spans: bool) -> tuple[list[RelayedFrame], list[RtpReceiver]]:
    """Feed reads to a relay-mode connection (video on channel 4, PCMU on 2): what it handed
    over, each as (track, timestamp, keyframe, payloads, "span" | "list"), and the tracks."""
    got: list[RelayedFrame] = []

    def on_frame(frame: ReceivedFrame) -> None:
        got.append((frame.track, frame.timestamp, frame.keyframe, frame.payloads, "list"))

    def on_span(
        track: int, ts: int, key: bool, buf: bytes, start: int, end: int, at: float
    ) -> None:
        got.append((track, ts, key, interleaved_payloads(buf, start, end), "span"))

    connection, tracks = connect(
        AV_SDP, {4: 0, 2: 1}, on_frame=on_frame, on_span=on_span if spans else None
    )
    for chunk in chunks:
        assert connection.receive(chunk, 0.0) == ()
    return got, tracks


async def test_frames_back_to_back_in_a_read_go_over_as_spans_of_the_same_payloads() -> None:
    """A frame whose packets lie back to back in one read is handed over as that span of the
    read buffer (no payload copies); one cut by a read, broken by another track's packet or
    with a CSRC list goes over as its list of payloads. Either way, at every cut, the same
    frames with the same payloads."""

    def pcmu(seq: int, ts: int) -> bytes:
        return struct.pack("!BBHII", 0x80, 0, seq, ts, 0x99) + b"\x7f" * 160

    def with_csrc(seq: int, ts: int, payload: bytes) -> bytes:
        return struct.pack("!BBHIII", 0x81, 0x80 | 96, seq, ts, 0x1234, 0xABCD) + payload

    stream = b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[:2])
    stream += interleave(2, pcmu(1, 160))  # audio between the keyframe's two packets
    stream += b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[2:])
    stream += interleave(4, with_csrc(109, 22600, P_SLICE))
    stream += interleave(4, rtp(110, 26200, FU_A_P[0]))
    stream += interleave(4, rtp(111, 26200, FU_A_P[1], True))

    def play(chunks: list[bytes], spans: bool) -> list[RelayedFrame]:
        return play_relay(chunks, spans)[0]

    def frames(got: list[RelayedFrame]) -> list[tuple[int, int, bool, list[bytes] | None]]:
        return [frame[:4] for frame in got]

    whole = play([stream], spans=True)
    assert frames(whole) == frames(play([stream], spans=False))
    assert [(track, ts, how) for track, ts, _, _, how in whole] == [
        (0, 1000, "list"),  # joined mid-way: no payloads
        (1, 160, "span"),
        (0, 4600, "list"),  # the audio packet broke it
        (0, 8200, "span"),
        (0, 11800, "span"),
        (0, 15400, "list"),  # a lost packet: no payloads
        (0, 19000, "span"),
        (0, 22600, "list"),  # CSRC list
        (0, 26200, "span"),
    ]
    for cut in range(1, len(stream)):
        assert frames(play([stream[:cut], stream[cut:]], spans=True)) == frames(whole), cut


@pytest.mark.parametrize("walk", ["C", "Python reference"])
async def test_runs_of_packets_taken_at_once_account_exactly_as_one_by_one(
    walk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of packets that simply continue a span are taken a run at a time. Whatever ends a
    run (another track, a lost packet, a new timestamp without a marker, a new source, a
    CSRC list, the end of a read) gives the same frames and the same counters as the
    packet-by-packet path, at every cut. Both builds of the walk (C, and the Python a
    checkout without a compiler runs)."""
    from gateway.rtp import spans as spans_module

    if walk != "C":
        monkeypatch.setattr(receiver_module, "continue_span", spans_module.reference_continue_span)
    sei = b"\x06\x05\x10" + b"s" * 16
    idr = [b"\x7c\x85" + b"i" * 50, b"\x7c\x05" + b"j" * 50, b"\x7c\x45" + b"k" * 50]
    p_slice = [b"\x5c\x81" + b"p" * 40, b"\x5c\x01" + b"q" * 40, b"\x5c\x41" + b"r" * 40]

    def frame(seq: int, ts: int, payloads: list[bytes], marker: bool = True) -> bytes:
        last = len(payloads) - 1
        return b"".join(
            interleave(4, rtp(seq + i, ts, p, marker and i == last)) for i, p in enumerate(payloads)
        )

    def other_ssrc(seq: int, ts: int, payload: bytes) -> bytes:
        return interleave(4, struct.pack("!BBHII", 0x80, 96, seq, ts, 0x5678) + payload)

    def pcmu(seq: int) -> bytes:
        return interleave(2, struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x99) + b"\x7f" * 8)

    stream = frame(1, 3600, [sei, *idr])  # a keyframe found inside a run
    stream += frame(5, 7200, [sei, *p_slice])
    stream += frame(9, 10800, [sei, *p_slice[:2]], marker=False) + pcmu(1)  # audio: run ends
    stream += frame(12, 10800, p_slice[2:])
    stream += frame(13, 14400, [sei, p_slice[0]], marker=False)
    stream += frame(16, 14400, p_slice[1:])  # 15 lost
    stream += frame(18, 18000, [sei, *p_slice[:2]], marker=False)  # marker lost: new timestamp
    stream += frame(21, 21600, [sei, *p_slice])
    stream += frame(25, 25200, [sei, p_slice[0]], marker=False) + other_ssrc(27, 25200, p_slice[1])
    stream += frame(28, 28800, [sei, *p_slice])
    csrc = struct.pack("!BBHIII", 0x81, 96, 34, 32400, 0x1234, 0xABCD) + p_slice[1]
    stream += frame(32, 32400, [sei, p_slice[0]], marker=False) + interleave(4, csrc)
    stream += frame(35, 32400, p_slice[2:]) + pcmu(2)
    stream += frame(36, 36000, [sei, *idr])

    def play(chunks: list[bytes], spans: bool) -> tuple[list[object], list[object]]:
        got, tracks = play_relay(chunks, spans)
        counters = [
            {k: v for k, v in t.stats.as_dict().items() if not k.endswith(("_at", "_gap"))}
            for t in tracks
        ]
        return [frame[:4] for frame in got], counters

    reference = play([stream], spans=False)
    frames, counters = reference
    assert [(ts, key) for track, ts, key, _ in frames if track == 0] == [
        (3600, True),
        (7200, False),
        (10800, False),
        (14400, False),  # a packet lost: no payloads
        (18000, False),
        (21600, False),
        (25200, False),  # the source changed inside it (counted, sequence unbroken)
        (28800, False),
        (32400, False),
        (36000, True),
    ]
    assert [ts for track, ts, _, payloads in frames if payloads is None] == [14400]
    assert counters[0]["lost"] == 1 and counters[0]["ssrc_changes"] == 2
    assert play([stream], spans=True) == reference
    for cut in range(1, len(stream)):
        assert play([stream[:cut], stream[cut:]], spans=True) == reference, cut


async def test_close_gives_up_on_an_unanswered_teardown() -> None:
    server = ScriptedServer(unanswered=("TEARDOWN",))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader = RtspReader(f"rtsp://127.0.0.1:{port}/s")
    try:
        await reader.start()
        await reader.wait_frames(9, timeout=10)
        await reader.close()  # waits 2 s for the answer, then closes without raising
        assert [r.method for r in server.requests][-1] == "TEARDOWN"
    finally:
        listener.close()
        await listener.wait_closed()


def test_cli_help_runs() -> None:
    out = subprocess.run(
        ["python3", "-m", "gateway.rtsp.client", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--transport" in out.stdout


async def test_failed_play_raises_its_status_and_tears_down() -> None:
    server = ScriptedServer(play_status=453)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RtspClientError, match="PLAY: Not Enough Bandwidth") as info:
            await RtspReader(f"rtsp://127.0.0.1:{port}/s").start()
        assert info.value.status == 453
        # The session SETUP created is released at once, not left to time out.
        assert server.torn_down.is_set()
        assert server.requests[-1].headers.get("Session") == "sess1"
    finally:
        listener.close()
        await listener.wait_closed()


def test_a_server_request_between_frames_comes_out_as_an_event() -> None:
    """Servers probe clients too (OPTIONS as keep-alive): the request comes out of the
    connection in order, the frames around it go to the track, and a malformed message
    is a protocol error."""
    frames: list[ReceivedFrame] = []
    connection, tracks = connect(SDP, {4: 0}, on_frame=frames.append)
    probe = b"OPTIONS rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 5\r\n\r\n"
    stream = b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[:3]) + probe
    stream += b"".join(interleave(4, rtp(*p)) for p in PAYLOAD_SCRIPT[3:])
    (request,) = connection.receive(stream, 0.0)
    assert isinstance(request, RtspRequest) and (request.method, request.cseq) == ("OPTIONS", 5)
    assert tracks[0].stats.packets == len(PAYLOAD_SCRIPT) and len(frames) == 6
    with pytest.raises(RtspProtocolError):
        connection.receive(b"NOT RTSP AT ALL\r\n\r\n", 0.0)
