"""DNS sinkhole for the camera network: answers every query itself and never forwards one.

:class:`SinkholeResolver` is the sans-IO core: ``handle(query, client, now)`` returns the
reply bytes (NXDOMAIN for every name, or the site's configured local answer for names in
``camera_network.dns_local``) and records the attempt per client (camera), name and type,
classified by the shipped vendor domain list. :class:`DnsSinkholeServer` is the thin asyncio
layer serving it over UDP and TCP (RFC 1035 section 4.2.2 length-prefixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from dnslib import AAAA, CLASS, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSQuestion, DNSRecord

from gateway.cancellation import wait_for
from gateway.egress.domains import UNCLASSIFIED, DomainList, shipped

log = logging.getLogger("gateway.egress.dns")

# A query carries one question (at most 255 bytes of name) plus perhaps an EDNS OPT record;
# anything larger than the EDNS "flag day" size is not a query a camera needs answered.
MAX_QUERY_SIZE = 1232
HEADER = struct.Struct("!HHHHHH")
LOCAL_TTL = 300
# Distinct (client, name, type) attempts kept between two flushes to the store; beyond this
# new keys are only counted in ``overflow`` so a query flood cannot grow memory.
MAX_PENDING = 4096
OPCODE_QUERY = 0


@dataclass
class DnsAttempt:
    client: str
    camera: str | None
    name: str
    qtype: str
    category: str
    count: int
    first_seen: float
    last_seen: float


def normalize_ip(address: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes IPv4; scope ids dropped."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _error_header(query: bytes, rcode: int) -> bytes:
    """A header-only reply for a query too broken (or too large) to echo its question."""
    ident, flags = struct.unpack_from("!HH", query)
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    reply_flags = 0x8000 | (opcode << 11) | rd | 0x0080 | rcode  # QR, opcode, RD, RA, rcode
    return HEADER.pack(ident, reply_flags, 0, 0, 0, 0)


class SinkholeResolver:
    """Sans-IO sinkhole: bytes in, bytes out; attempts recorded in memory until taken."""

    def __init__(
        self,
        *,
        local: Mapping[str, str] | None = None,
        cameras: Mapping[str, str] | None = None,
        domains: DomainList | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.local: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self.cameras: dict[str, str] = {}
        self.update(local=local or {}, cameras=cameras or {})
        self.domains = domains or shipped()
        self.max_pending = max_pending
        self.pending: dict[tuple[str, str, str], DnsAttempt] = {}
        self.overflow = 0
        self.malformed = 0

    def update(self, *, local: Mapping[str, str], cameras: Mapping[str, str]) -> None:
        """Replace the local answers and the address -> camera map (configuration reload)."""
        self.local = {k.lower().rstrip("."): ipaddress.ip_address(v) for k, v in local.items()}
        self.cameras = {normalize_ip(ip): name for ip, name in cameras.items()}

    def handle(self, query: bytes, client: str, now: float) -> bytes | None:
        """The reply to ``query`` from ``client`` at time ``now``, or None to stay silent.

        Silence is for packets that cannot be a query (shorter than a header, or a response:
        answering those could start a loop between two resolvers).
        """
        if len(query) < HEADER.size:
            self.malformed += 1
            return None
        flags = struct.unpack_from("!H", query, 2)[0]
        if flags & 0x8000:
            self.malformed += 1
            return None
        if len(query) > MAX_QUERY_SIZE:
            self.malformed += 1
            return _error_header(query, RCODE.FORMERR)
        try:
            request = DNSRecord.parse(query)
        except DNSError:
            self.malformed += 1
            return _error_header(query, RCODE.FORMERR)
        except Exception:  # dnslib raises assorted errors on hostile input; all mean FORMERR
            self.malformed += 1
            return _error_header(query, RCODE.FORMERR)
        if request.header.opcode != OPCODE_QUERY:
            return _error_header(query, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return _error_header(query, RCODE.FORMERR)
        question: DNSQuestion = request.questions[0]
        name = str(question.qname).lower().rstrip(".") or "."
        qtype = _type_name(question.qtype)
        self._record(client, name, qtype, now)

        header = DNSHeader(id=request.header.id, qr=1, ra=1, rd=request.header.rd)
        reply = DNSRecord(header, q=question)
        if question.qclass != CLASS.IN:
            header.rcode = RCODE.REFUSED
        elif name in self.local:
            header.aa = 1
            address = self.local[name]
            if isinstance(address, ipaddress.IPv4Address) and question.qtype in (
                QTYPE.A,
                QTYPE.ANY,
            ):
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(str(address)), ttl=LOCAL_TTL))
            elif isinstance(address, ipaddress.IPv6Address) and question.qtype in (
                QTYPE.AAAA,
                QTYPE.ANY,
            ):
                reply.add_answer(
                    RR(question.qname, QTYPE.AAAA, rdata=AAAA(str(address)), ttl=LOCAL_TTL)
                )
            # Other types of a local name: NOERROR with no answer (NODATA).
        else:
            header.rcode = RCODE.NXDOMAIN
        return bytes(reply.pack())

    def _record(self, client: str, name: str, qtype: str, now: float) -> None:
        key = (client, name, qtype)
        attempt = self.pending.get(key)
        if attempt is not None:
            attempt.count += 1
            attempt.last_seen = now
            return
        if len(self.pending) >= self.max_pending:
            self.overflow += 1
            return
        camera = self.cameras.get(client)
        category = UNCLASSIFIED if name in self.local else self.domains.category_of(name)
        self.pending[key] = DnsAttempt(client, camera, name, qtype, category, 1, now, now)
        log.info(
            "camera DNS query answered by the sinkhole",
            extra={
                "camera": camera or "unknown",
                "client": client,
                "qname": name,
                "qtype": qtype,
                "category": category,
                "ratelimit": True,
            },
        )

    def take_pending(self) -> list[DnsAttempt]:
        """The attempts recorded since the last call (for the store), clearing them."""
        attempts = list(self.pending.values())
        self.pending.clear()
        return attempts


def _type_name(qtype: int) -> str:
    try:
        return str(QTYPE[qtype])
    except Exception:  # dnslib's Bimap raises its own error for unknown codes
        return f"TYPE{qtype}"


# --------------------------------------------------------------------------- asyncio layer

TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CLIENTS = 64


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: SinkholeResolver, clock: Callable[[], float]) -> None:
        self.resolver = resolver
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a DatagramTransport in all but its declared bases.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.resolver.handle(data, normalize_ip(str(addr[0])), self.clock())
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to vanished clients: nothing to do but note it.
        log.debug("dns sinkhole udp error", extra={"error": str(exc)})


class DnsSinkholeServer:
    """Serves a :class:`SinkholeResolver` on one address over UDP and TCP."""

    def __init__(self, resolver: SinkholeResolver, *, clock: Callable[[], float] = time.time):
        self.resolver = resolver
        self.clock = clock
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, host: str, port: int = 53) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self.resolver, self.clock), local_addr=(host, port)
        )
        self._udp = transport
        # With port 0 (tests) TCP takes the port the kernel gave UDP.
        self.port = transport.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, host, self.port)
        except OSError:
            transport.close()
            raise

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tcp_clients.add(writer)
        peer = writer.get_extra_info("peername")
        client = normalize_ip(str(peer[0]))
        try:
            while True:
                prefix = await wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", prefix)
                if length > MAX_QUERY_SIZE:
                    # Answer from the header alone, then drop the connection: reading the
                    # rest would let a client make us buffer up to 64 KiB per connection.
                    head = await wait_for(reader.readexactly(HEADER.size), 2.0)
                    if not head[2] & 0x80:
                        refusal = _error_header(head, RCODE.FORMERR)
                        writer.write(struct.pack("!H", len(refusal)) + refusal)
                        await writer.drain()
                    break
                query = await wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                reply = self.resolver.handle(query, client, self.clock())
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_clients.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_clients):
                writer.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
