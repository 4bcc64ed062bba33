"""The ``[camera_network]`` table: the camera-side interface the egress rules isolate, read
and checked into a :class:`CameraNetworkConfig`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gateway.config_reader import _ip, _Reader


@dataclass(frozen=True)
class CameraNetworkConfig:
    interface: str
    address: str
    subnets: tuple[str, ...]
    dns_sinkhole: bool = True
    ntp_server: bool = True
    allow: tuple[str, ...] = ()
    dns_local: dict[str, str] = field(default_factory=dict)


def _camera_network(r: _Reader) -> CameraNetworkConfig:
    subnets = r.get("subnets", list, ...)
    nets: list[str] = []
    for j, s in enumerate(subnets or []):
        try:
            nets.append(str(ipaddress.ip_network(s, strict=False)))
        except (ValueError, TypeError):
            r.error(f"subnets[{j}]", f"{s!r} is not a network such as 192.168.50.0/24")
    allow = r.get("allow", list, [])
    allowed: list[str] = []
    for j, s in enumerate(allow or []):
        try:
            allowed.append(str(ipaddress.ip_network(s, strict=False)))
        except (ValueError, TypeError):
            r.error(f"allow[{j}]", f"{s!r} is not an address or network")
    local = r.get("dns_local", dict, {})
    for k, v in (local or {}).items():
        if not isinstance(v, str) or _ip(v):
            r.error(f"dns_local.{k}", "must map a name to an IP address string")
    return CameraNetworkConfig(
        interface=r.get("interface", str, ...) or "",
        address=r.get("address", str, ..., _ip) or "",
        subnets=tuple(nets),
        dns_sinkhole=r.get("dns_sinkhole", bool, True),
        ntp_server=r.get("ntp_server", bool, True),
        allow=tuple(allowed),
        dns_local=dict(local or {}),
    )
