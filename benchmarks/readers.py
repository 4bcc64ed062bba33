"""Reader process: many RTSP readers in one uvloop, counting what a relay delivers.

The steady-state readers are lean on purpose, so the figures are about the relay and not
about the readers sharing its cores. Each :class:`LeanReader` does the RTSP handshake
(DESCRIBE, SETUP per track over TCP interleaved channels, PLAY) with the project's RTSP
message and auth code, then reads its socket straight from an ``add_reader`` callback with
``recvmsg_into`` into one reusable buffer. The socket has ``SO_TIMESTAMPNS`` on, so every
read comes with the kernel's receive time. :class:`InterleavedWalk` (sans-IO: bytes and
times in, counters out) steps over the ``$`` frames and does only what the counts need:
RTP sequence continuity, timestamp order, frames, bytes, and the wall-clock stamp that the
simulated camera puts in an SEI in front of every video frame.

Latency is then ``kernel receive time - stamp``: the camera sending the frame to the frame
reaching this reader's socket through the relay, without the reader's own scheduling delay
on the shared cores. (For TCP, Linux reports the arrival of the last segment a read took,
so when one read holds several packets their latency is overstated, never understated.)
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
import re
import resource
import socket
import struct
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.codecs import codec_name
from gateway.codecs.sdp import parse_sdp
from gateway.digest import DigestClient
from gateway.rtp.receiver import SEQ_AHEAD, SEQ_DUPLICATE, ReceivedFrame, sequence_step
from gateway.rtp.spans import KEY_NONE, SPAN_END, continue_span
from gateway.rtsp.client import (
    RtspClientError,
    RtspReader,
    answer_challenge,
    build_request,
)
from gateway.rtsp.message import (
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspResponse,
    RtspUrl,
    SessionHeader,
    parse_token_list,
    resolve_control,
)
from gateway.rtsp.transport import TransportSpec, parse_transport_header
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
_RTP_HEAD = struct.Struct("!BBHI")  # V/P/X/CC, M/PT, sequence number, timestamp
_FRAME_HEAD = struct.Struct("!xBHBBHII")  # "$", channel, length, the RTP head as above, SSRC

USER_AGENT = "onvif-gateway-bench-reader/0.1"
DEFAULT_SESSION_TIMEOUT = 60
WALK_BUFFER = 256 * 1024
# A unit split across reads is moved to the buffer's start once less than this is free
# behind it (a ``$`` frame is at most 65539 bytes).
COMPACT_BELOW = 96 * 1024
MAX_RTSP_HEAD = 16 * 1024
MAX_RTSP_BODY = 256 * 1024
# Reads per readiness callback: enough to drain a socket, few enough to stay fair to others.
READS_PER_WAKEUP = 4
RECEIVE_BUFFER = 4 * 1024 * 1024
_START_LINE = re.compile(rb"RTSP/\d\.\d \d{3}(?: [^\r\n]*)?|[A-Z_]+ \S+ RTSP/\d\.\d")


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


class TrackCount:
    """What one RTP track received; sequence accounting as the gateway's RTSP reader does
    it (:func:`gateway.rtp.receiver.sequence_step`)."""

    __slots__ = (
        "bytes",
        "codec",
        "duplicates",
        "first_seq",
        "frames",
        "highest_seq",
        "is_video",
        "last_ts",
        "lost",
        "malformed",
        "media",
        "next_seq",
        "packets",
        "sei_first_bytes",
        "timestamp_backwards",
    )

    def __init__(self, media: str, codec: str) -> None:
        self.media = media
        self.codec = codec
        self.is_video = media == "video"
        self.sei_first_bytes = _sei_first_bytes(codec) if self.is_video else None
        self.packets = 0  # duplicates included, as RtspReader counts them
        self.bytes = 0  # RTP packets' sizes, duplicates included
        self.frames = 0  # video: packets with the marker bit; audio: packets
        self.lost = 0  # expected minus received, never < 0
        self.duplicates = 0
        self.timestamp_backwards = 0
        self.malformed = 0
        # Sequence numbers extended past 16 bits (wrap-arounds counted) and the next one
        # expected on the wire; -1 before the first packet.
        self.first_seq = -1
        self.highest_seq = -1
        self.next_seq = -1
        self.last_ts = 0

    def out_of_order(self, seq: int, timestamp: int) -> bool:
        """Account a packet that is not the next expected one; False for a duplicate."""
        self.packets += 1
        if self.highest_seq < 0:
            self.first_seq = self.highest_seq = seq
            self.next_seq = (seq + 1) & 0xFFFF
            self.last_ts = timestamp
            return True
        kind, self.highest_seq, self.lost = sequence_step(
            self.first_seq, self.highest_seq, seq, self.packets, self.duplicates
        )
        if kind == SEQ_DUPLICATE:
            self.duplicates += 1
            return False
        if kind == SEQ_AHEAD:  # packets went missing
            self.next_seq = (seq + 1) & 0xFFFF
        # else behind: a late (reordered) packet, which makes up for a loss
        if (timestamp - self.last_ts) & 0xFFFFFFFF >= 0x80000000:
            self.timestamp_backwards += 1
        self.last_ts = timestamp
        return True


class InterleavedWalk:
    """Bytes of an RTSP connection after PLAY in, per-track counts and latency samples out.

    The stream is ``$`` frames (channel, 16-bit length, RTP or RTCP packet) with, now and
    then, an RTSP message (a keep-alive's response, a server's request): its header section
    is found and it is skipped with its Content-Length body. Anything else is a protocol
    error (:class:`ValueError`), after which the walk refuses more input.

    The walk owns its receive buffer so a socket can read straight into it:
    ``recv_into(walk.free_space())`` then ``walk.received(n, received_ns, now_ns)``;
    :meth:`feed` copies bytes in for callers that already have them. Only a unit split
    across reads is kept between calls, so memory is bounded by the buffer.

    A video packet whose payload starts with an SEI (or an aggregation packet) is searched
    for the camera's stamp; while ``recording``, ``received_ns - stamp`` goes to ``latency``
    and ``now_ns - stamp`` to ``app_latency``. ``received_ns`` is that of the call that
    completed the packet, so it is never earlier than the packet's last byte arrived.
    """

    def __init__(
        self,
        channels: dict[int, TrackCount],
        latency: LatencyHistogram | None = None,
        app_latency: LatencyHistogram | None = None,
        buffer_size: int = WALK_BUFFER,
    ) -> None:
        if buffer_size < COMPACT_BELOW + MAX_RTSP_HEAD:
            raise ValueError(f"buffer_size must be at least {COMPACT_BELOW + MAX_RTSP_HEAD}")
        self.tracks = list(channels.values())
        self._by_channel: list[TrackCount | None] = [None] * 256
        for channel, track in channels.items():
            if not 0 <= channel <= 255:
                raise ValueError(f"interleaved channel {channel} out of range 0-255")
            self._by_channel[channel] = track
        self.latency = latency
        self.app_latency = app_latency
        self.recording = False
        self.other_frames = 0  # RTCP and channels without a track
        self.rtsp_messages = 0
        self.rtsp_error_status: str | None = None  # start line of the last 4xx/5xx response
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet walked
        self._end = 0  # end of the bytes received
        self._skip = 0  # bytes of an RTSP message body still to discard
        self._error: str | None = None

    def free_space(self) -> memoryview:
        """Where the next read goes (never empty)."""
        return self._view[self._end :]

    def feed(self, data: bytes | bytearray | memoryview, received_ns: int, now_ns: int) -> None:
        """Walk ``data`` (copied into the buffer in pieces if it is large)."""
        data = memoryview(data).cast("B")
        while data:
            free = self.free_space()
            n = min(len(free), len(data))
            free[:n] = data[:n]
            self.received(n, received_ns, now_ns)
            data = data[n:]

    def received(self, n: int, received_ns: int, now_ns: int) -> None:
        """``n`` more bytes were written at :meth:`free_space`; walk every complete unit."""
        if self._error is not None:
            raise ValueError(f"walk already failed: {self._error}")
        if not 0 < n <= len(self._buffer) - self._end:
            raise ValueError(f"received {n} bytes into {len(self._buffer) - self._end} free")
        try:
            self._walk(self._end + n, received_ns, now_ns)
        except ValueError as exc:
            self._error = str(exc)
            raise

    def _walk(self, end: int, received_ns: int, now_ns: int) -> None:
        buf = self._buffer
        pos = self._start
        if self._skip:
            step = min(self._skip, end - pos)
            self._skip -= step
            pos += step
        by_channel = self._by_channel
        recording = self.recording
        unpack_head = _RTP_HEAD.unpack_from
        while pos < end:
            if buf[pos] != 0x24:  # not "$": an RTSP message, or garbage
                after = self._skip_message(pos, end)
                if after < 0:  # its header section is not complete yet
                    break
                pos = after
                continue
            if end - pos < 4:
                break
            stop = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
            if stop > end:
                break
            track = by_channel[buf[pos + 1]]
            if track is None:
                self.other_frames += 1
                pos = stop
                continue
            if stop - pos < 16 or buf[pos + 4] >> 6 != 2:
                track.malformed += 1
                pos = stop
                continue
            # The first packet of a run is counted here in full; the in-order packets of the
            # same channel right after it go through the cheaper _in_order_run.
            b0, b1, seq, timestamp = unpack_head(buf, pos + 4)
            track.bytes += stop - pos - 4
            if seq == track.next_seq:
                track.packets += 1
                track.highest_seq += 1
                track.next_seq = (seq + 1) & 0xFFFF
                if (timestamp - track.last_ts) & 0xFFFFFFFF >= 0x80000000:
                    track.timestamp_backwards += 1
                track.last_ts = timestamp
            elif not track.out_of_order(seq, timestamp):
                pos = stop
                continue
            if b1 & 0x80 or not track.is_video:
                track.frames += 1
            if recording and track.sei_first_bytes is not None and not b0 & 0x10:
                self._look_for_stamp(
                    track.sei_first_bytes, pos + 16 + 4 * (b0 & 0x0F), stop, received_ns, now_ns
                )
            pos = self._in_order_run(track, buf[pos + 1], stop, end, received_ns, now_ns)
        if pos == end:
            self._start = self._end = 0
        elif len(buf) - end < COMPACT_BELOW:
            rest = end - pos
            buf[:rest] = self._view[pos:end]
            self._start, self._end = 0, rest
        else:
            self._start, self._end = pos, end

    def _in_order_run(
        self, track: TrackCount, channel: int, pos: int, end: int, received_ns: int, now_ns: int
    ) -> int:
        """The hot path: the packets from ``pos`` on that follow each other in order on
        ``channel`` (a frame's fragments, usually), counted in local variables. Returns where
        it stopped: at anything else (another channel, a gap, an RTSP message, an
        incomplete or malformed packet), which :meth:`_walk` then handles."""
        buf = self._buffer
        unpack_frame = _FRAME_HEAD.unpack_from
        expect = track.next_seq
        last_ts = track.last_ts
        packets = size_sum = frames = backwards = 0
        every_packet_is_a_frame = not track.is_video
        table = track.sei_first_bytes if self.recording else None
        while end - pos >= 16 and buf[pos] == 0x24:
            frame_channel, size, b0, b1, seq, timestamp, ssrc = unpack_frame(buf, pos)
            stop = pos + 4 + size
            if (
                seq != expect
                or frame_channel != channel
                or stop > end
                or size < 12
                or b0 & 0xC0 != 0x80
            ):
                break
            expect = (seq + 1) & 0xFFFF
            if (timestamp - last_ts) & 0xFFFFFFFF >= 0x80000000:
                backwards += 1
            last_ts = timestamp
            packets += 1
            size_sum += size
            if every_packet_is_a_frame or b1 & 0x80:
                frames += 1
            if table is not None and not b0 & 0x10:
                self._look_for_stamp(table, pos + 16 + 4 * (b0 & 0x0F), stop, received_ns, now_ns)
            if b0 == 0x80 and not b1 & 0x80 and not every_packet_is_a_frame:
                # The rest of this frame, as far as it simply continues, in one call to the
                # gateway's C walk: it stops before any payload the stamp search must see.
                run_end, run_seq, _, run_flags = continue_span(
                    buf, stop, end, seq, timestamp, ssrc, 1 << 30, KEY_NONE, table
                )
                if run_end > stop:
                    taken = run_seq - seq
                    packets += taken
                    size_sum += run_end - stop - 4 * taken
                    if run_flags & SPAN_END:
                        frames += 1
                    expect = (run_seq + 1) & 0xFFFF
                    stop = run_end
            pos = stop
        if packets:
            track.packets += packets
            track.highest_seq += packets
            track.next_seq = expect
            track.last_ts = last_ts
            track.bytes += size_sum
            track.frames += frames
            track.timestamp_backwards += backwards
        return pos

    def _look_for_stamp(
        self, table: bytes, payload: int, stop: int, received_ns: int, now_ns: int
    ) -> None:
        """Record the latency of the camera's stamp if this payload (``payload:stop`` in the
        buffer) can carry one and does."""
        if payload < stop and table[self._buffer[payload]]:
            stamp = find_timestamp(self._view[payload:stop])
            if stamp is not None:
                if self.latency is not None:
                    self.latency.add((received_ns - stamp) // 1000)
                if self.app_latency is not None:
                    self.app_latency.add((now_ns - stamp) // 1000)

    def _skip_message(self, pos: int, end: int) -> int:
        """Step over the RTSP message at ``pos``: where the walk continues, or -1 if its header
        section is not complete yet."""
        buf = self._buffer
        while pos < end and buf[pos] in (0x0D, 0x0A):  # blank lines between messages
            pos += 1
        if pos == end or buf[pos] == 0x24:
            return pos
        if not 0x41 <= buf[pos] <= 0x5A:  # "RTSP/1.0 ..." or a method name: A-Z
            excerpt = bytes(self._view[pos : min(end, pos + 8)]).hex(" ")
            raise ValueError(
                f"expected an interleaved frame ('$') or an RTSP message, got bytes {excerpt}"
            )
        head_end = buf.find(b"\r\n\r\n", pos, min(end, pos + MAX_RTSP_HEAD))
        if head_end < 0:
            if end - pos >= MAX_RTSP_HEAD:
                raise ValueError(f"RTSP message header section exceeds {MAX_RTSP_HEAD} bytes")
            line_end = buf.find(b"\r\n", pos, end)
            if line_end >= 0:  # check the start line as soon as it is there
                self._start_line(bytes(self._view[pos:line_end]))
            return -1
        lines = bytes(self._view[pos:head_end]).split(b"\r\n")
        status = self._start_line(lines[0])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                value = value.strip()
                if not value.isdigit() or len(value) > 9:
                    raise ValueError(f"invalid Content-Length {value[:20]!r} in an RTSP message")
                length = int(value)
                if length > MAX_RTSP_BODY:
                    raise ValueError(f"RTSP message body of {length} bytes exceeds {MAX_RTSP_BODY}")
        self.rtsp_messages += 1
        if status >= 400:
            self.rtsp_error_status = lines[0][:80].decode("latin-1")
        body_end = head_end + 4 + length
        if body_end <= end:
            return body_end
        self._skip = body_end - end
        return end

    @staticmethod
    def _start_line(line: bytes) -> int:
        """The status of a response's start line, 0 for a request's; ValueError otherwise."""
        if _START_LINE.fullmatch(line) is None:
            raise ValueError(f"malformed RTSP start line {line[:60]!r}")
        return int(line[9:12]) if line.startswith(b"RTSP/") else 0


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
    def read(cls, tracks: list[TrackCount]) -> Counters:
        out = cls()
        for track in tracks:
            if track.is_video:
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
        self.latency = latency
        self.app_latency = app_latency
        self.read_stats = read_stats if read_stats is not None else ReadStats()
        self.request_timeout = request_timeout
        self.tracks: list[TrackCount] = []
        self.walk: InterleavedWalk | None = None
        self.error: str | None = None
        self.failed = asyncio.Event()
        self.keepalives = 0
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._parser = RtspConnectionParser("client", max_body=MAX_RTSP_BODY)
        self._cseq = 0
        self._session: str | None = None
        self._session_timeout = DEFAULT_SESSION_TIMEOUT
        self._public: list[str] = []
        self._reading = False
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def recording(self) -> bool:
        return self.walk is not None and self.walk.recording

    @recording.setter
    def recording(self, value: bool) -> None:
        if self.walk is not None:
            self.walk.recording = value

    def counters(self) -> Counters:
        return Counters.read(self.tracks)

    async def start(self) -> None:
        try:
            await self._start()
        except RtspProtocolError as exc:
            self.close()
            raise RtspClientError(0, f"protocol error from server: {exc}") from None
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
        _expect(describe, "DESCRIBE")
        base = (
            describe.headers.get("Content-Base")
            or describe.headers.get("Content-Location")
            or self.url
        )
        try:
            sdp = parse_sdp(describe.body)
        except ValueError as exc:
            raise RtspClientError(0, f"DESCRIBE returned an invalid SDP: {exc}") from None
        channels: dict[int, TrackCount] = {}
        for media in sdp.media:
            if media.media not in ("video", "audio") or "RTP/AVP" not in media.protocol.upper():
                continue
            try:
                codec = codec_name(media.encoding)
            except ValueError:
                codec = media.encoding
            track = TrackCount(media.media, codec)
            index = len(self.tracks)
            self.tracks.append(track)
            rtp_channel = await self._setup(resolve_control(base, media.control), index)
            channels[rtp_channel] = track
        if not self.tracks:
            raise RtspClientError(0, "SDP offers no audio/video RTP track")
        self.walk = InterleavedWalk(channels, self.latency, self.app_latency)

        session_url = resolve_control(base, sdp.control) if sdp.control else base
        play = await self._request("PLAY", session_url, {"Range": "npt=0.000-"})
        _expect(play, "PLAY")
        # Bytes that came with or after the PLAY response are the start of the media stream.
        rest = self._parser.take_buffered()
        if rest:
            now = time.time_ns()
            self._feed(rest, now, now)
        sock = self._sock
        if sock is None:  # failed while walking those bytes
            raise RtspClientError(0, self.error or "session failed")
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._reading = True
        method = "GET_PARAMETER" if "GET_PARAMETER" in self._public else "OPTIONS"
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(method, session_url, self._session_timeout / 2)
        )

    async def _setup(self, control_url: str, index: int) -> int:
        """SETUP one track on channels 2i/2i+1 (or the server's choice); its RTP channel."""
        offer = TransportSpec(
            lower_transport="TCP", multicast=False, interleaved=(2 * index, 2 * index + 1)
        )
        response = await self._request("SETUP", control_url, {"Transport": str(offer)})
        _expect(response, "SETUP")
        try:
            session = SessionHeader.parse(response.headers.get("Session") or "")
            (answer,) = parse_transport_header(response.headers.get("Transport") or "")[:1]
        except ValueError as exc:
            raise RtspClientError(0, f"bad SETUP response: {exc}") from None
        if not answer.is_tcp:
            raise RtspClientError(461, f"server answered TCP SETUP with {answer}")
        self._session = session.session_id
        if session.timeout:
            self._session_timeout = session.timeout
        return (answer.interleaved or offer.interleaved or (0, 1))[0]

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
        parser = self._parser
        while True:
            for event in parser.events():
                if type(event) is RtspResponse:
                    try:
                        answered = event.cseq
                    except ValueError:
                        answered = None
                    if answered in (cseq, None):  # some cameras drop CSeq on errors
                        return event
                elif type(event) is InterleavedFrame and self.walk is not None:
                    # Media ahead of the PLAY response belongs to the stream all the same.
                    now = time.time_ns()
                    self._feed(bytes(event), now, now)
            data = await self._loop.sock_recv(sock, 65536)
            if not data:
                raise RtspClientError(0, "connection closed by server")
            parser.feed(data)

    async def _keepalive_loop(self, method: str, uri: str, interval: float) -> None:
        # The responses come back in the media stream, where the walk steps over them.
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
        sock, walk = self._sock, self.walk
        if sock is None or walk is None:
            return
        read_stats = self.read_stats
        for _ in range(READS_PER_WAKEUP):
            free = walk.free_space()
            try:
                n, ancillary, _, _ = sock.recvmsg_into([free], _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(f"connection lost: {exc}")
                return
            now = time.time_ns()
            if n == 0:
                self._fail("connection closed by server")
                return
            received = kernel_receive_ns(ancillary) if ancillary else None
            if received is None:
                read_stats.unstamped += 1
                received = now
            else:
                read_stats.kernel_stamped += 1
            try:
                walk.received(n, received, now)
            except ValueError as exc:
                self._fail(f"protocol error from server: {exc}")
                return
            if n < len(free):  # a short read: the socket is drained, save the EAGAIN call
                return

    def _feed(self, data: bytes, received_ns: int, now_ns: int) -> None:
        assert self.walk is not None
        try:
            self.walk.feed(data, received_ns, now_ns)
        except ValueError as exc:
            self._fail(f"protocol error from server: {exc}")

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.failed.set()
        self.close()


def _expect(response: RtspResponse, what: str) -> None:
    if response.status != 200:
        raise RtspClientError(response.status, f"{what}: {response.reason}")


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
