"""Reader process: many RTSP readers in one uvloop, counting what a relay delivers.

The steady-state readers are lean on purpose, so the figures are about the relay and not
about the readers sharing its cores. Each :class:`LeanReader` does the RTSP handshake
(DESCRIBE, SETUP per track over TCP interleaved channels, PLAY) with the gateway RTSP
client's pieces (:mod:`gateway.rtsp.client`: requests, Digest, SDP, SETUP answers), then
reads its socket straight from an ``add_reader`` callback with ``recvmsg``. The socket has
``SO_TIMESTAMPNS`` on, so every read comes with the kernel's receive time.
:class:`StampedStream` (sans-IO: bytes and times in, counts out) hands the bytes to the
gateway's own :class:`~gateway.rtsp.client_connection.ClientConnection` and
:class:`~gateway.rtp.receiver.RtpReceiver` per track, so the reader counts packets, loss,
duplicates, backwards timestamps and frames exactly as the gateway's reader does, and reads
the wall-clock stamp that the simulated camera puts in an SEI in front of every video frame.

Latency is then ``kernel receive time - stamp``, taken when the frame is complete: the
camera sending the frame to the whole frame reaching this reader's socket through the relay,
without the reader's own scheduling delay on the shared cores. (For TCP, Linux reports the
arrival of the last segment a read took, so when one read holds several packets their
latency is overstated, never understated.)
``time.time_ns()`` when the reader's Python code handles the read is kept as well, in a
second histogram (``latency_app_us``), so that delay stays visible.

Late readers (time to first keyframe) are :class:`gateway.rtsp.client.RtspReader`, which
recognises complete keyframes.

The harness drives the process with JSON lines on standard input:

1. a job: ``{"streams": [{"key", "url", "username", "password", "readers"}]}``; the process
   attaches every reader and answers ``{"event": "attached", "ok": N, "errors": [...]}``;
2. a window: ``{"start": T0, "end": T1, "late": [{"at": T, "stream": i}], "late_timeout": s}``
   in wall-clock seconds; counters are read at T0 and T1, late readers are attached at their
   ``at`` times (time to first frame), and ``{"event": "result", ...}`` is printed at the end.

End of standard input at any point closes every reader and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import socket
import struct
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.codecs.sdp import SessionDescription
from gateway.digest import DigestClient
from gateway.rtp.interleaved import frame_end, iter_frames
from gateway.rtp.receiver import ReceivedFrame, RtpReceiver, TrackStats
from gateway.rtsp.client import (
    RtspClientError,
    RtspReader,
    answer_challenge,
    build_request,
    content_base,
    describe_receivers,
    expect_ok,
    interleaved_channels,
    setup_answer,
    tcp_offer,
)
from gateway.rtsp.client_connection import ClientConnection
from gateway.rtsp.headers import parse_token_list
from gateway.rtsp.message import RtspProtocolError, RtspRequest, RtspResponse
from gateway.rtsp.url import RtspUrl, resolve_control
from gateway.sim.latency import find_timestamp

# Latency histogram: 50 us bins up to 100 ms, 1 ms bins above (mergeable across processes).
FINE_BIN_US = 50
FINE_LIMIT_US = 100_000
COARSE_BIN_US = 1000
ATTACH_CONCURRENCY = 16

# Linux values; Python's socket module does not export them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec (native longs)
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)

USER_AGENT = "onvif-gateway-bench-reader/0.1"
DEFAULT_SESSION_TIMEOUT = 60
READ_SIZE = 256 * 1024  # bytes asked of one recvmsg
MAX_RTSP_BODY = 256 * 1024
# Reads per readiness callback: enough to drain a socket, few enough to stay fair to others.
READS_PER_WAKEUP = 4
RECEIVE_BUFFER = 4 * 1024 * 1024


def latency_bin(us: int) -> int:
    """The lower edge (us) of the histogram bin holding ``us``."""
    if us < 0:
        return 0
    if us < FINE_LIMIT_US:
        return us - us % FINE_BIN_US
    return us - us % COARSE_BIN_US


class LatencyHistogram:
    """Counts of latency samples per bin; percentiles answered with bin resolution."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, us: int) -> None:
        key = latency_bin(us)
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: LatencyHistogram) -> None:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The upper edge (ms) of the bin where the ``q`` quantile (0..1) falls."""
        total = self.total
        if not total:
            return None
        rank = q * total
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                width = FINE_BIN_US if key < FINE_LIMIT_US else COARSE_BIN_US
                return (key + width) / 1000
        return (max(self.counts) + COARSE_BIN_US) / 1000


# --------------------------------------------------------------------------- sans-IO walk


def _sei_first_bytes(codec: str) -> bytes | None:
    """A 256-entry table: non-zero where an RTP payload starting with that byte can carry the
    camera's SEI stamp (the SEI NAL itself, or an aggregation packet holding one)."""
    if codec == "H264":
        return bytes(1 if b & 0x1F in (6, 24) else 0 for b in range(256))  # SEI, STAP-A
    if codec == "H265":
        return bytes(1 if (b >> 1) & 0x3F in (39, 48) else 0 for b in range(256))  # SEI, AP
    return None


class StampedStream:
    """Bytes of one RTSP connection and their receive times in; per-track counts, latency
    samples and the RTSP messages among the bytes out (sans-IO).

    The bytes go to the gateway's own client end of a connection
    (:class:`~gateway.rtsp.client_connection.ClientConnection`): it hands the RTSP messages
    back, and the ``$`` frames to each track's :class:`~gateway.rtp.receiver.RtpReceiver`,
    which does the counting exactly as the gateway's RTSP reader does (RFC 3550 sequence
    accounting, frames, malformed packets). :meth:`add_tracks` gives it the receivers that
    SETUP placed on their channels.

    Video receivers hand over each complete frame (as a span of the read, or its payloads);
    while ``recording``, its first packet that can carry the camera's SEI stamp (the SEI NAL,
    or an aggregation packet holding one) is searched, and ``received_ns - stamp`` goes to
    ``latency``, ``now_ns - stamp`` to ``app_latency``. The times are those of the read that
    completed the frame, so a frame counts as arrived when it can be decoded.
    """

    def __init__(
        self,
        latency: LatencyHistogram | None = None,
        app_latency: LatencyHistogram | None = None,
    ) -> None:
        self.connection = ClientConnection(max_body=MAX_RTSP_BODY)
        self.receivers: list[RtpReceiver] = []
        self.latency = latency
        self.app_latency = app_latency
        self.recording = False
        self.rtsp_messages = 0  # after PLAY: keep-alive responses, requests of the server
        self.rtsp_error_status: str | None = None  # the last 4xx/5xx response, after PLAY
        self._tables: list[bytes | None] = []
        self._received_ns = 0
        self._now_ns = 0

    def describe(self, body: bytes, base: str) -> tuple[SessionDescription, list[RtpReceiver]]:
        """The SDP of a DESCRIBE answer and a receiver for each of its audio/video tracks,
        placed on their channels by the caller once SETUP answered. Video frames come out
        whole, so their stamps can be read; audio is only counted."""
        sdp, receivers = describe_receivers(
            body,
            base,
            ("video", "audio"),
            relay_payloads=True,
            on_span=self._on_span,
            on_frame=self._on_frame,
        )
        self.receivers = receivers
        self._tables = [_sei_first_bytes(r.codec) if r.is_video else None for r in receivers]
        for receiver in receivers:
            if not receiver.is_video:
                receiver.on_frame = receiver.on_span = None
        return sdp, receivers

    @property
    def tracks(self) -> list[TrackStats]:
        return [r.stats for r in self.receivers]

    def feed(
        self, data: bytes, received_ns: int, now_ns: int
    ) -> tuple[RtspRequest | RtspResponse, ...]:
        """Walk ``data``; the RTSP messages among it. RtspProtocolError on malformed input,
        after which the stream is unusable."""
        self._received_ns = received_ns
        self._now_ns = now_ns
        return self.connection.receive(data, received_ns / 1e9)

    def note(self, messages: tuple[RtspRequest | RtspResponse, ...]) -> None:
        """Count the RTSP messages that came in the media stream (after PLAY)."""
        for message in messages:
            self.rtsp_messages += 1
            if isinstance(message, RtspResponse) and message.status >= 400:
                self.rtsp_error_status = f"RTSP/1.0 {message.status} {message.reason}"[:80]

    def _on_span(
        self,
        track: int,
        timestamp: int,
        keyframe: bool,
        buf: bytes,
        start: int,
        end: int,
        arrival: float,
    ) -> None:
        table = self._tables[track]
        if not self.recording or table is None:
            return
        for pos in iter_frames(buf, start, end):
            # A span's packets have plain 12-byte headers: the payload is at +16.
            stop = frame_end(buf, pos)
            if pos + 16 < stop and table[buf[pos + 16]] and self._record(buf[pos + 16 : stop]):
                return

    def _on_frame(self, frame: ReceivedFrame) -> None:
        table = self._tables[frame.track]
        if not self.recording or table is None or frame.payloads is None:
            return
        for payload in frame.payloads:
            if payload and table[payload[0]] and self._record(payload):
                return

    def _record(self, payload: bytes | memoryview) -> bool:
        stamp = find_timestamp(payload)
        if stamp is None:
            return False
        if self.latency is not None:
            self.latency.add((self._received_ns - stamp) // 1000)
        if self.app_latency is not None:
            self.app_latency.add((self._now_ns - stamp) // 1000)
        return True


@dataclass
class Counters:
    video_frames: int = 0
    audio_frames: int = 0
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    duplicates: int = 0
    timestamp_backwards: int = 0
    malformed: int = 0

    @classmethod
    def read(cls, tracks: list[TrackStats]) -> Counters:
        out = cls()
        for track in tracks:
            if track.media == "video":
                out.video_frames += track.frames
            else:
                out.audio_frames += track.frames
            out.packets += track.packets
            out.bytes += track.bytes
            out.lost += track.lost
            out.duplicates += track.duplicates
            out.timestamp_backwards += track.timestamp_backwards
            out.malformed += track.malformed
        return out

    def minus(self, other: Counters) -> dict[str, int]:
        return {f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- asyncio layer


def kernel_receive_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The SCM_TIMESTAMPNS receive time (ns, CLOCK_REALTIME) in ``recvmsg`` ancillary data."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return None


@dataclass
class ReadStats:
    """How the receive times of one process's reads were taken."""

    kernel_stamped: int = 0  # reads that came with SCM_TIMESTAMPNS
    unstamped: int = 0  # reads without one: time.time_ns() after the read stands in

    def source(self) -> str:
        if self.unstamped == 0:
            return "kernel (SO_TIMESTAMPNS)"
        if self.kernel_stamped == 0:
            return "time.time_ns() after each read (no SCM_TIMESTAMPNS on this kernel)"
        return "mixed: kernel (SO_TIMESTAMPNS) where present, else time.time_ns() after the read"


class LeanReader:
    """One RTSP session over TCP interleaved, read by an ``add_reader`` callback.

    :meth:`start` plays the URL (Digest/Basic auth when challenged) and raises
    :class:`RtspClientError` on failure. Afterwards a failure of the session (closed,
    reset, protocol error) ends it and sets :attr:`error`; :attr:`failed` is set then.
    The handshake is the gateway RTSP client's (the same requests, SDP and SETUP handling);
    only the socket is this reader's own, read with ``recvmsg`` for the kernel receive time.
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        latency: LatencyHistogram | None = None,
        app_latency: LatencyHistogram | None = None,
        read_stats: ReadStats | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        address = RtspUrl.parse(url)
        self.url = address.without_credentials()
        self._address = address
        username = username if username is not None else address.username
        password = password if password is not None else address.password
        self._auth = DigestClient(username, password or "") if username else None
        self.read_stats = read_stats if read_stats is not None else ReadStats()
        self.request_timeout = request_timeout
        self.stream = StampedStream(latency, app_latency)
        self.error: str | None = None
        self.failed = asyncio.Event()
        self.keepalives = 0
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._cseq = 0
        self._session: str | None = None
        self._session_timeout = DEFAULT_SESSION_TIMEOUT
        self._public: list[str] = []
        self._playing = False
        self._reading = False
        self._keepalive: asyncio.Task[None] | None = None
        self._responses: list[RtspResponse] = []

    @property
    def recording(self) -> bool:
        return self.stream.recording

    @recording.setter
    def recording(self, value: bool) -> None:
        self.stream.recording = value

    def counters(self) -> Counters:
        return Counters.read(self.stream.tracks)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading and close the socket (the relay ends the session on its own)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._reading:
                self._loop.remove_reader(sock.fileno())
                self._reading = False
            sock.close()

    # -- handshake

    async def _start(self) -> None:
        host, port = self._address.host, self._address.port
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, IndexError) as exc:
            raise RtspClientError(0, f"cannot connect to {host}:{port}: {exc}") from None
        self._sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A receive buffer that holds a few seconds of video, as recorders use: a keyframe
        # burst then lands in the kernel at once instead of waiting, in the relay, for this
        # process to drain its socket (which would bill the reader's scheduling to the relay).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        with contextlib.suppress(OSError):  # without it, reads are stamped in user space
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            await asyncio.wait_for(self._loop.sock_connect(sock, address), self.request_timeout)
        except (OSError, TimeoutError) as exc:
            raise RtspClientError(0, f"cannot connect to {host}:{port}: {exc}") from None

        options = await self._request("OPTIONS", self.url)
        if options.status == 200:
            with contextlib.suppress(ValueError):
                self._public = parse_token_list(options.headers.get("Public", "") or "")
        describe = await self._request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        expect_ok(describe, "DESCRIBE")
        base = content_base(describe, self.url)
        sdp, receivers = self.stream.describe(describe.body, base)
        channels = self.stream.connection.channels
        for receiver in receivers:
            offer = tcp_offer(receiver.stats.index)
            response = await self._request(
                "SETUP", receiver.stats.control_url, {"Transport": str(offer)}
            )
            expect_ok(response, "SETUP")
            session, answer = setup_answer(response)
            self._session = session.session_id
            if session.timeout:
                self._session_timeout = session.timeout
            rtp_channel, rtcp_channel = interleaved_channels(answer, offer)
            channels[rtp_channel] = (receiver, False)
            channels[rtcp_channel] = (receiver, True)

        session_url = resolve_control(base, sdp.control) if sdp.control else base
        play = await self._request("PLAY", session_url, {"Range": "npt=0.000-"})
        expect_ok(play, "PLAY")
        self._playing = True
        sock = self._sock
        if sock is None:  # failed while walking the bytes that came with the answer
            raise RtspClientError(0, self.error or "session failed")
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._reading = True
        method = "GET_PARAMETER" if "GET_PARAMETER" in self._public else "OPTIONS"
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(method, session_url, self._session_timeout / 2)
        )

    def _request_bytes(self, method: str, uri: str, headers: dict[str, str] | None) -> bytes:
        self._cseq += 1
        request = build_request(
            method, uri, self._cseq, self._session, self._auth, headers, USER_AGENT
        )
        return bytes(request)

    async def _request(
        self, method: str, uri: str, headers: dict[str, str] | None = None
    ) -> RtspResponse:
        """One request and its response; answers one 401 with credentials."""
        response = await self._exchange(method, uri, headers)
        if response.status == 401 and self._auth is not None:
            answer_challenge(self._auth, response, method)
            response = await self._exchange(method, uri, headers)
        return response

    async def _exchange(
        self, method: str, uri: str, headers: dict[str, str] | None
    ) -> RtspResponse:
        sock = self._sock
        if sock is None:
            raise RtspClientError(0, "not connected")
        data = self._request_bytes(method, uri, headers)
        try:
            await self._loop.sock_sendall(sock, data)
            return await asyncio.wait_for(self._response(sock, self._cseq), self.request_timeout)
        except TimeoutError:
            raise RtspClientError(0, f"{method} timed out after {self.request_timeout}s") from None
        except OSError as exc:
            raise RtspClientError(0, f"connection lost: {exc}") from None

    async def _response(self, sock: socket.socket, cseq: int) -> RtspResponse:
        while True:
            for response in self._responses:
                try:
                    answered = response.cseq
                except ValueError:
                    answered = None
                if answered in (cseq, None):  # some cameras drop CSeq on errors
                    self._responses.clear()
                    return response
            self._responses.clear()
            data = await self._loop.sock_recv(sock, 65536)
            if not data:
                raise RtspClientError(0, "connection closed by server")
            # Media ahead of the PLAY response belongs to the stream all the same.
            now = time.time_ns()
            try:
                messages = self.stream.feed(data, now, now)
            except RtspProtocolError as exc:
                raise RtspClientError(0, f"protocol error from server: {exc}") from None
            self._responses.extend(m for m in messages if isinstance(m, RtspResponse))

    async def _keepalive_loop(self, method: str, uri: str, interval: float) -> None:
        # The responses come back in the media stream, where the stream notes them.
        while self._sock is not None:
            await asyncio.sleep(max(interval, 0.05))
            sock = self._sock
            if sock is None:
                return
            try:
                await self._loop.sock_sendall(sock, self._request_bytes(method, uri, None))
            except OSError as exc:
                self._fail(f"connection lost: {exc}")
                return
            self.keepalives += 1

    # -- steady state

    def _on_readable(self) -> None:
        sock, stream = self._sock, self.stream
        if sock is None:
            return
        read_stats = self.read_stats
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancillary, _, _ = sock.recvmsg(READ_SIZE, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(f"connection lost: {exc}")
                return
            now = time.time_ns()
            if not data:
                self._fail("connection closed by server")
                return
            received = kernel_receive_ns(ancillary) if ancillary else None
            if received is None:
                read_stats.unstamped += 1
                received = now
            else:
                read_stats.kernel_stamped += 1
            try:
                stream.note(stream.feed(data, received, now))
            except RtspProtocolError as exc:
                self._fail(f"protocol error from server: {exc}")
                return
            if len(data) < READ_SIZE:  # a short read: the socket is drained, save the EAGAIN
                return

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.failed.set()
        self.close()


# --------------------------------------------------------------------------- the process


@dataclass
class Attached:
    stream: int
    reader: LeanReader
    at_start: Counters = field(default_factory=Counters)


async def attach(
    streams: list[dict[str, Any]],
    latency: LatencyHistogram,
    app_latency: LatencyHistogram | None = None,
    read_stats: ReadStats | None = None,
) -> tuple[list[Attached], list[str]]:
    gate = asyncio.Semaphore(ATTACH_CONCURRENCY)
    errors: list[str] = []
    read_stats = read_stats if read_stats is not None else ReadStats()

    async def one(index: int, spec: dict[str, Any]) -> Attached | None:
        async with gate:
            reader = LeanReader(
                spec["url"],
                spec.get("username"),
                spec.get("password"),
                latency=latency,
                app_latency=app_latency,
                read_stats=read_stats,
            )
            try:
                await reader.start()
            except (RtspClientError, OSError) as exc:
                errors.append(f"{spec['key']}: {exc}")
                return None
            return Attached(index, reader)

    jobs = [one(i, s) for i, s in enumerate(streams) for _ in range(int(s["readers"]))]
    done = await asyncio.gather(*jobs)
    return [a for a in done if a is not None], errors


async def late_reader(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Attach, wait for the first complete video keyframe, report PLAY -> keyframe, leave."""
    loop = asyncio.get_running_loop()
    keyframe: asyncio.Future[None] = loop.create_future()

    def on_frame(frame: ReceivedFrame) -> None:
        if frame.keyframe and not keyframe.done():
            keyframe.set_result(None)

    reader = RtspReader(spec["url"], spec.get("username"), spec.get("password"))
    reader.on_frame = on_frame
    started = loop.time()
    result: dict[str, Any] = {"stream": spec["key"], "first_frame_time": None, "error": None}
    try:
        await reader.start()
        await asyncio.wait_for(keyframe, timeout)
        result["first_frame_time"] = reader.stats.first_frame_time
        result["attach_to_keyframe"] = loop.time() - started
    except (RtspClientError, OSError) as exc:
        result["error"] = str(exc)
    except TimeoutError:
        result["error"] = f"no keyframe within {timeout}s"
    finally:
        await reader.close()
    return result


async def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def run() -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def next_message() -> dict[str, Any] | None:
        line = await stdin.readline()
        return json.loads(line) if line.strip() else None

    job = await next_message()
    if job is None:
        return 0
    streams: list[dict[str, Any]] = job["streams"]
    latency = LatencyHistogram()
    app_latency = LatencyHistogram()
    read_stats = ReadStats()
    readers, errors = await attach(streams, latency, app_latency, read_stats)
    # The sessions' objects live to the end: keep the cyclic collector from rescanning them.
    gc.freeze()
    emit({"event": "attached", "ok": len(readers), "errors": errors[:20]})
    try:
        window = await next_message()
        if window is None:
            return 0
        await sleep_until(window["start"])
        for a in readers:
            a.at_start = a.reader.counters()
            a.reader.recording = True
        reads_start = ReadStats(read_stats.kernel_stamped, read_stats.unstamped)
        cpu_start = cpu_seconds()
        emit({"event": "window_start", "t": time.time()})
        late_jobs = []
        for late in window.get("late", []):

            async def delayed(at: float = late["at"], spec: dict[str, Any] = late) -> Any:
                await sleep_until(at)
                return await late_reader(
                    {**streams[spec["stream"]]}, float(window.get("late_timeout", 5.0))
                )

            late_jobs.append(asyncio.create_task(delayed()))
        await sleep_until(window["end"])
        per_reader = []
        for a in readers:
            a.reader.recording = False
            delta = a.reader.counters().minus(a.at_start)
            per_reader.append(
                {"stream": streams[a.stream]["key"], "error": a.reader.error, **delta}
            )
        cpu = cpu_seconds() - cpu_start
        reads = ReadStats(
            read_stats.kernel_stamped - reads_start.kernel_stamped,
            read_stats.unstamped - reads_start.unstamped,
        )
        late_results = await asyncio.gather(*late_jobs)
        emit(
            {
                "event": "result",
                "readers": per_reader,
                "late": late_results,
                "latency_us": {str(k): n for k, n in latency.counts.items()},
                "latency_app_us": {str(k): n for k, n in app_latency.counts.items()},
                "receive_timestamp": reads.source(),
                "reads_kernel_stamped": reads.kernel_stamped,
                "reads_unstamped": reads.unstamped,
                "reader_cpu_seconds": round(cpu, 3),
                "attach_errors": errors,
            }
        )
    finally:
        for a in readers:
            a.reader.close()
    return 0


def main() -> int:
    import uvloop

    return int(uvloop.run(run()))


if __name__ == "__main__":
    sys.exit(main())
