"""SNTPv4 server for the camera network (RFC 4330, RFC 5905), answering from the gateway's clock.

Cameras need correct time (ONVIF WS-Security timestamps, recording time stamps), and once
isolated they can only get it here. The answer is honest about the gateway's own clock:
when the kernel says the clock is not synchronised (``adjtimex`` returns TIME_ERROR), the
reply carries leap indicator 3 (alarm) and stratum 16, which SNTP clients must not use.

:class:`NtpPacket` is the wire type, :func:`ntp_response` the sans-IO server core,
:class:`NtpServer` the asyncio layer and :func:`query` a small SNTP client (simulator, tests,
diagnostics).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import ipaddress
import logging
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from gateway.cancellation import wait_for
from gateway.rtp.packet import ntp_from_unix, unix_from_ntp

log = logging.getLogger("gateway.egress.ntp")

NTP_PORT = 123
PACKET = struct.Struct("!BBbbiI4sQQQQ")  # 48 bytes: RFC 5905 figure 8 without extensions
# Extension fields and a MAC may follow the header; nothing legitimate is larger than this.
MAX_PACKET_SIZE = 1024

MODE_CLIENT = 3
MODE_SERVER = 4
LEAP_NONE = 0
LEAP_INSERT = 1
LEAP_DELETE = 2
LEAP_ALARM = 3
STRATUM_UNSYNCHRONIZED = 16
MAX_STRATUM = 15


def _short_format(seconds: float) -> int:
    """NTP short format (16.16 unsigned), saturating."""
    return min(max(int(seconds * 65536), 0), 0xFFFFFFFF)


@dataclass(frozen=True)
class NtpPacket:
    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int  # 16.16 signed, raw
    root_dispersion: int  # 16.16 unsigned, raw
    reference_id: bytes
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int

    @classmethod
    def parse(cls, data: bytes) -> NtpPacket:
        if len(data) < PACKET.size:
            raise ValueError(f"NTP packet is {len(data)} bytes, shorter than the 48-byte header")
        if len(data) > MAX_PACKET_SIZE:
            raise ValueError(f"NTP packet is {len(data)} bytes, more than {MAX_PACKET_SIZE}")
        (first, stratum, poll, precision, delay, dispersion, refid, ref, org, rec, xmt) = (
            PACKET.unpack_from(data)
        )
        return cls(
            leap=first >> 6,
            version=(first >> 3) & 0x7,
            mode=first & 0x7,
            stratum=stratum,
            poll=poll,
            precision=precision,
            root_delay=delay,
            root_dispersion=dispersion,
            reference_id=refid,
            reference_ts=ref,
            origin_ts=org,
            receive_ts=rec,
            transmit_ts=xmt,
        )

    def __bytes__(self) -> bytes:
        first = (self.leap & 0x3) << 6 | (self.version & 0x7) << 3 | (self.mode & 0x7)
        return PACKET.pack(
            first,
            self.stratum,
            self.poll,
            self.precision,
            self.root_delay,
            self.root_dispersion,
            self.reference_id,
            self.reference_ts,
            self.origin_ts,
            self.receive_ts,
            self.transmit_ts,
        )


@dataclass(frozen=True)
class ClockState:
    """What the gateway knows about its own clock."""

    synchronized: bool
    leap: int = LEAP_NONE  # pending leap second announced by the kernel (1 insert, 2 delete)
    max_error: float = 16.0  # seconds; the kernel's maximum error estimate
    precision: int = -20  # log2 seconds


# struct timex from <sys/timex.h>; only read (modes = 0), which needs no privilege.
class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


TIME_INS, TIME_DEL, TIME_ERROR = 1, 2, 5


def _clock_precision() -> int:
    resolution = time.get_clock_info("time").resolution
    return max(-32, min(0, round(math.log2(resolution)))) if resolution > 0 else -20


def kernel_clock_state() -> ClockState:
    """The kernel's view of clock synchronisation (``adjtimex`` read-only).

    TIME_ERROR means the clock is not synchronised (STA_UNSYNC set, e.g. no NTP daemon
    disciplining it). Where ``adjtimex`` is unavailable the clock counts as unsynchronised.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return ClockState(synchronized=False, precision=_clock_precision())
    if state < 0 or state == TIME_ERROR:
        return ClockState(synchronized=False, precision=_clock_precision())
    leap = {TIME_INS: LEAP_INSERT, TIME_DEL: LEAP_DELETE}.get(state, LEAP_NONE)
    return ClockState(
        synchronized=True,
        leap=leap,
        max_error=timex.maxerror / 1e6,
        precision=_clock_precision(),
    )


def reference_id_for(upstream: str | None) -> bytes:
    """RFC 5905 reference ID of an upstream server: its IPv4 address, or the first four
    octets of the MD5 of its IPv6 address; zero when the upstream is unknown."""
    if not upstream:
        return b"\x00\x00\x00\x00"
    ip = ipaddress.ip_address(upstream)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed
    return hashlib.md5(ip.packed, usedforsecurity=False).digest()[:4]


def ntp_response(
    request: bytes,
    now: float,
    *,
    clock: ClockState,
    received: float | None = None,
    upstream_stratum: int = 2,
    reference_id: bytes = b"\x00\x00\x00\x00",
) -> bytes | None:
    """The server reply to an SNTP client request received at ``received`` and sent at ``now``.

    Returns None for packets a server must not answer (any mode but client: answering
    control or private modes is an amplification vector). Raises ValueError for packets
    that are not NTP.
    """
    packet = NtpPacket.parse(request)
    if packet.mode != MODE_CLIENT:
        return None
    if not 1 <= packet.version <= 4:
        raise ValueError(f"unsupported NTP version {packet.version}")
    if packet.transmit_ts == 0:
        raise ValueError("client transmit timestamp is zero; nothing to echo as origin")
    if not 1 <= upstream_stratum < MAX_STRATUM:
        raise ValueError(f"upstream stratum {upstream_stratum} is not 1..14")
    if clock.synchronized:
        leap, stratum, refid = clock.leap, upstream_stratum + 1, reference_id
        reference_ts = ntp_from_unix(now)
        dispersion = _short_format(clock.max_error)
    else:
        # RFC 5905: stratum 16 and leap 3 say "do not synchronise to me".
        leap, stratum, refid = LEAP_ALARM, STRATUM_UNSYNCHRONIZED, b"INIT"
        reference_ts = 0
        dispersion = _short_format(16.0)
    reply = NtpPacket(
        leap=leap,
        version=packet.version,  # RFC 4330 section 5: copy the client's version
        mode=MODE_SERVER,
        stratum=stratum,
        poll=min(max(packet.poll, 4), 17),
        precision=clock.precision,
        root_delay=0,
        root_dispersion=dispersion,
        reference_id=refid,
        reference_ts=reference_ts,
        origin_ts=packet.transmit_ts,
        receive_ts=ntp_from_unix(now if received is None else received),
        transmit_ts=ntp_from_unix(now),
    )
    return bytes(reply)


# --------------------------------------------------------------------------- asyncio layer


class _NtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: NtpServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a DatagramTransport in all but its declared bases.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        received = self.server.clock()
        try:
            reply = ntp_response(
                data,
                self.server.clock(),
                clock=self.server.clock_state(),
                received=received,
                upstream_stratum=self.server.upstream_stratum,
                reference_id=self.server.reference_id,
            )
        except ValueError as exc:
            self.server.malformed += 1
            log.info(
                "ignored a bad NTP packet",
                extra={"client": str(addr[0]), "error": str(exc), "ratelimit": True},
            )
            return
        if reply is not None and self.transport is not None:
            self.server.answered += 1
            self.transport.sendto(reply, addr)


class NtpServer:
    def __init__(
        self,
        *,
        upstream_stratum: int = 2,
        upstream: str | None = None,
        clock: Callable[[], float] = time.time,
        clock_state: Callable[[], ClockState] = kernel_clock_state,
    ) -> None:
        if not 1 <= upstream_stratum < MAX_STRATUM:
            raise ValueError(f"upstream stratum {upstream_stratum} is not 1..14")
        self.upstream_stratum = upstream_stratum
        self.reference_id = reference_id_for(upstream)
        self.clock = clock
        self.clock_state = clock_state
        self.answered = 0
        self.malformed = 0
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int = NTP_PORT) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _NtpProtocol(self), local_addr=(host, port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class NtpResult:
    server_time: float  # the server's transmit time, Unix seconds
    offset: float  # server clock minus ours (RFC 4330 section 5 formula)
    delay: float
    leap: int
    stratum: int
    version: int
    reference_id: bytes


def client_request(now: float, *, version: int = 4) -> bytes:
    return bytes(
        NtpPacket(
            leap=0,
            version=version,
            mode=MODE_CLIENT,
            stratum=0,
            poll=6,
            precision=0,
            root_delay=0,
            root_dispersion=0,
            reference_id=b"\x00\x00\x00\x00",
            reference_ts=0,
            origin_ts=0,
            receive_ts=0,
            transmit_ts=ntp_from_unix(now),
        )
    )


def parse_server_reply(reply: bytes, request: bytes, arrived: float) -> NtpResult:
    """Check a server reply against our request and compute offset and delay."""
    sent = NtpPacket.parse(request)
    packet = NtpPacket.parse(reply)
    if packet.mode != MODE_SERVER:
        raise ValueError(f"reply mode is {packet.mode}, not 4 (server)")
    if packet.origin_ts != sent.transmit_ts:
        raise ValueError("reply origin timestamp does not echo our transmit timestamp")
    t1 = unix_from_ntp(sent.transmit_ts, near=arrived)
    t2 = unix_from_ntp(packet.receive_ts, near=arrived)
    t3 = unix_from_ntp(packet.transmit_ts, near=arrived)
    t4 = arrived
    return NtpResult(
        server_time=t3,
        offset=((t2 - t1) + (t3 - t4)) / 2,
        delay=(t4 - t1) - (t3 - t2),
        leap=packet.leap,
        stratum=packet.stratum,
        version=packet.version,
        reference_id=packet.reference_id,
    )


async def query(server: str, port: int = NTP_PORT, *, timeout: float = 2.0) -> NtpResult:
    """One SNTP exchange with ``server``; TimeoutError when no valid reply comes in time."""
    loop = asyncio.get_running_loop()
    reply_future: asyncio.Future[tuple[bytes, float]] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            if not reply_future.done():
                reply_future.set_result((data, time.time()))

        def error_received(self, exc: Exception) -> None:
            if not reply_future.done():
                reply_future.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(server, port))
    try:
        request = client_request(time.time())
        transport.sendto(request)
        data, arrived = await wait_for(reply_future, timeout)
        return parse_server_reply(data, request, arrived)
    finally:
        transport.close()
