"""WS-Discovery (2005/04, SOAP 1.2 over UDP 239.255.255.250:3702) for the virtual devices.

The message layer is sans-IO: :meth:`Probe.parse` and :meth:`ProbeMatch.parse_all` take
bytes, :func:`probe_matches`, :func:`hello`, :func:`bye` and :func:`probe_message` return
bytes. :class:`DiscoveryResponder` is the asyncio layer: it joins the multicast group only on
the interface holding the VMS-side address, answers multicast and directed probes, and sends
Hello when started and Bye when closed. :func:`probe` is the client used by ``discover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from gateway.limits import KeyedBuckets, Refusals
from gateway.onvif import netinfo
from gateway.onvif.xml import SOAP12, WSA, WSA2004, Xml, el, parse_xml

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.255.250"
PORT = 3702
WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
DN = "http://www.onvif.org/ver10/network/wsdl"
TDS = "http://www.onvif.org/ver10/device/wsdl"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
DISCOVERY_TO = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
DEVICE_TYPES = ((DN, "NetworkVideoTransmitter"), (TDS, "Device"))
MAX_MESSAGE = 64 * 1024
# WS-Discovery APP_MAX_DELAY: answers to multicast probes are spread over this many seconds.
APP_MAX_DELAY = 0.5


@dataclass(frozen=True)
class Endpoint:
    """One discoverable device."""

    address: str  # urn:uuid:...
    scopes: tuple[str, ...]
    xaddrs: tuple[str, ...]
    metadata_version: int = 1


def _message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _envelope(
    action: str,
    body: Xml,
    *,
    relates_to: str | None,
    to: str,
    seq: tuple[int, int],
    wsa: str = WSA2004,
) -> bytes:
    header = (
        el("a:MessageID", _message_id())
        + (el("a:RelatesTo", relates_to) if relates_to else "")
        + el("a:To", to)
        + el("a:Action", f"{WSD}/{action}")
        + el("d:AppSequence", attrs={"InstanceId": str(seq[0]), "MessageNumber": str(seq[1])})
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<s:Envelope xmlns:s="{SOAP12}" '
        f'xmlns:a="{wsa}" xmlns:d="{WSD}" xmlns:dn="{DN}" xmlns:tds="{TDS}">'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _endpoint_body(ep: Endpoint, *, with_types: bool = True) -> list[Xml]:
    parts = [el("a:EndpointReference", el("a:Address", ep.address))]
    if with_types:
        parts += [
            el("d:Types", "dn:NetworkVideoTransmitter tds:Device"),
            el("d:Scopes", " ".join(ep.scopes)),
            el("d:XAddrs", " ".join(ep.xaddrs)),
        ]
    parts.append(el("d:MetadataVersion", str(ep.metadata_version)))
    return parts


def probe_matches(ep: Endpoint, relates_to: str, seq: tuple[int, int], wsa: str = WSA2004) -> bytes:
    """ProbeMatches in the WS-Addressing version the Probe used (2004/08, the one
    WS-Discovery 2005/04 names, or 2005/08, which some clients send)."""
    body = el("d:ProbeMatches", el("d:ProbeMatch", _endpoint_body(ep)))
    to = ANONYMOUS if wsa == WSA2004 else f"{WSA}/anonymous"
    return _envelope("ProbeMatches", body, relates_to=relates_to, to=to, seq=seq, wsa=wsa)


def probe_matches_many(
    eps: Sequence[Endpoint], relates_to: str, seq: tuple[int, int], wsa: str = WSA2004
) -> bytes:
    """One ProbeMatches holding a ProbeMatch per endpoint (WS-Discovery allows several), the
    answer to a unicast Probe: one datagram out per probe in, whatever the camera count."""
    body = el("d:ProbeMatches", (el("d:ProbeMatch", _endpoint_body(ep)) for ep in eps))
    to = ANONYMOUS if wsa == WSA2004 else f"{WSA}/anonymous"
    return _envelope("ProbeMatches", body, relates_to=relates_to, to=to, seq=seq, wsa=wsa)


def hello(ep: Endpoint, seq: tuple[int, int]) -> bytes:
    return _envelope(
        "Hello", el("d:Hello", _endpoint_body(ep)), relates_to=None, to=DISCOVERY_TO, seq=seq
    )


def bye(ep: Endpoint, seq: tuple[int, int]) -> bytes:
    body = el("d:Bye", el("a:EndpointReference", el("a:Address", ep.address)))
    return _envelope("Bye", body, relates_to=None, to=DISCOVERY_TO, seq=seq)


def probe_message(
    message_id: str | None = None, types: str = "dn:NetworkVideoTransmitter"
) -> bytes:
    body = el("d:Probe", el("d:Types", types) if types else None)
    header = (
        el("a:MessageID", message_id or _message_id())
        + el("a:To", DISCOVERY_TO)
        + el("a:Action", f"{WSD}/Probe")
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<s:Envelope xmlns:s="{SOAP12}" '
        f'xmlns:a="{WSA2004}" xmlns:d="{WSD}" xmlns:dn="{DN}" xmlns:tds="{TDS}">'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _parts(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    qname = etree.QName(root)
    if qname.localname != "Envelope":
        raise ValueError(f"root element {root.tag} is not a SOAP Envelope")
    ns = qname.namespace
    header = root.find(f"{{{ns}}}Header")
    body = root.find(f"{{{ns}}}Body")
    if header is None or body is None:
        raise ValueError("WS-Discovery message without Header or Body")
    return header, body


def _qnames(node: etree._Element | None) -> list[tuple[str, str]]:
    """A QName list (``dp0:NetworkVideoTransmitter tds:Device``) resolved in ``node``'s scope;
    an unknown prefix keeps an empty namespace (matched on the local name alone)."""
    if node is None or not node.text:
        return []
    names = []
    for item in node.text.split()[:32]:
        prefix, _, local = item.rpartition(":")
        names.append((node.nsmap.get(prefix or None, "") or "", local))
    return names


@dataclass(frozen=True)
class Probe:
    message_id: str
    types: tuple[tuple[str, str], ...]
    scopes: tuple[str, ...]
    addressing: str = WSA2004  # the WS-Addressing namespace the Probe used

    @classmethod
    def parse(cls, data: bytes) -> Probe:
        header, body = _parts(parse_xml(data, max_bytes=MAX_MESSAGE))
        probe = body.find(f"{{{WSD}}}Probe")
        if probe is None:
            raise ValueError("not a WS-Discovery Probe")
        for addressing in (WSA2004, WSA):
            message_id = (header.findtext(f"{{{addressing}}}MessageID") or "").strip()
            if message_id:
                break
        else:
            raise ValueError("Probe without MessageID")
        scopes_el = probe.find(f"{{{WSD}}}Scopes")
        scopes = tuple((scopes_el.text or "").split()) if scopes_el is not None else ()
        types = tuple(_qnames(probe.find(f"{{{WSD}}}Types")))
        return cls(message_id, types, scopes, addressing)

    def matches(self, ep: Endpoint) -> bool:
        for ns, local in self.types:
            if not any(local == t_local and ns in ("", t_ns) for t_ns, t_local in DEVICE_TYPES):
                return False
        # RFC 3986 matching rule, simplified: each probe scope is a prefix of one of ours
        # on a segment boundary.
        for scope in self.scopes:
            s = scope.rstrip("/")
            if not any(ours == s or ours.startswith(s + "/") for ours in ep.scopes):
                return False
        return True


@dataclass(frozen=True)
class ProbeMatch:
    address: str
    types: tuple[str, ...]
    scopes: tuple[str, ...]
    xaddrs: tuple[str, ...]
    relates_to: str

    @classmethod
    def parse_all(cls, data: bytes) -> list[ProbeMatch]:
        header, body = _parts(parse_xml(data, max_bytes=MAX_MESSAGE))
        wsa = WSA if header.find(f"{{{WSA}}}RelatesTo") is not None else WSA2004
        relates_to = (header.findtext(f"{{{wsa}}}RelatesTo") or "").strip()
        matches = body.find(f"{{{WSD}}}ProbeMatches")
        if matches is None:
            raise ValueError("not a WS-Discovery ProbeMatches")
        result = []
        for m in matches.findall(f"{{{WSD}}}ProbeMatch"):
            address = (m.findtext(f"{{{wsa}}}EndpointReference/{{{wsa}}}Address") or "").strip()
            result.append(
                cls(
                    address=address,
                    types=tuple((m.findtext(f"{{{WSD}}}Types") or "").split()),
                    scopes=tuple((m.findtext(f"{{{WSD}}}Scopes") or "").split()),
                    xaddrs=tuple((m.findtext(f"{{{WSD}}}XAddrs") or "").split()),
                    relates_to=relates_to,
                )
            )
        return result


# --------------------------------------------------------------------------- asyncio layer


def _multicast_socket(interface_ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Bound to the group, not the wildcard: only probes sent to the group arrive here, and
    # the membership below is on the VMS-side interface alone.
    sock.bind((MULTICAST_GROUP, port))
    mreq = struct.pack("4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton(interface_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


def _unicast_socket(interface_ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.bind((interface_ip, port))
    sock.setblocking(False)
    return sock


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, responder: DiscoveryResponder, multicast: bool) -> None:
        self.responder = responder
        self.multicast = multicast

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.responder.received(data, addr, multicast=self.multicast)


# Replies to one source address: PROBE_RATE probes a second answered, PROBE_BURST at once
# (a VMS probes a few times on a scan); more are dropped (counted as refusals).
PROBE_RATE = 1.0
PROBE_BURST = 5
# ProbeMatch elements in one unicast reply (a few KB); more cameras take more datagrams.
MATCHES_PER_MESSAGE = 16


def allowed_networks(bind: str, allow: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """Who may probe by unicast: ``allow`` (``[server] discovery_allow``), else the subnet of
    ``bind``'s interface (just ``bind`` if that cannot be read)."""
    if allow:
        return [ipaddress.IPv4Network(n, strict=False) for n in allow]
    interface = netinfo.interface_for_address(bind)
    prefix = interface.prefix_length if interface is not None else 32
    return [ipaddress.IPv4Network(f"{bind}/{prefix}", strict=False)]


class DiscoveryResponder:
    """Answers probes for ``devices`` (VirtualDevice objects) on ``bind``'s interface.

    A unicast Probe can come from anywhere with any source address, so it is the means of
    a reflection attack: it is answered only from ``allow`` networks, with one ProbeMatches
    for all the devices. Any probe source gets PROBE_RATE answers a second."""

    def __init__(
        self,
        bind: str,
        devices: Sequence[object],
        port: int = PORT,
        allow: Sequence[str] = (),
        refusals: Refusals | None = None,
    ) -> None:
        self.bind = bind
        self.allow = allowed_networks(bind, allow)
        self.refusals = refusals if refusals is not None else Refusals()
        self._per_source = KeyedBuckets(PROBE_RATE, PROBE_BURST)
        # 3702 on a real network; another port lets two gateways (or a test) share a host.
        self.port = port
        self.devices = list(devices)
        self.instance_id = int(time.time())
        self.message_number = 0
        self._transports: list[asyncio.DatagramTransport] = []
        self._unicast: asyncio.DatagramTransport | None = None
        self._pending: dict[int, asyncio.TimerHandle] = {}
        self._next_key = 0

    @classmethod
    async def start(
        cls,
        bind: str,
        devices: Sequence[object],
        port: int = PORT,
        allow: Sequence[str] = (),
        refusals: Refusals | None = None,
    ) -> DiscoveryResponder:
        address = ipaddress.ip_address(bind)
        if address.version != 4 or address.is_unspecified:
            raise OSError(f"WS-Discovery needs one IPv4 VMS-side address, not {bind}")
        responder = cls(bind, devices, port, allow, refusals)
        loop = asyncio.get_running_loop()
        unicast = _unicast_socket(bind, port)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(responder, multicast=False), sock=unicast
        )
        responder._unicast = transport
        responder._transports.append(transport)
        group = _multicast_socket(bind, port)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(responder, multicast=True), sock=group
        )
        responder._transports.append(transport)
        for ep in responder.endpoints():
            responder._send(hello(ep, responder._seq()), (MULTICAST_GROUP, port))
        return responder

    def endpoints(self) -> list[Endpoint]:
        return [self.endpoint(dev) for dev in self.devices]

    def endpoint(self, dev: object) -> Endpoint:
        from gateway.onvif.device import scopes

        return Endpoint(
            address=dev.uuid,  # type: ignore[attr-defined]
            scopes=tuple(
                scopes(
                    dev.name,  # type: ignore[attr-defined]
                    dev.identity().model,  # type: ignore[attr-defined]
                    dev.location(),  # type: ignore[attr-defined]
                    dev.has_ptz(),  # type: ignore[attr-defined]
                )
            ),
            xaddrs=dev.xaddrs(dev.advertise_host or self.bind),  # type: ignore[attr-defined]
        )

    def add(self, dev: object) -> None:
        """Answer probes for ``dev`` from now on, and announce it with Hello."""
        self.devices.append(dev)
        with contextlib.suppress(OSError):
            self._send(hello(self.endpoint(dev), self._seq()), (MULTICAST_GROUP, self.port))

    def remove(self, dev: object) -> None:
        """Say Bye for ``dev`` and stop answering probes for it."""
        if dev in self.devices:
            with contextlib.suppress(OSError):
                self._send(bye(self.endpoint(dev), self._seq()), (MULTICAST_GROUP, self.port))
            self.devices.remove(dev)

    def _seq(self) -> tuple[int, int]:
        self.message_number += 1
        return self.instance_id, self.message_number

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._unicast is not None:
            self._unicast.sendto(data, addr)

    def received(self, data: bytes, addr: tuple[str, int], *, multicast: bool) -> None:
        source = addr[0]
        if not multicast and not self._allowed(source):
            self.refusals.log("discovery", "not_allowed", source)
            return
        try:
            probe = Probe.parse(data)
        except ValueError:
            return  # not a probe (or hostile): dropped silently, as WS-Discovery asks
        if not self._per_source.take(source, time.monotonic()):
            self.refusals.log("discovery", "rate_limited", source)
            return
        found = [ep for ep in self.endpoints() if probe.matches(ep)]
        if not multicast:
            for first in range(0, len(found), MATCHES_PER_MESSAGE):
                group = found[first : first + MATCHES_PER_MESSAGE]
                self._send(
                    probe_matches_many(group, probe.message_id, self._seq(), probe.addressing),
                    addr,
                )
            return
        # Multicast: one ProbeMatches per device, each after its own random delay (the spec's
        # APP_MAX_DELAY, so a segment's devices do not answer at once).
        loop = asyncio.get_running_loop()
        for ep in found:
            reply = probe_matches(ep, probe.message_id, self._seq(), probe.addressing)
            self._next_key += 1
            key = self._next_key
            delay = random.uniform(0, APP_MAX_DELAY)
            self._pending[key] = loop.call_later(delay, self._send_later, key, reply, addr)

    def _allowed(self, source: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(source)
        except ValueError:
            return False
        return any(ip in network for network in self.allow)

    def _send_later(self, key: int, data: bytes, addr: tuple[str, int]) -> None:
        self._pending.pop(key, None)
        self._send(data, addr)

    async def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        for ep in self.endpoints():
            with contextlib.suppress(OSError):
                self._send(bye(ep, self._seq()), (MULTICAST_GROUP, self.port))
        await asyncio.sleep(0)  # let the Bye datagrams leave before the sockets close
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._unicast = None


class DiscoveryResponders:
    """One :class:`DiscoveryResponder` per address the devices are served on (a device's
    ``bind``, else ``default_bind``): each camera with an address of its own answers probes
    from that address with XAddrs on it, as a camera of its own would. An address where
    discovery cannot start is logged and skipped (devices stay reachable at their XAddrs)."""

    def __init__(
        self,
        default_bind: str,
        port: int = PORT,
        allow: Sequence[str] = (),
        refusals: Refusals | None = None,
    ) -> None:
        self.default_bind = default_bind
        self.port = port
        # [server] discovery_allow and the refusal counters, for every responder.
        self.allow = allow
        self.refusals = refusals
        self.responders: dict[str, DiscoveryResponder] = {}

    def address_of(self, dev: object) -> str:
        return getattr(dev, "bind", "") or self.default_bind

    @classmethod
    async def start(
        cls,
        default_bind: str,
        devices: Sequence[object],
        port: int = PORT,
        allow: Sequence[str] = (),
        refusals: Refusals | None = None,
    ) -> DiscoveryResponders:
        responders = cls(default_bind, port, allow, refusals)
        for dev in devices:
            await responders.add(dev, announce=False)
        for responder in responders.responders.values():
            for ep in responder.endpoints():
                responder._send(hello(ep, responder._seq()), (MULTICAST_GROUP, port))
        return responders

    async def add(self, dev: object, *, announce: bool = True) -> None:
        """Answer probes for ``dev`` from its address, starting a responder there if needed."""
        address = self.address_of(dev)
        responder = self.responders.get(address)
        if responder is None:
            try:
                responder = await DiscoveryResponder.start(
                    address, [], self.port, self.allow, self.refusals
                )
            except OSError as exc:
                log.warning("WS-Discovery not started on %s: %s", address, exc)
                return
            self.responders[address] = responder
        if announce:
            responder.add(dev)
        else:
            responder.devices.append(dev)

    def remove(self, dev: object) -> None:
        responder = self.responders.get(self.address_of(dev))
        if responder is not None:
            responder.remove(dev)

    async def close(self) -> None:
        for responder in self.responders.values():
            await responder.close()
        self.responders.clear()


# --------------------------------------------------------------------------- client


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.matches: dict[str, ProbeMatch] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            found = ProbeMatch.parse_all(data)
        except ValueError:
            return
        for m in found:
            if m.relates_to == self.message_id and m.address:
                self.matches.setdefault(m.address, m)


async def probe(
    address: str,
    *,
    timeout: float = 3.0,
    target: str = MULTICAST_GROUP,
    types: str = "dn:NetworkVideoTransmitter",
    port: int = PORT,
) -> list[ProbeMatch]:
    """Send one Probe from ``address`` (multicast on its interface, or directed to
    ``target``) and collect the ProbeMatches that arrive within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    sock = _unicast_socket(address, 0)
    message_id = _message_id()
    transport, collector = await loop.create_datagram_endpoint(
        lambda: _Collector(message_id), sock=sock
    )
    try:
        transport.sendto(probe_message(message_id, types), (target, port))
        await asyncio.sleep(timeout)
    finally:
        transport.close()
    return list(collector.matches.values())


def interface_address(interface: str) -> str:
    """The IPv4 address of ``interface`` (for ``discover --interface``)."""
    for _index, name in socket.if_nameindex():
        if name == interface:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    raw = netinfo._ioctl(s, 0x8915, name)
                except OSError:
                    break
                return socket.inet_ntoa(raw[20:24])
    raise OSError(f"interface {interface} has no IPv4 address")
