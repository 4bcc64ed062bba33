"""One control connection of the asyncio RTSP server (:mod:`gateway.rtsp.server`): the
per-connection protocol (:class:`RtspConnection`: requests parsed and answered one at a
time, admission and timeouts, hand-off to another worker) and the answer to each request
(:class:`Handler`: Digest authentication, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import zlib
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, cast

from gateway.cancellation import wait_for
from gateway.codecs.sdp import SdpTrack, session_sdp
from gateway.digest import parse_auth_params, split_scheme
from gateway.limits import (
    TokenBucket,
)
from gateway.rtp.frame import Frame
from gateway.rtsp.headers import RtpInfo, SessionHeader, format_rtp_info
from gateway.rtsp.message import (
    NEED_DATA,
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspRequest,
    RtspResponse,
)
from gateway.rtsp.server_session import ServerSession
from gateway.rtsp.source import StreamSource
from gateway.rtsp.transport import TransportSpec, parse_transport_header
from gateway.rtsp.url import request_path

if TYPE_CHECKING:
    from gateway.rtsp.server import RtspServer

log = logging.getLogger("gateway.rtsp")

ALLOWED_METHODS = (
    "OPTIONS",
    "DESCRIBE",
    "SETUP",
    "PLAY",
    "PAUSE",
    "TEARDOWN",
    "GET_PARAMETER",
    "SET_PARAMETER",
)
_TRACK_RE = re.compile(r"^(?P<base>.*?)/?trackID=(?P<track>\d{1,3})$")
MAX_SESSIONS_PER_CONNECTION = 16
# How many maximal failed-login delays one address may have queued (see Handler._refuse_login).
AUTH_QUEUE_DELAYS = 4


class RtspConnection(asyncio.Protocol):
    """One control connection: parses requests, answers them in order, carries TCP media.

    One request at a time: the parser is asked for the next request only once the previous
    one is answered, and reading stops (the transport is paused) while a request waits, so a
    client pipelining requests at full speed holds at most one socket read in memory. After
    each request the serving task yields to the event loop, so frames for every other client
    go out between any two requests of one connection.
    """

    def __init__(self, server: RtspServer, *, secure: bool = False) -> None:
        self.server = server
        self.secure = secure  # over TLS: interleaved media only, never handed off
        self.parser = RtspConnectionParser("server")
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.sessions: set[str] = set()
        # The request being answered (at most one; more stay unparsed in the parser).
        self._queue: deque[RtspRequest] = deque()
        self._serving: asyncio.Task[None] | None = None
        self._handing_off = False
        self.handoff_allowed = not secure
        self._closed = False
        self._counted = False
        self._reading = True
        # Set while the transport's buffer is under its high-water mark (output_budget).
        self._writable = asyncio.Event()
        self._writable.set()
        self.authenticated = False
        self.auth_failures = 0
        limits = server.limits
        now = server.clock()
        self._bucket = TokenBucket(limits.preauth_rate, limits.preauth_burst, now)
        self.last_request = now
        # When the bytes of a request still incomplete began to arrive (None between them).
        self._partial_since: float | None = None
        # Digest nonces this connection was challenged with (the latest few).
        self._nonces: deque[str] = deque(maxlen=4)

    @property
    def peer_text(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}"

    def remember_challenge(self, www_authenticate: str) -> None:
        scheme, rest = split_scheme(www_authenticate)
        if scheme == "digest":
            with contextlib.suppress(ValueError):
                nonce = parse_auth_params(rest).get("nonce")
                if nonce:
                    self._nonces.append(nonce)

    def answer_bound(self, authorization: str) -> bool:
        """Whether a valid Authorization may be used on this connection. A Digest answer
        without qop=auth has nothing that counts it (most RTSP clients send none), so a
        captured one would work on any connection for the nonce's lifetime: it is taken
        only on the connection the nonce was given to; elsewhere the client is asked to
        answer a fresh nonce (stale, not a failed login)."""
        scheme, rest = split_scheme(authorization)
        if scheme != "digest":
            return True
        try:
            params = parse_auth_params(rest)
        except ValueError:
            return False
        return "qop" in params or params.get("nonce") in self._nonces

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[:2]
        self.local = transport.get_extra_info("sockname")[:2]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        refused = self.server.counter.admit(self.peer[0])
        if refused is not None:
            transport.write(bytes(RtspResponse(503, headers={"CSeq": "0", "Retry-After": "5"})))
            self._closed = True
            transport.close()
            return
        self._counted = True
        transport.set_write_buffer_limits(high=self.server.limits.output_budget)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()  # wakes a serving task waiting for the client to read
        if self._counted:
            self._counted = False
            self.server.counter.release(self.peer[0])
        self.server.connections.discard(self)
        for sid in list(self.sessions):
            session = self.server.sessions.get(sid)
            if session is not None:
                self.server.end_session(session)
        self.transport = None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def playing(self) -> bool:
        """Whether a session of this connection is playing."""
        sessions = self.server.sessions
        return any((s := sessions.get(sid)) is not None and s.playing for sid in self.sessions)

    def check_timeouts(self, now: float) -> None:
        """Close the connection when a request is too slow to arrive or it idles too long
        (called by the server's reaper about every second)."""
        if self._closed or self._handing_off:
            return
        limits = self.server.limits
        if self._partial_since is not None and now - self._partial_since > limits.request_timeout:
            self.server.refuse("request_timeout", self.peer[0])
            if self.transport is not None:
                self.transport.write(bytes(RtspResponse(408, headers={"CSeq": "0"})))
            self.close()
            return
        if self._serving is not None or self.playing():
            return
        idle = limits.session_timeout if self.sessions else limits.idle_timeout
        if now - self.last_request > idle:
            log.info(
                "idle RTSP connection closed",
                extra={"peer": self.peer_text, "idle_seconds": round(now - self.last_request)},
            )
            self.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.parser.feed(data)
        if self._serving is None and not self._handing_off:
            self._next_request()

    def _next_request(self) -> bool:
        """Parse up to the next request; True when one is queued (reading paused), False
        when more bytes are needed (reading resumed) or the connection failed."""
        parser = self.parser
        while True:
            try:
                event = parser.next_event()
            except RtspProtocolError as exc:
                self._reject(exc)
                return False
            if event is NEED_DATA:
                if parser.idle:
                    self._partial_since = None
                elif self._partial_since is None:
                    self._partial_since = self.server.clock()
                self._set_reading(True)
                return False
            if isinstance(event, InterleavedFrame):
                self._touch_by_channel(event.channel)
            elif isinstance(event, RtspRequest):
                self._partial_since = None
                self.last_request = self.server.clock()
                self._queue.append(event)
                self._set_reading(False)
                if self._serving is None:
                    self._serving = asyncio.ensure_future(self._serve())
                return True
            # Responses from a client are not expected; ignore them.

    def _set_reading(self, on: bool) -> None:
        transport = self.transport
        if on == self._reading or transport is None or self._closed:
            return
        self._reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _reject(self, exc: RtspProtocolError) -> None:
        log.info("malformed RTSP input", extra={"peer": self.peer_text, "error": str(exc)})
        if self.transport is not None:
            self.transport.write(bytes(RtspResponse(exc.status, headers={"CSeq": "0"})))
        self.close()

    def _touch_by_channel(self, channel: int) -> None:
        now = self.server.clock()
        for sid in self.sessions:
            session = self.server.sessions.get(sid)
            if session is not None and channel - 1 in session.channels.values():
                session.last_activity = now

    def _admission_delay(self) -> float:
        """Seconds the next request must wait: none once the connection has authenticated,
        else what the connection's and the server's pre-authentication buckets say."""
        if self.authenticated:
            return 0.0
        now = self.server.clock()
        wait = max(self._bucket.wait(now), self.server.preauth.wait(now))
        if wait == 0.0:
            self._bucket.take(now)
            self.server.preauth.take(now)
        return wait

    async def _serve(self) -> None:
        """Answer requests one at a time, in order, until no complete one is buffered."""
        limits = self.server.limits
        try:
            while self._queue and not self._closed:
                if self.handoff_allowed and self._hand_off():
                    return
                delay = self._admission_delay()
                if delay > 0:
                    self.server.refuse("rate_limited", self.peer[0])
                    await asyncio.sleep(delay)
                    continue
                waiting = Handler(self, self._queue.popleft()).run()
                if waiting is not None:
                    try:
                        await waiting
                    except Exception:  # one failed request must not stall the connection
                        log.exception("RTSP request failed", extra={"peer": self.peer_text})
                if not self._writable.is_set() and not self.playing():
                    # The client does not read its responses: read nothing more from it
                    # until it does, and give up on it after write_timeout.
                    try:
                        await wait_for(self._writable.wait(), limits.write_timeout)
                    except TimeoutError:
                        self.server.refuse("write_timeout", self.peer[0])
                        if self.transport is not None:
                            self.transport.abort()
                        return
                # Let the event loop send frames (and serve others) before the next request.
                await asyncio.sleep(0)
                if not self._closed and not self._handing_off:
                    self._next_request()
        finally:
            self._serving = None

    def _hand_off(self) -> bool:
        """Pass this connection to the worker owning the first request's camera, if that is
        another worker. Only before any session exists on the connection."""
        handoff = self.server.handoff
        if handoff is None or self.sessions or self.transport is None:
            return False
        self.handoff_allowed = False
        send = handoff(request_path(self._queue[0].uri))
        if send is None:
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        # Everything read so far, re-serialised in order, goes with the socket.
        data = b"".join(bytes(r) for r in self._queue) + self.parser.take_buffered()
        self._queue.clear()
        self._handing_off = True
        self._set_reading(False)
        task = asyncio.ensure_future(asyncio.to_thread(send, sock, data))
        task.add_done_callback(lambda t: self._handed_off(t, data))
        return True

    def _handed_off(self, task: asyncio.Future[None], data: bytes) -> None:
        if task.cancelled() or task.exception() is not None:
            # The owner is unreachable (restarting): answer here; the camera is not ours,
            # so the client gets a clean 404/503 rather than a dropped connection.
            log.warning(
                "connection hand-off failed",
                extra={
                    "peer": self.peer_text,
                    "error": str(None if task.cancelled() else task.exception()),
                },
            )
            self._handing_off = False
            self.data_received(data)
            return
        # The owner holds its own descriptor of the connection now; ours just goes away.
        log.info("client connection handed to the camera's worker", extra={"peer": self.peer_text})
        self._closed = True
        self.server.connections.discard(self)
        if self._counted:
            self._counted = False
            self.server.counter.release(self.peer[0])
        if self.transport is not None:
            self.transport.abort()

    def send(self, response: RtspResponse) -> None:
        response.headers.set("Server", self.server.server_name)
        if self.transport is not None and not self._closed:
            self.transport.write(bytes(response))


class _Answered(Exception):
    """The request was already answered with an error; stop handling it."""


class Handler:
    """Answers one request; async only where it must wait (DESCRIBE of a cold stream)."""

    def __init__(self, conn: RtspConnection, request: RtspRequest) -> None:
        self.conn = conn
        self.server = conn.server
        self.request = request

    def respond(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.conn.send(RtspResponse.for_request(self.request, status, headers, body))

    def run(self) -> Coroutine[None, None, None] | None:
        """Answer the request; what is left to await when it must wait, else None."""
        req = self.request
        try:
            if req.cseq is None:
                self.respond(400, {"CSeq": "0"})
                return None
        except ValueError:
            self.conn.send(RtspResponse(400, headers={"CSeq": "0"}))
            return None
        method = req.method
        if method == "OPTIONS":
            self.respond(200, {"Public": ", ".join(ALLOWED_METHODS)})
            return None
        if method not in ALLOWED_METHODS:
            if method in ("ANNOUNCE", "RECORD", "REDIRECT"):
                self.respond(405, {"Allow": ", ".join(ALLOWED_METHODS)})
            else:
                self.respond(501)
            return None
        if req.headers.get("Require"):
            self.respond(551, {"Unsupported": req.headers.get("Require") or ""})
            return None
        verdict = self._authorized()
        if verdict is not True:
            return verdict or None
        if method == "DESCRIBE":
            return self.describe()
        if method == "SETUP":
            return self.setup()
        with contextlib.suppress(_Answered):
            getattr(self, method.lower())()
        return None

    def _authorized(self) -> bool | Coroutine[None, None, None]:
        """True when the request may proceed, False when it was answered with a challenge;
        else the refusal to await (a 401 after a delay, for a failed login)."""
        auth = self.server.authenticator
        conn = self.conn
        if auth is None:
            conn.authenticated = True
            return True
        now = time.time()
        header = self.request.headers.get("Authorization")
        result = None
        stale = False
        if header:
            result = auth.authenticate(self.request.method, header, now, uri=self.request.uri)
            stale = result.stale
            if result.username is not None:
                if conn.answer_bound(header):
                    conn.authenticated = True
                    self.server.auth_throttle.success(conn.peer[0])
                    return True
                stale = True  # a no-qop answer to a nonce this connection was not given
        response = RtspResponse.for_request(self.request, 401)
        for value in auth.challenge(now, stale=stale):
            response.headers.add("WWW-Authenticate", value)
            conn.remember_challenge(value)
        if not header or stale:
            # A first request without credentials, or a client re-answering an expired
            # nonce: the ordinary Digest exchange, not a failure.
            if stale:
                log.debug("RTSP nonce stale, challenged again", extra={"peer": conn.peer_text})
            conn.send(response)
            return False
        return self._refuse_login(response)

    async def _refuse_login(self, response: RtspResponse) -> None:
        """A failed login: counted against the source address, answered after that address's
        delay, and the connection closed after a few failures.

        The delayed answers of one address go out one after the other (each waits for the
        one before it), so parallel connections guess no faster than one; when that queue
        is longer than AUTH_QUEUE_DELAYS delays, the connection is closed unanswered."""
        server, conn = self.server, self.conn
        address = conn.peer[0]
        clock = server.clock()
        delay = server.auth_throttle.delay(address, clock)
        server.auth_throttle.failure(address, clock)
        conn.auth_failures += 1
        server.refuse(
            "auth_failure", address, failures=server.auth_throttle.failures(address, clock)
        )
        if delay:
            answer_at = max(clock, server.auth_answers.get(address, clock)) + delay
            if answer_at - clock > AUTH_QUEUE_DELAYS * server.limits.auth_delay_max:
                server.refuse("auth_queue_full", address)
                conn.close()
                return
            server.auth_answers.pop(address, None)
            server.auth_answers[address] = answer_at
            while len(server.auth_answers) > 4096:
                server.auth_answers.popitem(last=False)
            await asyncio.sleep(answer_at - clock)
        if conn.auth_failures >= server.limits.auth_failures_to_close:
            response.headers.set("Connection", "close")
            conn.send(response)
            conn.close()
            return
        conn.send(response)

    def _resolve(self) -> tuple[StreamSource | None, int | None, str]:
        path = request_path(self.request.uri)
        track: int | None = None
        match = _TRACK_RE.match(path)
        if match:
            path, track = match.group("base") or "/", int(match.group("track"))
        source = self.server.resolve(path)
        if source is None and path.endswith("/") and len(path) > 1:
            source = self.server.resolve(path.rstrip("/"))
        return source, track, path

    async def describe(self) -> None:
        source, _, _ = self._resolve()
        if source is None:
            self.respond(404)
            return
        ready = await source.wait_ready(self.server.limits.describe_timeout)
        if not ready or not source.tracks:
            self.respond(503, {"Retry-After": "5"})
            return
        base = self.request.uri.rstrip("/") + "/"
        if "://" not in base:
            host = self.conn.local[0]
            host = f"[{host}]" if ":" in host else host
            scheme = "rtsps" if self.conn.secure else "rtsp"
            base = f"{scheme}://{host}:{self.conn.local[1]}{base}"
        sdp = session_description(source, self.conn.local[0])
        self.respond(200, {"Content-Type": "application/sdp", "Content-Base": base}, sdp)

    async def setup(self) -> None:
        req = self.request
        source, track, _ = self._resolve()
        if source is None:
            self.respond(404)
            return
        if not source.tracks and not await source.wait_ready(self.server.limits.describe_timeout):
            self.respond(503, {"Retry-After": "5"})
            return
        if track is None:
            track = 0 if len(source.tracks) == 1 else None
        if track is None or track >= len(source.tracks):
            self.respond(404)
            return
        try:
            specs = parse_transport_header(req.headers.get("Transport") or "")
        except ValueError:
            self.respond(461)
            return
        # Over TLS only interleaved media: RTP over UDP would travel unprotected.
        secure = self.conn.secure
        spec = next(
            (
                s
                for s in specs
                if not s.is_multicast and s.profile == "AVP" and (s.is_tcp or not secure)
            ),
            None,
        )
        if spec is None:
            self.respond(461)
            return
        try:
            session = self._optional_session()
        except _Answered:
            return
        if session is None:
            if len(self.conn.sessions) >= MAX_SESSIONS_PER_CONNECTION:
                self.respond(453)
                return
            session = ServerSession(self.server, self.conn, source, spec.is_tcp)
            session.video_track = next((t.index for t in source.tracks if t.is_video), 0)
        elif session.source is not source:
            self.respond(459)
            return
        elif session.tcp != spec.is_tcp:
            self.respond(461)
            return
        if spec.is_tcp:
            if spec.interleaved is not None:
                channel = spec.interleaved[0]
            else:
                used = set(session.channels.values())
                channel = next(c for c in range(0, 256, 2) if c not in used)
            if channel > 254 or channel in {c for t, c in session.channels.items() if t != track}:
                self.respond(461)
                return
            session.channels[track] = channel
            reply = TransportSpec(
                lower_transport="TCP",
                multicast=False,
                interleaved=(channel, channel + 1),
                ssrc=source.tracks[track].ssrc,
            )
        else:
            if spec.client_port is None:
                self.respond(461)
                return
            try:
                rtp_port, rtcp_port = await self.server.ensure_udp()
            except OSError as exc:
                # 461: the client may ask again for TCP interleaved (FFmpeg and GStreamer do).
                log.warning("UDP transport refused", extra={"error": str(exc), "ratelimit": True})
                self.respond(461)
                return
            peer_ip = self.conn.peer[0]
            first, last = spec.client_port
            session.udp_targets[track] = (
                (peer_ip, first),
                (peer_ip, last if last != first else first + 1),
            )
            reply = TransportSpec(
                multicast=False,
                client_port=spec.client_port,
                server_port=(rtp_port, rtcp_port),
                ssrc=source.tracks[track].ssrc,
            )
        if session.id not in self.server.sessions:
            self.server.sessions[session.id] = session
            self.conn.sessions.add(session.id)
            log.info(
                "client session opened",
                extra={
                    "stream": source.key,
                    "session": session.id,
                    "peer": self.conn.peer_text,
                    "transport": "tcp" if session.tcp else "udp",
                },
            )
        session.last_activity = self.server.clock()
        self.respond(
            200,
            {
                "Transport": str(reply),
                "Session": str(SessionHeader(session.id, self.server.limits.session_timeout)),
            },
        )

    def _session(self) -> ServerSession:
        """The request's session; answers 454 and raises :class:`_Answered` if there is none."""
        session = self._optional_session()
        if session is None:
            self.respond(454)
            raise _Answered
        return session

    def _optional_session(self) -> ServerSession | None:
        """The session named in the request, None if it names none (454 if it names a bad one)."""
        value = self.request.headers.get("Session")
        if value is None:
            return None
        try:
            sid = SessionHeader.parse(value).session_id
        except ValueError:
            self.respond(454)
            raise _Answered from None
        session = self.server.sessions.get(sid)
        if session is None or (session.conn is not self.conn and session.tcp):
            self.respond(454)
            raise _Answered
        session.last_activity = self.server.clock()
        return session

    def play(self) -> None:
        session = self._session()
        if not session.channels and not session.udp_targets:
            self.respond(455)
            return
        result = session.play()
        headers = {
            "Session": str(SessionHeader(session.id, self.server.limits.session_timeout)),
            "Range": "npt=now-",
        }
        gop: list[Frame] = []
        if result is not None:
            infos, gop = result
            base = self.request.uri.rstrip("/")
            base = _TRACK_RE.sub(lambda m: m.group("base"), base)
            entries = [
                RtpInfo(f"{base}/trackID={t}", seq, rtptime)
                for t, (seq, rtptime) in enumerate(infos)
                if t in session.channels or t in session.udp_targets
            ]
            headers["RTP-Info"] = format_rtp_info(entries)
        self.respond(200, headers)
        # The cached GOP goes out right behind the response, so the client decodes at once.
        now = self.server.clock()
        for frame in gop:
            session.deliver(frame, now)

    def pause(self) -> None:
        session = self._session()
        session.pause()
        self.respond(200)

    def teardown(self) -> None:
        session = self._session()
        self.server.end_session(session)
        log.info(
            "client session closed",
            extra={"stream": session.source.key, "session": session.id, "reason": "teardown"},
        )
        self.respond(200)

    def get_parameter(self) -> None:
        if self.request.headers.get("Session") is not None:
            self._session()
        self.respond(200)

    def set_parameter(self) -> None:
        if self.request.headers.get("Session") is not None:
            self._session()
        if self.request.body:
            self.respond(451)
            return
        self.respond(200)


def session_description(source: StreamSource, local_addr: str) -> bytes:
    """SDP for the source's current tracks; the session id is stable per stream."""
    # Media the server sends is "recvonly" from the client's side, as cameras and ONVIF
    # describe it ("sendonly" marks an ONVIF audio back channel).
    tracks = [SdpTrack.for_packetizer(t.packetizer, f"trackID={t.index}") for t in source.tracks]
    session_id = zlib.crc32(source.key.encode())
    return session_sdp(tracks, source.key, local_addr, session_id).encode()
