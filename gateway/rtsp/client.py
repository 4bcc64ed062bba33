"""An efficient asyncio RTSP reader: the client used by integration tests and benchmarks.

One :class:`RtspReader` plays one URL: OPTIONS, DESCRIBE (Digest/Basic through
:class:`~gateway.digest.DigestClient`), SETUP of every audio/video track (TCP interleaved
or UDP with two local sockets per track), PLAY, keep-alive at half the session timeout and
TEARDOWN on close. It is built on ``asyncio.Protocol`` (no streams, no task per packet) so
many readers fit in one process: per RTP packet it unpacks the fixed header, updates counters
and, only if asked to, depacketizes with :mod:`gateway.codecs`. Without depacketizing, frames
are counted by the marker bit (video) or per packet (audio), and keyframes are recognised from
the H.264/H.265 payload headers. With ``relay_payloads`` a complete H.264/H.265 frame is handed
over as the list of its RTP payloads, and a G.711 packet as a one-payload frame, for a relay
that sends them on as they are.

Run ``python3 -m gateway.rtsp.client URL`` for a quick manual check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from gateway.codecs import (
    SELF_CONTAINED_PAYLOADS,
    codec_name,
    depacketizer_for,
    params_from_sdp_media,
)
from gateway.codecs.h264 import DEFAULT_MAX_FRAME_SIZE, split_annexb
from gateway.codecs.h264 import rtp_packet_flags as h264_packet_flags
from gateway.codecs.h265 import rtp_packet_flags as h265_packet_flags
from gateway.codecs.sdp import SessionDescription, parse_sdp
from gateway.digest import DigestClient
from gateway.rtp.packet import FIXED_HEADER, interleaved_payloads
from gateway.rtp.spans import KEY_H264, KEY_H265, KEY_NONE, SPAN_END, SPAN_KEY, continue_span
from gateway.rtsp.message import (
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspRequest,
    RtspResponse,
    RtspUrl,
    SessionHeader,
    parse_rtp_info,
    parse_token_list,
    resolve_control,
)
from gateway.rtsp.transport import TransportSpec, parse_transport_header

log = logging.getLogger(__name__)

USER_AGENT = "onvif-gateway-reader/0.1"
DEFAULT_SESSION_TIMEOUT = 60
# Frame arrival times kept per track (enough for a few seconds of jitter statistics).
ARRIVAL_HISTORY = 512
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class RtspClientError(Exception):
    """The session failed. ``status`` is the RTSP status, or 0 for transport/protocol errors."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class TrackStats:
    """What one track received. Times are ``loop.time()`` values."""

    index: int
    media: str
    encoding: str
    clock_rate: int
    control_url: str
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    keyframes: int = 0
    # RTP sequence accounting (RFC 3550 appendix A.3): expected minus received, never < 0.
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    timestamp_backwards: int = 0
    malformed: int = 0
    rtcp_packets: int = 0
    ssrc: int | None = None
    ssrc_changes: int = 0
    first_seq: int | None = None
    rtp_info_seq: int | None = None
    rtp_info_rtptime: int | None = None
    first_packet_at: float | None = None
    last_packet_at: float | None = None
    first_frame_at: float | None = None
    first_keyframe_at: float | None = None
    frame_arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVAL_HISTORY))

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__ if name != "frame_arrivals"}
        arrivals = list(self.frame_arrivals)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        out["max_frame_gap"] = round(max(gaps), 4) if gaps else None
        return out


@dataclass(slots=True)
class ReaderStats:
    tracks: list[TrackStats] = field(default_factory=list)
    play_sent_at: float | None = None
    # Seconds from sending PLAY to the first complete video keyframe.
    first_frame_time: float | None = None
    session_id: str | None = None
    session_timeout: int | None = None
    keepalives: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_frame_time": self.first_frame_time,
            "session_id": self.session_id,
            "session_timeout": self.session_timeout,
            "keepalives": self.keepalives,
            "tracks": [t.as_dict() for t in self.tracks],
        }


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """Passed to ``on_frame``; ``data`` is the access unit when depacketizing, else None;
    ``payloads`` are a complete frame's RTP payloads with ``relay_payloads``, else None (also
    for a video frame with a lost packet, or one joined mid-way)."""

    track: int
    timestamp: int
    keyframe: bool
    arrival: float
    data: bytes | None
    payloads: list[bytes] | None = None


FrameCallback = Callable[[ReceivedFrame], None]
# (track, timestamp, keyframe, buffer, start, end, arrival): a complete frame whose packets lie
# back to back in ``buffer[start:end]`` as received, "$"-framed with plain 12-byte headers.
SpanCallback = Callable[[int, int, bool, bytes, int, int, float], None]


def _annexb_is_keyframe(codec: str, frame: bytes) -> bool:
    try:
        nals = split_annexb(frame)
    except ValueError:
        return False
    if codec == "H264":
        return any(n[0] & 0x1F == 5 for n in nals if len(n))
    return any(16 <= (n[0] >> 1) & 0x3F <= 21 for n in nals if len(n))


class _Track:
    """Receive state of one track; ``stats`` is the public part."""

    __slots__ = (
        "codec",
        "cycles",
        "depacketizer",
        "frame_clean",
        "frame_has_key",
        "frame_open",
        "frame_payloads",
        "frame_size",
        "frame_ts",
        "is_video",
        "key_codec",
        "last_ts",
        "max_seq",
        "media",
        "packet_flags",
        "payload_frames",
        "rtcp_channel",
        "rtp_channel",
        "server_ports",
        "span_buffer",
        "span_end",
        "span_start",
        "stats",
        "udp_transports",
    )

    def __init__(self, stats: TrackStats) -> None:
        self.stats = stats
        self.media = stats.media
        self.is_video = stats.media == "video"
        try:
            self.codec = codec_name(stats.encoding)
        except ValueError:
            self.codec = stats.encoding
        self.packet_flags: Callable[[bytes, int, int], tuple[bool, bool]] | None = None
        self.key_codec = KEY_NONE  # the same rules, for continue_span
        if self.codec == "H264":
            self.packet_flags = h264_packet_flags
            self.key_codec = KEY_H264
        elif self.codec == "H265":
            self.packet_flags = h265_packet_flags
            self.key_codec = KEY_H265
        self.depacketizer: Any = None
        self.max_seq = -1
        self.cycles = 0
        self.last_ts = -1
        # A video frame is open between its first packet and its marker. It is "clean" when
        # it began at a NAL boundary and no packet of it was lost, so it is complete.
        self.frame_open = False
        self.frame_clean = False
        self.frame_has_key = False
        # The open frame's payloads when they are handed over (``relay_payloads``), else None.
        self.frame_payloads: list[bytes] | None = None
        # Every payload handed over as a frame of its own (``relay_payloads``, G.711).
        self.payload_frames = False
        # The open frame as a span of one read buffer (see RtspReader._collect), if it is one.
        self.span_buffer: bytes | None = None
        self.span_start = 0
        self.span_end = 0
        self.frame_size = 0
        self.frame_ts = -1
        self.rtp_channel = -1
        self.rtcp_channel = -1
        self.server_ports: tuple[int, int] | None = None
        self.udp_transports: list[asyncio.DatagramTransport] = []


def build_request(
    method: str,
    uri: str,
    cseq: int,
    session: str | None,
    auth: DigestClient | None,
    headers: dict[str, str] | None = None,
    user_agent: str = USER_AGENT,
) -> RtspRequest:
    """A client request with CSeq, User-Agent, the session and credentials when known."""
    request = RtspRequest(method, uri, {"CSeq": str(cseq), "User-Agent": user_agent})
    for name, value in (headers or {}).items():
        request.headers.add(name, value)
    if session is not None:
        request.headers.add("Session", session)
    if auth is not None:
        authorization = auth.authorization(method, uri)
        if authorization is not None:
            request.headers.add("Authorization", authorization)
    return request


def answer_challenge(auth: DigestClient, response: RtspResponse, method: str) -> None:
    """Take a 401's challenge so the retry carries credentials; RtspClientError if unusable."""
    try:
        auth.handle_challenge(response.headers.get_all("WWW-Authenticate"))
    except ValueError as exc:
        raise RtspClientError(401, f"{method}: {exc}") from None


class _ControlProtocol(asyncio.Protocol):
    """The RTSP TCP connection: responses to the reader, ``$`` frames to the tracks."""

    def __init__(self, reader: RtspReader) -> None:
        self.reader = reader
        self.parser = RtspConnectionParser("client", max_body=256 * 1024)
        self.transport: asyncio.Transport | None = None
        self._partial = b""  # the start of a "$" frame the last read cut (fast path)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        parser = self.parser
        now = reader._loop.time()
        channels = reader._channels
        if self._partial:
            data = self._partial + data
            self._partial = b""
        if parser.idle:
            # Fast path while playing: whole "$" frames straight from the received bytes,
            # no event objects; a frame cut by the read waits in ``_partial`` (at most one
            # frame). The parser takes over at anything else (a response, a request).
            pos = 0
            size = len(data)
            while pos + 4 <= size and data[pos] == 0x24:
                end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
                if end > size:
                    break
                target = channels.get(data[pos + 1])
                if target is not None:
                    track, is_rtcp = target
                    if is_rtcp:
                        track.stats.rtcp_packets += 1
                    else:
                        if track.span_buffer is data and track.span_end == pos:
                            taken = reader._extend_span(track, data, pos, size, now)
                            if taken > pos:
                                pos = taken
                                continue
                        reader._on_rtp_at(track, data, pos + 4, end, now, True)
                pos = end
            if pos == size or data[pos] == 0x24:
                if pos < size:
                    self._partial = data[pos:]
                if reader.on_batch_end is not None:
                    reader.on_batch_end()
                return
            if pos:
                data = data[pos:]
        parser.feed(data)
        try:
            for event in parser.events():
                if type(event) is InterleavedFrame:
                    target = channels.get(event.channel)
                    if target is not None:
                        track, is_rtcp = target
                        if is_rtcp:
                            track.stats.rtcp_packets += 1
                        else:
                            reader._on_rtp(track, event.payload, now)
                elif type(event) is RtspResponse:
                    reader._on_response(event)
                elif type(event) is RtspRequest:
                    self._answer_server_request(event)
        except RtspProtocolError as exc:
            reader._fail(RtspClientError(0, f"protocol error from server: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        # Back to the fast path once only the start of a "$" frame is left.
        self._partial = parser.take_interleaved_start()
        if reader.on_batch_end is not None:
            reader.on_batch_end()

    def _answer_server_request(self, request: RtspRequest) -> None:
        # Servers may probe us (GET_PARAMETER/OPTIONS as keep-alive) or announce changes.
        status = 200 if request.method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER") else 501
        if self.transport is not None:
            self.transport.write(bytes(RtspResponse.for_request(request, status)))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by server"
        self.reader._fail(RtspClientError(0, reason))


class _RtpDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, reader: RtspReader, track: _Track, is_rtcp: bool, server_ip: str) -> None:
        self.reader = reader
        self.track = track
        self.is_rtcp = is_rtcp
        self.server_ip = server_ip

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # Only the RTSP server's address may feed this session (no injection by others).
        if addr[0] != self.server_ip:
            return
        if self.is_rtcp:
            self.track.stats.rtcp_packets += 1
        else:
            reader = self.reader
            reader._on_rtp(self.track, data, reader._loop.time())
            if reader.on_batch_end is not None:
                reader.on_batch_end()


class RtspReader:
    """Plays one RTSP URL and counts what arrives. See the module docstring."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        transport: Literal["tcp", "udp"] = "tcp",
        on_frame: FrameCallback | None = None,
        *,
        depacketize: bool = False,
        relay_payloads: bool = False,
        on_span: SpanCallback | None = None,
        media: tuple[str, ...] = ("video", "audio"),
        request_timeout: float = 10.0,
        keepalive_interval: float | None = None,
    ) -> None:
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        parsed = RtspUrl.parse(url)
        self.url = parsed.without_credentials()
        self._address = parsed
        username = username if username is not None else parsed.username
        password = password if password is not None else parsed.password
        self._auth = DigestClient(username, password or "") if username else None
        self.transport_kind = transport
        self.on_frame = on_frame
        # Called after the frames of each socket read were handed to on_frame (a relay then
        # sends what arrived together in one write per client).
        self.on_batch_end: Callable[[], None] | None = None
        self.depacketize = depacketize
        self.relay_payloads = relay_payloads
        self.on_span = on_span if relay_payloads else None
        self.media_filter = media
        self.request_timeout = request_timeout
        self.keepalive_interval = keepalive_interval
        self.stats = ReaderStats()
        self.sdp: SessionDescription | None = None
        self.codec_params: list[Any] = []
        self.public_methods: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._protocol: _ControlProtocol | None = None
        self._tracks: list[_Track] = []
        self._channels: dict[int, tuple[_Track, bool]] = {}
        self._cseq = 0
        self._pending: dict[int, asyncio.Future[RtspResponse]] = {}
        self._session: str | None = None
        # Aggregate control URL (PLAY, keep-alive, TEARDOWN): from the SDP, else Content-Base.
        self._session_url = self.url
        self._keepalive: asyncio.Task[None] | None = None
        self._error: RtspClientError | None = None
        self._waiters: list[tuple[int, str | None, asyncio.Future[None]]] = []
        self._closed = False
        # Resolved (with None) when the session fails, so run_for can end early.
        self._failed: asyncio.Future[None] = self._loop.create_future()

    # -- public API

    @property
    def tracks(self) -> list[TrackStats]:
        return self.stats.tracks

    async def start(self) -> None:
        """Connect and PLAY; raises :class:`RtspClientError` on any failure (and cleans up)."""
        try:
            await self._start()
        except BaseException:
            # TEARDOWN too if SETUP already created a session, so the server frees it now.
            await self._shutdown(teardown=True)
            raise

    async def wait_frames(self, n: int, timeout: float, media: str | None = None) -> None:
        """Until every track (of ``media`` if given) has received ``n`` frames.

        Raises TimeoutError, the session's :class:`RtspClientError` if it failed first, or
        ValueError if the session has no ``media`` track.
        """
        if self._error is not None:
            raise self._error
        if media is not None and not any(t.media == media for t in self.stats.tracks):
            raise ValueError(f"no {media} track in this session")
        if self._enough_frames(n, media):
            return
        future: asyncio.Future[None] = self._loop.create_future()
        entry = (n, media, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def run_for(self, seconds: float) -> None:
        """Keep playing for ``seconds``; raises the session's error if it fails sooner."""
        if self._error is not None:
            raise self._error
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._failed), seconds)
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """TEARDOWN (best effort) and release sockets; safe to call twice."""
        await self._shutdown(teardown=True)

    async def __aenter__(self) -> RtspReader:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- session setup

    async def _start(self) -> None:
        host, port = self._address.host, self._address.port
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(lambda: _ControlProtocol(self), host, port),
                self.request_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise RtspClientError(0, f"cannot connect to {host}:{port}: {exc}") from None
        self._protocol = protocol

        options = await self.request("OPTIONS", self.url)
        if options.status == 200:
            with contextlib.suppress(ValueError):
                self.public_methods = parse_token_list(options.headers.get("Public", "") or "")

        describe = await self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        self._expect(describe, "DESCRIBE")
        base = (
            describe.headers.get("Content-Base")
            or describe.headers.get("Content-Location")
            or self.url
        )
        self._describe_tracks(describe.body, base)

        for track in self._tracks:
            await self._setup(track)

        session_control = self.sdp.control if self.sdp is not None else ""
        self._session_url = resolve_control(base, session_control) if session_control else base
        self.stats.play_sent_at = self._loop.time()
        play = await self.request("PLAY", self._session_url, {"Range": "npt=0.000-"})
        self._expect(play, "PLAY")
        rtp_info = play.headers.get("RTP-Info")
        if rtp_info:
            self._apply_rtp_info(rtp_info)
        interval = self.keepalive_interval
        if interval is None:
            interval = (self.stats.session_timeout or DEFAULT_SESSION_TIMEOUT) / 2
        self._keepalive = asyncio.create_task(self._keepalive_loop(interval))

    def _describe_tracks(self, body: bytes, base: str) -> None:
        try:
            self.sdp = parse_sdp(body)
        except ValueError as exc:
            raise RtspClientError(0, f"DESCRIBE returned an invalid SDP: {exc}") from None
        for media in self.sdp.media:
            if media.media not in self.media_filter or "RTP/AVP" not in media.protocol.upper():
                continue
            index = len(self._tracks)
            stats = TrackStats(
                index=index,
                media=media.media,
                encoding=media.encoding,
                clock_rate=media.clock_rate,
                control_url=resolve_control(base, media.control),
            )
            track = _Track(stats)
            params = None
            try:
                params = params_from_sdp_media(media)
            except (ValueError, KeyError, AttributeError) as exc:
                log.debug("no codec parameters for %s track: %s", media.encoding, exc)
            self.codec_params.append(params)
            if self.relay_payloads and track.packet_flags is not None:
                track.frame_payloads = []
            elif self.relay_payloads and track.codec in SELF_CONTAINED_PAYLOADS:
                track.payload_frames = True
            elif self.depacketize and params is not None:
                try:
                    track.depacketizer = depacketizer_for(params)
                except (ValueError, KeyError) as exc:
                    log.debug("cannot depacketize %s: %s", media.encoding, exc)
            self._tracks.append(track)
            self.stats.tracks.append(stats)
        if not self._tracks:
            raise RtspClientError(0, f"SDP offers no {'/'.join(self.media_filter)} RTP track")

    async def _setup(self, track: _Track) -> None:
        index = track.stats.index
        if self.transport_kind == "tcp":
            offer = TransportSpec(
                lower_transport="TCP", multicast=False, interleaved=(2 * index, 2 * index + 1)
            )
        else:
            rtp_port = await self._open_udp(track)
            offer = TransportSpec(multicast=False, client_port=(rtp_port, rtp_port + 1))
        response = await self.request("SETUP", track.stats.control_url, {"Transport": str(offer)})
        self._expect(response, "SETUP")
        session = response.headers.get("Session")
        if session is None:
            raise RtspClientError(0, "SETUP response without Session header")
        try:
            parsed_session = SessionHeader.parse(session)
            (answer,) = parse_transport_header(response.headers.get("Transport") or "")[:1]
        except ValueError as exc:
            raise RtspClientError(0, f"bad SETUP response: {exc}") from None
        self._session = parsed_session.session_id
        self.stats.session_id = parsed_session.session_id
        if parsed_session.timeout is not None:
            self.stats.session_timeout = parsed_session.timeout
        if answer.ssrc is not None:
            track.stats.ssrc = answer.ssrc
        if self.transport_kind == "tcp":
            if not answer.is_tcp:
                raise RtspClientError(461, f"server answered TCP SETUP with {answer}")
            rtp_channel, rtcp_channel = answer.interleaved or offer.interleaved or (0, 1)
            if rtcp_channel == rtp_channel:
                rtcp_channel = rtp_channel + 1
            track.rtp_channel, track.rtcp_channel = rtp_channel, rtcp_channel
            self._channels[rtp_channel] = (track, False)
            self._channels[rtcp_channel] = (track, True)
        else:
            if answer.is_tcp:
                raise RtspClientError(461, f"server answered UDP SETUP with {answer}")
            track.server_ports = answer.server_port

    async def _open_udp(self, track: _Track) -> int:
        """Bind an even RTP port and the next odd one for RTCP, on the control link's address."""
        assert self._protocol is not None and self._protocol.transport is not None
        local = self._protocol.transport.get_extra_info("sockname")
        server_ip = self._protocol.transport.get_extra_info("peername")[0]
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        for _ in range(50):
            rtp_sock = socket.socket(family, socket.SOCK_DGRAM)
            rtcp_sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtp_sock.bind((local[0], 0))
                port = rtp_sock.getsockname()[1]
                if port % 2 or port == 65535:
                    raise OSError("odd port")
                rtcp_sock.bind((local[0], port + 1))
            except OSError:
                rtp_sock.close()
                rtcp_sock.close()
                continue
            for sock, is_rtcp in ((rtp_sock, False), (rtcp_sock, True)):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RECEIVE_BUFFER)
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda rtcp=is_rtcp: _RtpDatagramProtocol(self, track, rtcp, server_ip),  # type: ignore[misc]
                    sock=sock,
                )
                track.udp_transports.append(transport)
            return port
        raise RtspClientError(0, "cannot bind a pair of UDP ports for RTP/RTCP")

    def _apply_rtp_info(self, value: str) -> None:
        try:
            entries = parse_rtp_info(value)
        except ValueError as exc:
            log.debug("ignoring malformed RTP-Info: %s", exc)
            return
        for entry in entries:
            for track in self._tracks:
                url = track.stats.control_url
                if entry.url == url or url.endswith(entry.url) or entry.url.endswith(url):
                    track.stats.rtp_info_seq = entry.seq
                    track.stats.rtp_info_rtptime = entry.rtptime
                    break

    async def _keepalive_loop(self, interval: float) -> None:
        method = "GET_PARAMETER" if "GET_PARAMETER" in self.public_methods else "OPTIONS"
        while not self._closed:
            await asyncio.sleep(max(interval, 0.05))
            try:
                await self.request(method, self._session_url)
            except RtspClientError:
                return
            self.stats.keepalives += 1

    # -- requests

    async def request(
        self, method: str, uri: str, headers: dict[str, str] | None = None
    ) -> RtspResponse:
        """Send one request and await its response; answers one 401 with credentials."""
        response = await self._send(method, uri, headers)
        if response.status == 401 and self._auth is not None:
            answer_challenge(self._auth, response, method)
            # One retry: a second 401 means wrong credentials (the caller sees the 401).
            response = await self._send(method, uri, headers)
        return response

    async def _send(self, method: str, uri: str, headers: dict[str, str] | None) -> RtspResponse:
        if self._error is not None:
            raise self._error
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            raise RtspClientError(0, "not connected")
        self._cseq += 1
        request = build_request(method, uri, self._cseq, self._session, self._auth, headers)
        future: asyncio.Future[RtspResponse] = self._loop.create_future()
        self._pending[self._cseq] = future
        protocol.transport.write(bytes(request))
        try:
            return await asyncio.wait_for(future, self.request_timeout)
        except TimeoutError:
            raise RtspClientError(0, f"{method} timed out after {self.request_timeout}s") from None
        finally:
            self._pending.pop(request.cseq or 0, None)

    def _on_response(self, response: RtspResponse) -> None:
        try:
            cseq = response.cseq
        except ValueError:
            cseq = None
        future = self._pending.get(cseq) if cseq is not None else None
        if future is None and cseq is None and len(self._pending) == 1:
            # Some cameras drop CSeq on errors; with one request in flight it is that one.
            future = next(iter(self._pending.values()))
        if future is not None and not future.done():
            future.set_result(response)

    @staticmethod
    def _expect(response: RtspResponse, what: str) -> None:
        if response.status != 200:
            raise RtspClientError(response.status, f"{what}: {response.reason}")

    # -- media

    def _on_rtp(self, track: _Track, packet: bytes, now: float) -> None:
        self._on_rtp_at(track, packet, 0, len(packet), now, False)

    def _extend_span(self, track: _Track, buf: bytes, pos: int, size: int, now: float) -> int:
        """Take the "$" frames from ``pos`` on, as long as each simply continues the frame
        collected as a span ending there (see :func:`continue_span`), up to and including
        its marker packet. Returns where the walk stopped (``pos`` when nothing was taken).
        Most packets are taken here, a run at a time; they skip the full accounting of
        :meth:`_on_rtp_at`, which would give the same result for them."""
        stats = track.stats
        first_seq = track.max_seq
        end, seq, room, flags = continue_span(
            buf,
            pos,
            size,
            first_seq,
            track.frame_ts,
            -1 if stats.ssrc is None else stats.ssrc,  # set by the span's first packet
            DEFAULT_MAX_FRAME_SIZE - track.frame_size,
            KEY_NONE if track.frame_has_key else track.key_codec,
        )
        if end == pos:
            return pos
        packets = seq - first_seq
        track.max_seq = seq
        track.frame_size = DEFAULT_MAX_FRAME_SIZE - room
        track.span_end = end
        stats.packets += packets
        stats.bytes += end - pos - 4 * packets
        stats.last_packet_at = now
        if flags & SPAN_KEY:
            track.frame_has_key = True
        if flags & SPAN_END:
            self._collected_frame_done(track, now)
        return end

    def _on_rtp_at(
        self, track: _Track, buf: bytes, at: int, end: int, now: float, framed: bool
    ) -> None:
        """The RTP packet ``buf[at:end]``; ``framed`` when it sits in an interleaved read
        buffer right after its ``$`` prefix (then a frame may be handed over as a span)."""
        stats = track.stats
        size = end - at
        if size < 12 or buf[at] >> 6 != 2:
            stats.malformed += 1
            return
        b0, b1, seq, timestamp, ssrc = FIXED_HEADER.unpack_from(buf, at)
        stats.packets += 1
        stats.bytes += size
        stats.last_packet_at = now
        if stats.ssrc != ssrc:
            if stats.first_seq is not None:
                stats.ssrc_changes += 1
            stats.ssrc = ssrc
        # Sequence accounting (wrap-around aware); a gap also breaks the frame in progress.
        gap = False
        if track.max_seq < 0:
            stats.first_seq = seq
            stats.first_packet_at = now
            track.max_seq = seq
        else:
            delta = (seq - track.max_seq) & 0xFFFF
            if delta == 0:
                stats.duplicates += 1
                return
            if delta == 1:
                # In order: expected and received both grow by one, so "lost" stays.
                if seq == 0:
                    track.cycles += 0x10000
                track.max_seq = seq
            else:
                if delta < 0x8000:
                    if seq < track.max_seq:
                        track.cycles += 0x10000
                    track.max_seq = seq
                    gap = True
                else:
                    stats.reordered += 1
                expected = track.cycles + track.max_seq - (stats.first_seq or 0) + 1
                stats.lost = max(0, expected - stats.packets + stats.duplicates)
        if track.last_ts >= 0 and ((timestamp - track.last_ts) & 0xFFFFFFFF) >= 0x80000000:
            stats.timestamp_backwards += 1
        track.last_ts = timestamp
        marker = bool(b1 & 0x80)

        start = at + 12 + 4 * (b0 & 0x0F)
        stop = end
        if b0 & 0x30:  # header extension and/or padding: rare, so checked only then
            if b0 & 0x10:
                if stop < start + 4:
                    stats.malformed += 1
                    return
                start += 4 + 4 * ((buf[start + 2] << 8) | buf[start + 3])
            if b0 & 0x20:
                stop -= buf[end - 1]
        if stop <= start:
            stats.malformed += 1
            return
        if track.depacketizer is not None:
            self._depacketize(track, buf[start:stop], marker, timestamp, gap, now)
            return
        if not track.is_video:
            if track.payload_frames:
                if framed and b0 == 0x80 and self.on_span is not None:
                    self._span_done(track, timestamp, False, buf, at - 4, end, now)
                else:
                    self._frame_done(track, timestamp, False, now, payloads=[buf[start:stop]])
                return
            data = buf[start:stop] if self.on_frame is not None else None
            self._frame_done(track, timestamp, False, now, data)
            return
        keyframe = continuation = False
        if track.packet_flags is not None:
            keyframe, continuation = track.packet_flags(buf, start, stop)
        collected = track.frame_payloads
        if collected is not None:
            spannable = framed and b0 == 0x80 and self.on_span is not None
            self._collect(
                track, collected, buf, at, start, stop, spannable, timestamp, continuation, gap, now
            )
            if keyframe:
                track.frame_has_key = True
            if marker:
                self._collected_frame_done(track, now)
            return
        if not track.frame_open:
            track.frame_open = True
            track.frame_clean = not continuation
            track.frame_has_key = False
        if gap:
            track.frame_clean = False
        if keyframe:
            track.frame_has_key = True
        if marker:
            track.frame_open = False
            self._frame_done(track, timestamp, track.frame_has_key and track.frame_clean, now)

    def _collect(
        self,
        track: _Track,
        collected: list[bytes],
        buf: bytes,
        at: int,
        start: int,
        stop: int,
        spannable: bool,
        timestamp: int,
        continuation: bool,
        gap: bool,
        now: float,
    ) -> None:
        """Add the payload ``buf[start:stop]`` of the packet at ``at`` to the open frame.

        While a frame's packets lie back to back in one read buffer (``spannable``: framed,
        plain 12-byte headers), only where they start and end is kept; the frame is handed
        over as that span. Anything else turns it into a list of payloads."""
        if track.frame_open and timestamp != track.frame_ts:
            # The marker was lost: the timestamp change ends the previous frame.
            self._collected_frame_done(track, now)
            collected = cast(list[bytes], track.frame_payloads)
        if not track.frame_open:
            track.frame_open = True
            track.frame_clean = not continuation
            track.frame_has_key = False
            track.frame_ts = timestamp
            track.frame_size = 0
        if gap:
            track.frame_clean = False
        if not track.frame_clean:
            collected.clear()
            track.span_buffer = None
            return
        track.frame_size += stop - start
        if track.frame_size > DEFAULT_MAX_FRAME_SIZE:
            track.frame_clean = False  # bounded memory when a sender never ends a frame
            collected.clear()
            track.span_buffer = None
            return
        span = track.span_buffer
        if spannable:
            if span is None:
                if not collected:
                    track.span_buffer = buf
                    track.span_start = at - 4
                    track.span_end = stop
                    return
            elif span is buf and track.span_end == at - 4:
                track.span_end = stop
                return
        if span is not None:
            collected.extend(interleaved_payloads(span, track.span_start, track.span_end))
            track.span_buffer = None
        collected.append(buf[start:stop])

    def _collected_frame_done(self, track: _Track, now: float) -> None:
        track.frame_open = False
        complete = track.frame_clean
        span = track.span_buffer
        if span is not None:
            track.span_buffer = None
            if complete and self.on_span is not None:
                self._span_done(
                    track,
                    track.frame_ts,
                    track.frame_has_key,
                    span,
                    track.span_start,
                    track.span_end,
                    now,
                )
                return
        payloads = track.frame_payloads if complete else None
        track.frame_payloads = []
        self._frame_done(
            track, track.frame_ts, track.frame_has_key and complete, now, payloads=payloads
        )

    def _depacketize(
        self, track: _Track, payload: bytes, marker: bool, timestamp: int, gap: bool, now: float
    ) -> None:
        depacketizer = track.depacketizer
        if gap:
            depacketizer.reset()
        try:
            frames = depacketizer.push(payload, marker, timestamp)
        except ValueError as exc:
            track.stats.malformed += 1
            log.debug("track %d: %s", track.stats.index, exc)
            return
        for frame in frames:
            keyframe = track.packet_flags is not None and _annexb_is_keyframe(track.codec, frame)
            self._frame_done(track, timestamp, keyframe, now, frame)

    def _frame_done(
        self,
        track: _Track,
        timestamp: int,
        keyframe: bool,
        now: float,
        data: bytes | None = None,
        payloads: list[bytes] | None = None,
    ) -> None:
        self._count_frame(track, keyframe, now)
        if self.on_frame is not None:
            index = track.stats.index
            self.on_frame(ReceivedFrame(index, timestamp, keyframe, now, data, payloads))
        if self._waiters:
            self._check_waiters()

    def _span_done(
        self,
        track: _Track,
        timestamp: int,
        keyframe: bool,
        buf: bytes,
        start: int,
        end: int,
        now: float,
    ) -> None:
        """A complete frame handed over as ``buf[start:end]`` (see :data:`SpanCallback`)."""
        assert self.on_span is not None
        self._count_frame(track, keyframe, now)
        self.on_span(track.stats.index, timestamp, keyframe, buf, start, end, now)
        if self._waiters:
            self._check_waiters()

    def _count_frame(self, track: _Track, keyframe: bool, now: float) -> None:
        stats = track.stats
        stats.frames += 1
        stats.frame_arrivals.append(now)
        if stats.first_frame_at is None:
            stats.first_frame_at = now
        if keyframe:
            stats.keyframes += 1
            if stats.first_keyframe_at is None:
                stats.first_keyframe_at = now
                sent = self.stats.play_sent_at
                if track.is_video and sent is not None and self.stats.first_frame_time is None:
                    self.stats.first_frame_time = now - sent

    def _enough_frames(self, n: int, media: str | None) -> bool:
        tracks = [t for t in self.stats.tracks if media is None or t.media == media]
        return bool(tracks) and all(t.frames >= n for t in tracks)

    def _check_waiters(self) -> None:
        for n, media, future in list(self._waiters):
            if not future.done() and self._enough_frames(n, media):
                future.set_result(None)

    # -- shutdown

    def _fail(self, error: RtspClientError) -> None:
        if self._error is None and not self._closed:
            self._error = error
            if not self._failed.done():
                self._failed.set_result(None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)

    async def _shutdown(self, teardown: bool) -> None:
        if self._closed:
            return
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if teardown and self._session is not None and self._error is None:
            # A server too busy to answer TEARDOWN in time must not make closing fail.
            with contextlib.suppress(RtspClientError, TimeoutError):
                await asyncio.wait_for(self._send("TEARDOWN", self._session_url, None), 2.0)
        self._closed = True
        for track in self._tracks:
            for transport in track.udp_transports:
                transport.close()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


# --------------------------------------------------------------------------- CLI


async def _run_cli(args: argparse.Namespace) -> int:
    reader = RtspReader(
        args.url,
        args.username,
        args.password,
        transport=args.transport,
        depacketize=args.depacketize,
    )
    try:
        await reader.start()
        await reader.run_for(args.seconds)
    except RtspClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await reader.close()
        print(json.dumps(reader.stats.as_dict(), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m gateway.rtsp.client", description="Play an RTSP URL and print stats."
    )
    parser.add_argument("url")
    parser.add_argument("-u", "--username")
    parser.add_argument("-p", "--password")
    parser.add_argument("-t", "--transport", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("-s", "--seconds", type=float, default=5.0)
    parser.add_argument("--depacketize", action="store_true", help="rebuild frames (slower)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run_cli(args))
    except ImportError:
        return asyncio.run(_run_cli(args))


if __name__ == "__main__":
    sys.exit(main())
