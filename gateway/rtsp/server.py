"""Asyncio RTSP server: a thin layer over the sans-IO parser, the auth core and the stream
sources (:class:`~gateway.rtsp.source.StreamSource`, the media hubs in the gateway).

One :class:`RtspConnection` (an ``asyncio.Protocol``) per TCP connection; one
:class:`ServerSession` per RTSP session, which is the subscriber the source's fan-out writes
to.
UDP clients share one RTP and one RTCP socket of the server; they are told those ports
in ``server_port`` and distinguished by their own addresses.

Sessions end with TEARDOWN, with their control connection, or (UDP) after
``session_timeout`` seconds without a request or an RTCP report.

RTSPS (:meth:`RtspServer.start_tls`) is the same server on a TLS listener: requests,
Digest auth and sessions as on plain RTSP, but media only interleaved in the TLS
connection; a SETUP asking for RTP over UDP is refused with 461, as those packets would
travel unprotected. TLS connections are never handed to another worker process.

This module holds the listeners (accept, limits, the shared UDP sockets, the reaper);
:mod:`gateway.rtsp.server_connection` the per-connection protocol and request handling,
:mod:`gateway.rtsp.server_session` the client sessions and their media transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from gateway.digest import DigestAuthenticator
from gateway.limits import (
    ConnectionCounter,
    FailureThrottle,
    ListenerCaps,
    Refusals,
    TokenBucket,
)
from gateway.rtsp.server_connection import RtspConnection
from gateway.rtsp.server_session import ServerSession
from gateway.rtsp.source import StreamSource

log = logging.getLogger("gateway.rtsp")

# Seconds a client has to complete the TLS handshake on the RTSPS listener.
TLS_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerLimits:
    session_timeout: int = 60
    send_budget: int = 4 * 1024 * 1024
    stall_timeout: float = 10.0
    describe_timeout: float = 10.0
    # A request's header section and body must arrive within this many seconds.
    request_timeout: float = 5.0
    # A connection with no playing session and no request for this long is closed (one with
    # a session set up but not playing gets session_timeout, as its Session header says).
    idle_timeout: float = 30.0
    # A connection whose responses stay unread this long is closed.
    write_timeout: float = 10.0
    # Reading stops while more than this many bytes of responses wait to be sent (a
    # connection without a playing session: a playing one is governed by send_budget).
    output_budget: int = 64 * 1024
    # Requests before the connection has authenticated: per connection, and for the server.
    preauth_rate: float = 10.0
    preauth_burst: int = 20
    global_preauth_rate: float = 1000.0
    # Connections held by the server, and by one source address.
    max_connections: int = 4096
    connections_per_address: int = 2048
    # Failed logins: a delay growing per source address (after the first), up to
    # auth_delay_max seconds; the connection closes after auth_failures_to_close of them.
    auth_delay_base: float = 0.5
    auth_delay_max: float = 8.0
    auth_failures_to_close: int = 3
    # UDP ports (first, last) for the shared RTP/RTCP pair; None: the ephemeral range.
    rtp_ports: tuple[int, int] | None = None


@dataclass(frozen=True)
class ClientInfo:
    """One client session as the admin API shows it."""

    source: StreamSource
    session: str
    peer: str
    transport: str  # "tcp" or "udp"
    playing: bool
    connected_seconds: float
    frames_sent: int
    bytes_sent: int
    dropped_frames: int


# With several worker processes: request path -> a function that passes the connection's
# socket and the bytes read so far to the worker owning the path (None when this one does).
# It runs in a thread. See gateway.workers.
HandOff = Callable[[str], Callable[[socket.socket, bytes], None] | None]


class RtspServer:
    """Serves stream sources by path. ``resolve(path)`` maps a request path to one (or None)."""

    def __init__(
        self,
        resolve: Callable[[str], StreamSource | None],
        *,
        authenticator: DigestAuthenticator | None = None,
        server_name: str = "onvif-gateway",
        limits: ServerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        handoff: HandOff | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.resolve = resolve
        self.handoff = handoff
        self.authenticator = authenticator
        self.server_name = server_name
        self.clock = clock
        self.refusals = refusals if refusals is not None else Refusals()
        self.counter = ConnectionCounter(ListenerCaps(1, 1), "rtsp", self.refusals)
        self.auth_throttle = FailureThrottle()
        # Per source address: when its last delayed failed-login answer goes out.
        self.auth_answers: OrderedDict[str, float] = OrderedDict()
        self.preauth = TokenBucket(1.0, 1.0, clock())
        self.limits = limits or ServerLimits()
        self.sessions: dict[str, ServerSession] = {}
        self.connections: set[RtspConnection] = set()
        self.udp_rtp: asyncio.DatagramTransport | None = None
        self.udp_rtcp: asyncio.DatagramTransport | None = None
        self.udp_ports: tuple[int, int] | None = None
        self._server: asyncio.base_events.Server | None = None
        # Listeners on more addresses (per-camera addresses), same port: see listen().
        self._extra_servers: dict[str, asyncio.base_events.Server] = {}
        self._reuse_port = False
        self._tls_server: asyncio.base_events.Server | None = None
        # RTSPS on the per-camera addresses too, at the same TLS port.
        self._tls_context: ssl.SSLContext | None = None
        self._extra_tls_servers: dict[str, asyncio.base_events.Server] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self.host = ""
        self.port = 0
        self.tls_port: int | None = None

    @property
    def limits(self) -> ServerLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: ServerLimits) -> None:
        # A reload may change them; connections already counted stay counted.
        self._limits = limits
        self.counter.caps = ListenerCaps(limits.max_connections, limits.connections_per_address)
        self.auth_throttle.free = 1
        self.auth_throttle.base = limits.auth_delay_base
        self.auth_throttle.maximum = limits.auth_delay_max
        self.preauth.rate = limits.global_preauth_rate
        self.preauth.burst = limits.global_preauth_rate

    def refuse(self, reason: str, peer: str, **fields: object) -> None:
        """Count a refusal and log it (one line per source address and interval)."""
        self.refusals.log("rtsp", reason, peer, **fields)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._reuse_port = reuse_port
        self._server = await self._listen(host, port)
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self._schedule_reaper()

    async def _listen(self, host: str, port: int) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: RtspConnection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )

    async def listen(self, host: str) -> None:
        """Also accept on ``host`` at the started port (a camera's own address), once.
        Raises ``OSError`` if it cannot be bound."""
        if host not in self._extra_servers:
            self._extra_servers[host] = await self._listen(host, self.port)
        tls_port = self.tls_port
        if tls_port is not None and host not in self._extra_tls_servers:
            self._extra_tls_servers[host] = await self._listen_tls(host, tls_port)

    @property
    def addresses(self) -> list[str]:
        """Every address listened on: the started one first."""
        return [self.host, *self._extra_servers]

    async def start_tls(self, host: str, port: int, context: ssl.SSLContext) -> None:
        """Serve RTSPS on ``host``:``port`` too, and on every address :meth:`listen` added,
        with ``context`` (whose certificate chain may be reloaded while serving);
        :attr:`tls_port` is the port bound."""
        self._tls_context = context
        self._tls_server = await self._listen_tls(host, port)
        self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        for extra in self._extra_servers:
            if extra not in self._extra_tls_servers:
                self._extra_tls_servers[extra] = await self._listen_tls(extra, self.tls_port)

    async def _listen_tls(self, host: str, port: int) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: RtspConnection(self, secure=True),
            host,
            port,
            ssl=self._tls_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            reuse_address=True,
            backlog=1024,
        )

    async def adopt(self, sock: socket.socket, data: bytes) -> None:
        """Serve a connection another worker accepted, starting with the bytes it read."""
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.connect_accepted_socket(lambda: RtspConnection(self), sock)
        except OSError as exc:
            log.warning("cannot adopt handed-over connection", extra={"error": str(exc)})
            sock.close()
            return
        connection = cast(RtspConnection, protocol)
        connection.handoff_allowed = False  # never passed on twice
        connection.data_received(data)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        listeners = [
            s
            for s in (
                self._server,
                *self._extra_servers.values(),
                self._tls_server,
                *self._extra_tls_servers.values(),
            )
            if s
        ]
        for listener in listeners:
            listener.close()
        for conn in list(self.connections):
            conn.close()
        for transport in (self.udp_rtp, self.udp_rtcp):
            if transport is not None:
                transport.close()
        for listener in listeners:
            await listener.wait_closed()
        self._extra_servers.clear()
        self._extra_tls_servers.clear()

    async def ensure_udp(self) -> tuple[int, int]:
        """Open the shared RTP/RTCP sockets (an even/odd port pair) on first UDP SETUP:
        the first free pair of ``limits.rtp_ports``, else one from the ephemeral range.
        OSError when there is none."""
        if self.udp_ports is not None:
            return self.udp_ports
        loop = asyncio.get_running_loop()
        for rtp_port in self._rtp_port_candidates():
            try:
                rtp, _ = await loop.create_datagram_endpoint(
                    lambda: _RtcpIn(self), local_addr=(self.host, rtp_port)
                )
            except OSError:
                continue
            try:
                rtcp, _ = await loop.create_datagram_endpoint(
                    lambda: _RtcpIn(self), local_addr=(self.host, rtp_port + 1)
                )
            except OSError:
                rtp.close()
                continue
            self.udp_rtp, self.udp_rtcp = rtp, rtcp
            self.udp_ports = (rtp_port, rtp_port + 1)
            return self.udp_ports
        configured = self.limits.rtp_ports
        where = f" in rtp_ports {configured[0]}-{configured[1]}" if configured else ""
        raise OSError(f"no free UDP port pair for RTP/RTCP{where}")

    def _rtp_port_candidates(self) -> Iterator[int]:
        """Even ports to try for RTP (RTCP on the next one up)."""
        configured = self.limits.rtp_ports
        if configured is not None:
            first, last = configured
            yield from range(first + (first & 1), last, 2)
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((self.host, 0))
                port = int(probe.getsockname()[1]) & ~1
            yield port  # closed first: the pair is bound by the caller

    def clients(self) -> list[ClientInfo]:
        """Every client session, as of now."""
        now = self.clock()
        return [
            ClientInfo(
                source=s.source,
                session=s.id,
                peer=s.conn.peer_text,
                transport="tcp" if s.tcp else "udp",
                playing=s.playing,
                connected_seconds=round(now - s.started, 1),
                frames_sent=s.frames_sent,
                bytes_sent=s.bytes_sent,
                dropped_frames=s.dropped,
            )
            for s in list(self.sessions.values())
        ]

    def end_session(self, session: ServerSession) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        session.source.unsubscribe(session)
        session.playing = False
        session.conn.sessions.discard(session.id)

    def touch_udp(self, addr: tuple[str, int]) -> None:
        now = self.clock()
        for session in self.sessions.values():
            if not session.tcp:
                for rtp, rtcp in session.udp_targets.values():
                    if addr in (rtp, rtcp):
                        session.last_activity = now

    def _schedule_reaper(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(1.0, self.limits.request_timeout / 4))
        self._reaper = loop.call_later(interval, self._reap)

    def _reap(self) -> None:
        now = self.clock()
        timeout = self.limits.session_timeout
        for session in list(self.sessions.values()):
            if not session.tcp and now - session.last_activity > timeout:
                session.close_for("session timed out")
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self._schedule_reaper()


class _RtcpIn(asyncio.DatagramProtocol):
    """Receiver reports from UDP clients keep their sessions alive."""

    def __init__(self, server: RtspServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.touch_udp(addr[:2])

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and such
        log.debug("udp error", extra={"error": str(exc)})
