"""An efficient asyncio RTSP reader: the gateway's native ingest, tests' and benchmarks' client.

One :class:`RtspReader` plays one URL: OPTIONS, DESCRIBE (Digest/Basic through
:class:`~gateway.digest.DigestClient`), SETUP of every audio/video track (TCP interleaved
or UDP with two local sockets per track), PLAY, keep-alive at half the session timeout and
TEARDOWN on close. It is built on ``asyncio.Protocol`` (no streams, no task per packet) so
many readers fit in one process. What arrives is handled sans-IO: the connection's bytes by
:class:`~gateway.rtsp.client_connection.ClientConnection`, each track's RTP by a
:class:`~gateway.rtp.receiver.RtpReceiver` (sequence accounting, frames, keyframes, and with
``relay_payloads`` the camera's payloads or spans for a relay).

Run ``python3 -m gateway.rtsp.client URL`` for a quick manual check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from gateway.cancellation import cancel_and_wait, wait_for
from gateway.codecs.sdp import SessionDescription, parse_sdp
from gateway.digest import DigestClient
from gateway.rtp.receiver import FrameCallback, RtpReceiver, SpanCallback, TrackStats, receiver_for
from gateway.rtsp.client_connection import ClientConnection
from gateway.rtsp.headers import SessionHeader, parse_rtp_info, parse_token_list
from gateway.rtsp.message import RtspProtocolError, RtspRequest, RtspResponse
from gateway.rtsp.transport import TransportSpec, parse_transport_header
from gateway.rtsp.url import RtspUrl, resolve_control

log = logging.getLogger(__name__)

USER_AGENT = "onvif-gateway-reader/0.1"
DEFAULT_SESSION_TIMEOUT = 60
# Kernel receive buffers of the RTP sockets (a keyframe's burst must fit; the kernel caps
# the request at net.core.rmem_max) and of the RTCP ones (a report every few seconds).
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
_RTCP_RECEIVE_BUFFER = 64 * 1024


class RtspClientError(Exception):
    """The session failed. ``status`` is the RTSP status, or 0 for transport/protocol errors.

    ``network``: the camera could not be reached or stopped answering (connect failure,
    timeout, connection lost), as opposed to an answer the client could not use. ``step``:
    where :meth:`RtspReader.start` was when it failed (one of :data:`START_STEPS`), "" once
    the session plays. The native ingest's auto mode tells outages from what it cannot
    take by these two (gateway.media.auto_ingest)."""

    def __init__(self, status: int, message: str, *, network: bool = False) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.message = message
        self.network = network
        self.step = ""


# The steps of RtspReader.start: "sdp" is the DESCRIBE answer's description being read.
START_STEPS = ("connect", "describe", "sdp", "setup", "play")


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


def expect_ok(response: RtspResponse, what: str) -> None:
    """RtspClientError unless ``response`` is a 200."""
    if response.status != 200:
        raise RtspClientError(response.status, f"{what}: {response.reason}")


def content_base(describe: RtspResponse, url: str) -> str:
    """The URL a DESCRIBE answer's control URLs are relative to."""
    return describe.headers.get("Content-Base") or describe.headers.get("Content-Location") or url


def describe_receivers(
    body: bytes,
    base: str,
    media_filter: tuple[str, ...],
    *,
    on_frame: FrameCallback | None = None,
    relay_payloads: bool = False,
    on_span: SpanCallback | None = None,
    depacketize: bool = False,
) -> tuple[SessionDescription, list[RtpReceiver]]:
    """The SDP of a DESCRIBE answer and a receiver (:func:`receiver_for`, with the options
    given) for each of its RTP tracks of a kind in ``media_filter``; RtspClientError when
    the SDP is invalid or offers none."""
    try:
        sdp = parse_sdp(body)
    except ValueError as exc:
        raise RtspClientError(0, f"DESCRIBE returned an invalid SDP: {exc}") from None
    receivers: list[RtpReceiver] = []
    for media in sdp.media:
        if media.media not in media_filter or "RTP/AVP" not in media.protocol.upper():
            continue
        control = resolve_control(base, media.control)
        receivers.append(
            receiver_for(
                len(receivers),
                media,
                control,
                on_frame=on_frame,
                relay_payloads=relay_payloads,
                on_span=on_span,
                depacketize=depacketize,
            )
        )
    if not receivers:
        raise RtspClientError(0, f"SDP offers no {'/'.join(media_filter)} RTP track")
    return sdp, receivers


def tcp_offer(index: int) -> TransportSpec:
    """The Transport a client offers for track ``index``: interleaved channels 2i and 2i+1."""
    return TransportSpec(
        lower_transport="TCP", multicast=False, interleaved=(2 * index, 2 * index + 1)
    )


def setup_answer(response: RtspResponse) -> tuple[SessionHeader, TransportSpec]:
    """The session and the transport a SETUP answer (already checked to be a 200) gives."""
    session = response.headers.get("Session")
    if session is None:
        raise RtspClientError(0, "SETUP response without Session header")
    try:
        parsed = SessionHeader.parse(session)
        (answer,) = parse_transport_header(response.headers.get("Transport") or "")[:1]
    except ValueError as exc:
        raise RtspClientError(0, f"bad SETUP response: {exc}") from None
    return parsed, answer


def interleaved_channels(answer: TransportSpec, offer: TransportSpec) -> tuple[int, int]:
    """The RTP and RTCP channels of a TCP SETUP answer (the offer's when it names none)."""
    if not answer.is_tcp:
        raise RtspClientError(461, f"server answered TCP SETUP with {answer}")
    rtp_channel, rtcp_channel = answer.interleaved or offer.interleaved or (0, 1)
    if rtcp_channel == rtp_channel:
        rtcp_channel = rtp_channel + 1
    return rtp_channel, rtcp_channel


class _ControlProtocol(asyncio.Protocol):
    """The RTSP TCP connection: the asyncio side of :class:`ClientConnection`."""

    def __init__(self, reader: RtspReader) -> None:
        self.reader = reader
        self.connection = reader.connection
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            messages = self.connection.receive(data, reader._loop.time())
        except RtspProtocolError as exc:
            reader._fail(RtspClientError(0, f"protocol error from server: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            if type(message) is RtspResponse:
                reader._on_response(message)
            elif type(message) is RtspRequest:
                self._answer_server_request(message)
        if reader.on_batch_end is not None:
            reader.on_batch_end()

    def _answer_server_request(self, request: RtspRequest) -> None:
        # Servers may probe us (GET_PARAMETER/OPTIONS as keep-alive) or announce changes.
        status = 200 if request.method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER") else 501
        if self.transport is not None:
            self.transport.write(bytes(RtspResponse.for_request(request, status)))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by server"
        self.reader._fail(RtspClientError(0, reason, network=True))


class _RtpDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(
        self, reader: RtspReader, track: RtpReceiver, is_rtcp: bool, server_ip: str
    ) -> None:
        self.reader = reader
        self.track = track
        self.is_rtcp = is_rtcp
        self.server_ip = server_ip

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # Only the RTSP server's address may feed this session (no injection by others).
        if addr[0] != self.server_ip:
            return
        if self.is_rtcp:
            self.track.rtcp()
        else:
            reader = self.reader
            self.track.feed(data, reader._loop.time())
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
        sdp_check: Callable[[SessionDescription], str | None] | None = None,
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
        # Says why the DESCRIBE answer's description will not do (no SETUP follows), or None.
        self.sdp_check = sdp_check
        self.stats = ReaderStats()
        self.sdp: SessionDescription | None = None
        self.codec_params: list[Any] = []
        self.public_methods: list[str] = []
        self._loop = asyncio.get_running_loop()
        # The connection's sans-IO side; its ``channels`` are filled in by SETUP.
        self.connection = ClientConnection()
        self._protocol: _ControlProtocol | None = None
        self._tracks: list[RtpReceiver] = []
        self._udp: list[asyncio.DatagramTransport] = []
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
            await wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def run_for(self, seconds: float) -> None:
        """Keep playing for ``seconds``; raises the session's error if it fails sooner."""
        if self._error is not None:
            raise self._error
        # asyncio.wait neither cancels the session's future nor loses our cancellation.
        await asyncio.wait((self._failed,), timeout=seconds)
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
        step = "connect"
        try:
            await self._connect()
            step = "describe"
            options = await self.request("OPTIONS", self.url)
            if options.status == 200:
                with contextlib.suppress(ValueError):
                    self.public_methods = parse_token_list(options.headers.get("Public", "") or "")

            describe = await self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
            expect_ok(describe, "DESCRIBE")
            step = "sdp"
            base = content_base(describe, self.url)
            self._describe_tracks(describe.body, base)
            problem = self.sdp_check(self.sdp) if self.sdp_check and self.sdp else None
            if problem:
                raise RtspClientError(0, problem)

            step = "setup"
            for track in self._tracks:
                await self._setup(track)

            step = "play"
            session_control = self.sdp.control if self.sdp is not None else ""
            self._session_url = resolve_control(base, session_control) if session_control else base
            self.stats.play_sent_at = self._loop.time()
            play = await self.request("PLAY", self._session_url, {"Range": "npt=0.000-"})
            expect_ok(play, "PLAY")
        except RtspClientError as exc:
            exc.step = step
            raise
        rtp_info = play.headers.get("RTP-Info")
        if rtp_info:
            self._apply_rtp_info(rtp_info)
        interval = self.keepalive_interval
        if interval is None:
            interval = (self.stats.session_timeout or DEFAULT_SESSION_TIMEOUT) / 2
        self._keepalive = asyncio.create_task(self._keepalive_loop(interval))

    async def _connect(self) -> None:
        host, port = self._address.host, self._address.port
        try:
            _, protocol = await wait_for(
                self._loop.create_connection(lambda: _ControlProtocol(self), host, port),
                self.request_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise RtspClientError(
                0, f"cannot connect to {host}:{port}: {exc}", network=True
            ) from None
        self._protocol = protocol

    def _describe_tracks(self, body: bytes, base: str) -> None:
        self.sdp, self._tracks = describe_receivers(
            body,
            base,
            self.media_filter,
            on_frame=self.on_frame,
            relay_payloads=self.relay_payloads,
            on_span=self.on_span,
            depacketize=self.depacketize,
        )
        for track in self._tracks:
            self.codec_params.append(track.params)
            track.on_counted = self._counted
            self.stats.tracks.append(track.stats)

    async def _setup(self, track: RtpReceiver) -> None:
        index = track.stats.index
        if self.transport_kind == "tcp":
            offer = tcp_offer(index)
        else:
            rtp_port = await self._open_udp(track)
            offer = TransportSpec(multicast=False, client_port=(rtp_port, rtp_port + 1))
        response = await self.request("SETUP", track.stats.control_url, {"Transport": str(offer)})
        expect_ok(response, "SETUP")
        parsed_session, answer = setup_answer(response)
        self._session = parsed_session.session_id
        self.stats.session_id = parsed_session.session_id
        if parsed_session.timeout is not None:
            self.stats.session_timeout = parsed_session.timeout
        if answer.ssrc is not None:
            track.stats.ssrc = answer.ssrc
        if self.transport_kind == "tcp":
            rtp_channel, rtcp_channel = interleaved_channels(answer, offer)
            self.connection.channels[rtp_channel] = (track, False)
            self.connection.channels[rtcp_channel] = (track, True)
        elif answer.is_tcp:
            raise RtspClientError(461, f"server answered UDP SETUP with {answer}")

    async def _open_udp(self, track: RtpReceiver) -> int:
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
                    size = _RTCP_RECEIVE_BUFFER if is_rtcp else _UDP_RECEIVE_BUFFER
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda rtcp=is_rtcp: _RtpDatagramProtocol(self, track, rtcp, server_ip),  # type: ignore[misc]
                    sock=sock,
                )
                self._udp.append(transport)
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
            raise RtspClientError(0, "not connected", network=True)
        self._cseq += 1
        request = build_request(method, uri, self._cseq, self._session, self._auth, headers)
        future: asyncio.Future[RtspResponse] = self._loop.create_future()
        self._pending[self._cseq] = future
        protocol.transport.write(bytes(request))
        try:
            return await wait_for(future, self.request_timeout)
        except TimeoutError:
            raise RtspClientError(
                0, f"{method} timed out after {self.request_timeout}s", network=True
            ) from None
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

    # -- media

    def _counted(self, track: RtpReceiver, keyframe: bool, now: float) -> None:
        if keyframe and track.is_video and self.stats.first_frame_time is None:
            sent = self.stats.play_sent_at
            if sent is not None:
                self.stats.first_frame_time = now - sent
        if self._waiters:
            self._check_waiters()

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
            await cancel_and_wait(self._keepalive)
        if teardown and self._session is not None and self._error is None:
            # A server too busy to answer TEARDOWN in time must not make closing fail.
            with contextlib.suppress(RtspClientError, TimeoutError):
                await wait_for(self._send("TEARDOWN", self._session_url, None), 2.0)
        self._closed = True
        for transport in self._udp:
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
