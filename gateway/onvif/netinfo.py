"""Facts about the gateway's own network interfaces (Linux), for GetNetworkInterfaces,
GetNetworkDefaultGateway, checking push consumers against the VMS-side network, and binding
WS-Discovery to the interface that holds the VMS-side address. (The host's resolvers are
deliberately not read: GetDNS must not reveal them.)"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFMTU = 0x8921


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    address: str
    prefix_length: int
    mtu: int


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))


def interface_for_address(address: str) -> Interface | None:
    """The interface holding ``address`` (IPv4 via ioctl, IPv6 via /proc), or None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 6:
        return _ipv6_interface(ip)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            try:
                addr = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
                mask = socket.inet_ntoa(_ioctl(sock, _SIOCGIFNETMASK, name)[20:24])
                mtu = struct.unpack("i", _ioctl(sock, _SIOCGIFMTU, name)[16:20])[0]
            except OSError:
                continue
            if addr == address:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
                return Interface(name, index, addr, prefix, mtu)
    return None


def _ipv6_interface(ip: ipaddress.IPv6Address) -> Interface | None:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        if ipaddress.IPv6Address(int(fields[0], 16)) == ip:
            name = fields[5]
            mtu = 1500
            with contextlib.suppress(OSError, ValueError):
                mtu = int(Path(f"/sys/class/net/{name}/mtu").read_text())
            return Interface(name, int(fields[1], 16), str(ip), int(fields[2], 16), mtu)
    return None


def default_gateway(interface: str, path: str = "/proc/net/route") -> str | None:
    """The IPv4 default route's next hop through ``interface`` (None if the default route
    leaves by another interface, or there is none)."""
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] != interface:
            continue
        destination, gateway, mask = fields[1], fields[2], fields[7]
        if destination == "00000000" and mask == "00000000" and gateway != "00000000":
            try:
                return socket.inet_ntoa(struct.pack("<I", int(gateway, 16)))
            except (ValueError, struct.error):
                return None
    return None
