"""Phone-home behaviour of a simulated camera, so egress isolation can be tested end to end.

A real Hikvision or Dahua camera resolves its vendor's cloud, DDNS and NTP names and then
opens TCP and UDP flows to them, pings, and multicasts SSDP. :func:`phone_home` does the
same from wherever it runs (in tests: inside the camera's network namespace): DNS lookups of
the vendor's real telemetry names (from ``gateway/egress/domains.json``) against the
configured resolver, TCP connects, UDP datagrams expecting an answer, ICMP echo, SSDP, and
optionally an SNTP query. Each probe reports what happened, never raises.

:func:`serve_cloud` is the other end: a stand-in "vendor cloud" that accepts TCP and echoes
UDP, recording every contact (in tests it runs in the "internet" namespace).

Command line (one JSON document, or JSON lines for ``cloud``, on stdout)::

    python3 -m gateway.sim.phonehome probe --vendor hikvision --dns 192.168.50.1 \\
        --target tcp:10.77.0.3:8555 --target udp:10.77.0.3:8800 --target icmp:10.77.0.3 \\
        --ntp 192.168.50.1
    python3 -m gateway.sim.phonehome cloud --listen 10.77.0.3 --tcp 8555 --udp 8800
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from dnslib import RCODE, DNSRecord

from gateway.cancellation import cancel_and_wait, wait_for
from gateway.egress import ntp
from gateway.egress.domains import shipped
from gateway.sim.device import SimDevice

SSDP_GROUP = ("239.255.255.250", 1900)
SSDP_SEARCH = (
    b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
    b"MX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
)


@dataclass(frozen=True)
class Target:
    protocol: str  # "tcp" | "udp" | "icmp"
    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``tcp:HOST:PORT``, ``udp:HOST:PORT`` or ``icmp:HOST``; IPv6 hosts in brackets."""
        protocol, sep, rest = text.partition(":")
        if not sep or protocol not in ("tcp", "udp", "icmp"):
            raise ValueError(f"target {text!r}: must start with tcp:, udp: or icmp:")
        if protocol == "icmp":
            host = rest.strip("[]")
            port = None
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"target {text!r}: needs HOST:PORT with a port 1..65535")
            host = host.strip("[]")
            port = int(port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"target {text!r}: {host!r} is not an IP address") from None
        return cls(protocol, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}:{host}" + (f":{self.port}" if self.port is not None else "")


@dataclass
class ProbeResult:
    kind: str  # "dns" | "tcp" | "udp" | "icmp" | "ssdp" | "ntp"
    target: str
    outcome: str  # "answered", "connected", "reply", "timeout", "refused", "error", ...
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.outcome in ("connected", "reply", "answered")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


async def _udp_exchange(
    host: str, port: int, payload: bytes, timeout: float, source: str | None
) -> bytes:
    """Send one datagram and wait for one reply; raises TimeoutError / OSError."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class _Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            if not reply.done():
                reply.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not reply.done():
                reply.set_exception(exc)

    local = (source, 0) if source else None
    transport, _ = await loop.create_datagram_endpoint(
        _Protocol, remote_addr=(host, port), local_addr=local, family=_family(host)
    )
    try:
        transport.sendto(payload)
        return await wait_for(reply, timeout)
    finally:
        transport.close()


async def resolve(
    name: str, qtype: str, server: str, *, port: int = 53, timeout: float, source: str | None
) -> ProbeResult:
    query = DNSRecord.question(name, qtype)
    target = f"{server}:{port} {qtype} {name}"
    try:
        data = await _udp_exchange(server, port, bytes(query.pack()), timeout, source)
        reply = DNSRecord.parse(data)
    except TimeoutError:
        return ProbeResult("dns", target, "timeout")
    except OSError as exc:
        return ProbeResult("dns", target, "error", exc.strerror or str(exc))
    except Exception as exc:  # a garbled reply is a finding, not a crash
        return ProbeResult("dns", target, "error", f"bad reply: {exc}")
    if reply.header.id != query.header.id:
        return ProbeResult("dns", target, "error", "reply id does not match the query")
    answers = [str(rr.rdata) for rr in reply.rr]
    return ProbeResult(
        "dns",
        target,
        "answered",
        str(RCODE.get(reply.header.rcode)),
        {
            "name": name,
            "qtype": qtype,
            "rcode": str(RCODE.get(reply.header.rcode)),
            "answers": answers,
        },
    )


async def tcp_probe(target: Target, *, timeout: float, source: str | None) -> ProbeResult:
    assert target.port is not None
    try:
        _, writer = await wait_for(
            asyncio.open_connection(
                target.host, target.port, local_addr=(source, 0) if source else None
            ),
            timeout,
        )
    except TimeoutError:
        return ProbeResult("tcp", str(target), "timeout")
    except ConnectionRefusedError:
        return ProbeResult("tcp", str(target), "refused")
    except OSError as exc:
        return ProbeResult("tcp", str(target), "error", exc.strerror or str(exc))
    writer.write(b"DEVICE-REGISTER\r\n")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult("tcp", str(target), "connected")


async def udp_probe(target: Target, *, timeout: float, source: str | None) -> ProbeResult:
    assert target.port is not None
    try:
        data = await _udp_exchange(
            target.host, target.port, b"DHGET /probe/p2psrv", timeout, source
        )
    except TimeoutError:
        return ProbeResult("udp", str(target), "timeout")
    except ConnectionRefusedError:
        return ProbeResult("udp", str(target), "refused")
    except OSError as exc:
        return ProbeResult("udp", str(target), "error", exc.strerror or str(exc))
    return ProbeResult("udp", str(target), "reply", f"{len(data)} bytes")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


async def icmp_probe(target: Target, *, timeout: float, source: str | None) -> ProbeResult:
    """One ICMP/ICMPv6 echo request over a raw socket (needs root or CAP_NET_RAW)."""
    v6 = _family(target.host) == socket.AF_INET6
    try:
        sock = socket.socket(
            socket.AF_INET6 if v6 else socket.AF_INET,
            socket.SOCK_RAW,
            socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP,
        )
    except PermissionError:
        return ProbeResult("icmp", str(target), "error", "raw sockets need root or CAP_NET_RAW")
    ident = os.getpid() & 0xFFFF
    echo_request, echo_reply = (128, 129) if v6 else (8, 0)
    payload = b"onvif-gateway-sim"
    header = struct.pack("!BBHHH", echo_request, 0, 0, ident, 1)
    # The kernel fills in the ICMPv6 checksum (it covers the IPv6 pseudo-header).
    checksum = 0 if v6 else _checksum(header + payload)
    packet = struct.pack("!BBHHH", echo_request, 0, checksum, ident, 1) + payload
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        if source:
            sock.bind((source, 0))
        await loop.sock_sendto(sock, packet, (target.host, 0))
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ProbeResult("icmp", str(target), "timeout")
            data, addr = await wait_for(loop.sock_recvfrom(sock, 2048), remaining)
            if not v6:
                data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the IP header
            if len(data) < 8 or ipaddress.ip_address(addr[0]) != ipaddress.ip_address(target.host):
                continue
            kind, _, _, reply_id, _ = struct.unpack_from("!BBHHH", data)
            if kind == echo_reply and reply_id == ident:
                return ProbeResult("icmp", str(target), "reply")
    except TimeoutError:
        return ProbeResult("icmp", str(target), "timeout")
    except OSError as exc:
        return ProbeResult("icmp", str(target), "error", exc.strerror or str(exc))
    finally:
        sock.close()


async def ssdp_probe(*, source: str | None) -> ProbeResult:
    """UPnP port-mapping discovery: one M-SEARCH to the SSDP group (no answer expected)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        if source:
            sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendto(sock, SSDP_SEARCH, SSDP_GROUP)
    except OSError as exc:
        return ProbeResult("ssdp", "239.255.255.250:1900", "error", exc.strerror or str(exc))
    finally:
        sock.close()
    return ProbeResult("ssdp", "239.255.255.250:1900", "sent")


async def ntp_probe(server: str, *, timeout: float) -> ProbeResult:
    try:
        result = await ntp.query(server, timeout=timeout)
    except TimeoutError:
        return ProbeResult("ntp", server, "timeout")
    except (OSError, ValueError) as exc:
        return ProbeResult("ntp", server, "error", str(exc))
    return ProbeResult(
        "ntp",
        server,
        "answered",
        f"stratum {result.stratum}, offset {result.offset:+.3f}s",
        {
            "server_time": result.server_time,
            "offset": result.offset,
            "delay": result.delay,
            "leap": result.leap,
            "stratum": result.stratum,
            "reference_id": result.reference_id.hex(),
        },
    )


# What firmware does once a vendor name resolves: the flow it opens to the address.
FOLLOW_UP_FLOWS: dict[str, tuple[str, int]] = {
    "hik-connect": ("tcp", 8555),  # EZVIZ/Hik-Connect device registration
    "dahua-p2p": ("udp", 8800),  # Easy4IP rendezvous
    "vendor-ddns": ("tcp", 80),  # DDNS update over HTTP
    "vendor-push": ("tcp", 443),
    "ntp": ("udp", 123),
}


async def phone_home(
    device: SimDevice,
    *,
    dns_server: str | None,
    targets: list[Target],
    dns_port: int = 53,
    ntp_server: str | None = None,
    names: list[str] | None = None,
    ssdp: bool = True,
    source: str | None = None,
    timeout: float = 1.0,
) -> list[ProbeResult]:
    """Everything a camera of ``device.vendor`` does to reach its vendor.

    First the lookups of the vendor's telemetry names (``names`` overrides them), the
    explicit ``targets`` (firmware also carries fixed fallback addresses), SSDP and the NTP
    query, all at once; then, like firmware, a flow to every address a lookup returned
    (a sinkhole returns none). ``source`` binds every probe to one local address.
    """
    domains = shipped()
    probes = []
    lookups = names if names is not None else domains.hosts_for(device.vendor)
    if dns_server:
        for name in lookups:
            probes.append(
                resolve(name, "A", dns_server, port=dns_port, timeout=timeout, source=source)
            )
    for target in targets:
        probes.append(_probe(target, timeout=timeout, source=source))
    if ssdp:
        probes.append(ssdp_probe(source=source))
    if ntp_server:
        probes.append(ntp_probe(ntp_server, timeout=timeout))
    results = list(await asyncio.gather(*probes))

    follow_ups = []
    for result in results:
        if result.kind != "dns" or not result.data.get("answers"):
            continue
        category = domains.category_of(str(result.data["name"]))
        flow = FOLLOW_UP_FLOWS.get(category)
        if flow is None:
            continue
        for address in result.data["answers"]:
            with contextlib.suppress(ValueError):
                follow_ups.append(
                    _probe(
                        Target(flow[0], str(ipaddress.ip_address(address)), flow[1]),
                        timeout=timeout,
                        source=source,
                    )
                )
    return results + list(await asyncio.gather(*follow_ups))


def _probe(target: Target, *, timeout: float, source: str | None) -> Any:
    if target.protocol == "tcp":
        return tcp_probe(target, timeout=timeout, source=source)
    if target.protocol == "udp":
        return udp_probe(target, timeout=timeout, source=source)
    return icmp_probe(target, timeout=timeout, source=source)


# --------------------------------------------------------------------------- vendor cloud


@dataclass
class CloudContact:
    protocol: str
    peer: str
    port: int
    at: float


class VendorCloud:
    """Accepts TCP connections and echoes UDP datagrams on the given ports, recording each."""

    def __init__(self, on_contact: Callable[[CloudContact], None] | None = None) -> None:
        self.contacts: list[CloudContact] = []
        self.on_contact = on_contact
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []

    def _record(self, protocol: str, peer: str, port: int) -> None:
        contact = CloudContact(protocol, peer, port, time.time())
        if len(self.contacts) < 10000:  # a stand-in for tests; bounded all the same
            self.contacts.append(contact)
        if self.on_contact is not None:
            self.on_contact(contact)

    async def start(self, host: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for port in tcp_ports:

            async def serve(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int = port
            ) -> None:
                self._record("tcp", str(writer.get_extra_info("peername")[0]), port)
                writer.close()

            self._servers.append(await asyncio.start_server(serve, host, port))
        for port in udp_ports:

            class _Echo(asyncio.DatagramProtocol):
                def __init__(self, cloud: VendorCloud = self, port: int = port) -> None:
                    self.cloud = cloud
                    self.port = port
                    self.transport: asyncio.DatagramTransport | None = None

                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    # The selector transport is a DatagramTransport in all but its declared bases.
                    self.transport = cast(asyncio.DatagramTransport, transport)

                def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                    self.cloud._record("udp", str(addr[0]), self.port)
                    if self.transport is not None:
                        self.transport.sendto(b"ACK " + data[:64], addr)

            transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(host, port))
            self._transports.append(transport)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for transport in self._transports:
            transport.close()


# --------------------------------------------------------------------------- HTTP switch


def install(
    app: Any,
    device: SimDevice,
    *,
    dns_server: str | None = None,
    targets: list[Target] | None = None,
    ntp_server: str | None = None,
    ssdp: bool = False,
    interval: float = 0.0,
) -> None:
    """Give a simulated camera's HTTP app a phone-home switch.

    ``POST /sim/phonehome`` phones home now when ``device.phone_home`` is set and returns the
    probe results; ``GET /sim/phonehome`` shows the last ones. With ``interval`` > 0 the
    camera also phones home on its own every ``interval`` seconds while ``phone_home`` is
    set. Nothing is sent anywhere unless a resolver or targets are given: a simulator on a
    developer's machine must not query real resolvers or multicast onto the LAN.
    """
    from aiohttp import web

    last: list[dict[str, Any]] = []
    configured = bool(dns_server or targets or ntp_server or ssdp)

    async def run_once() -> list[dict[str, Any]]:
        results = await phone_home(
            device,
            dns_server=dns_server,
            targets=list(targets or []),
            ntp_server=ntp_server,
            ssdp=ssdp,
        )
        last[:] = [asdict(r) | {"reached": r.reached} for r in results]
        return last

    async def trigger(request: web.Request) -> web.Response:
        if not device.phone_home or not configured:
            return web.json_response({"phone_home": device.phone_home, "results": []})
        return web.json_response({"phone_home": True, "results": await run_once()})

    async def show(request: web.Request) -> web.Response:
        return web.json_response({"phone_home": device.phone_home, "results": last})

    async def periodic() -> None:
        while True:
            if device.phone_home:
                await run_once()
            await asyncio.sleep(interval)

    tasks: list[asyncio.Task[None]] = []

    async def start_loop(app: Any) -> None:
        if interval > 0 and configured:
            tasks.append(asyncio.create_task(periodic()))

    async def stop_loop(app: Any) -> None:
        await cancel_and_wait(*tasks)
        tasks.clear()

    app.router.add_post("/sim/phonehome", trigger)
    app.router.add_get("/sim/phonehome", show)
    app.on_startup.append(start_loop)
    app.on_cleanup.append(stop_loop)


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m gateway.sim.phonehome")
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe", help="phone home like a camera of a vendor would")
    probe.add_argument("--vendor", choices=("hikvision", "dahua"), default="hikvision")
    probe.add_argument("--name", default="sim-camera")
    probe.add_argument("--dns", help="resolver to send the lookups to")
    probe.add_argument("--dns-port", type=int, default=53)
    probe.add_argument("--lookup", action="append", help="look up this name (default: vendor's)")
    probe.add_argument("--target", action="append", default=[], help="tcp:H:P, udp:H:P, icmp:H")
    probe.add_argument("--ntp", help="SNTP server to query")
    probe.add_argument("--source", help="local address to send from")
    probe.add_argument("--no-ssdp", action="store_true")
    probe.add_argument("--timeout", type=float, default=1.0)
    cloud = sub.add_parser("cloud", help="stand-in vendor cloud: accept TCP, echo UDP")
    cloud.add_argument("--listen", action="append", required=True, help="address (repeatable)")
    cloud.add_argument("--tcp", type=int, action="append", default=[])
    cloud.add_argument("--udp", type=int, action="append", default=[])
    return parser


async def _probe_main(args: argparse.Namespace) -> int:
    targets = [Target.parse(t) for t in args.target]
    device = SimDevice(name=args.name, vendor=args.vendor, username="admin", password="")
    results = await phone_home(
        device,
        dns_server=args.dns,
        dns_port=args.dns_port,
        targets=targets,
        ntp_server=args.ntp,
        names=args.lookup,
        ssdp=not args.no_ssdp,
        source=args.source,
        timeout=args.timeout,
    )
    print(json.dumps([asdict(r) | {"reached": r.reached} for r in results], indent=2))
    return 0


async def _cloud_main(args: argparse.Namespace) -> int:
    def emit(contact: CloudContact) -> None:
        print(json.dumps(asdict(contact)), flush=True)

    cloud = VendorCloud(emit)
    for host in args.listen:
        await cloud.start(host, args.tcp, args.udp)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"ready": True}), flush=True)
    await stop.wait()
    await cloud.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "probe":
            return asyncio.run(_probe_main(args))
        return asyncio.run(_cloud_main(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
