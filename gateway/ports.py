"""Every port the gateway listens on, as a configuration sets them: what ``onvif-gateway
check`` prints, so firewall rules can be written from the file (docs/operations.md has the
same table in prose)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gateway.config import Config
from gateway.onvif.config import camera_ports, nvr_port_of, parse_settings


@dataclass(frozen=True)
class Listener:
    service: str
    protocol: str  # "TCP", "UDP" or "TCP+UDP"
    address: str
    ports: str  # "8554", "8000-8003", "30000-30999", or "ephemeral"
    side: str  # who connects: "VMS", "admin", "cameras"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def port_list(ports: list[int]) -> str:
    """``[8000, 8001, 8002, 8010]`` -> ``"8000-8002, 8010"``."""
    runs: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], port)
        else:
            runs.append((port, port))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def listeners(config: Config) -> list[Listener]:
    """The sockets a gateway started from ``config`` listens on (a validated config)."""
    server = config.server
    out = [Listener("RTSP", "TCP", server.bind, str(server.rtsp_port), "VMS")]
    cameras_own = config.camera_addresses()  # [[camera]] bind: RTSP listens there too
    for address in cameras_own:
        out.append(Listener("RTSP", "TCP", address, str(server.rtsp_port), "VMS", "camera address"))
    if server.rtsps_port is not None:
        for address in (server.bind, *cameras_own):
            out.append(Listener("RTSPS", "TCP", address, str(server.rtsps_port), "VMS", "TLS"))
    if server.rtp_ports is not None:
        first, last = server.rtp_ports
        rtp = Listener(
            "RTP/RTCP",
            "UDP",
            server.bind,
            f"{first}-{last}",
            "VMS",
            "UDP clients; a port pair per worker",
        )
    else:
        rtp = Listener(
            "RTP/RTCP",
            "UDP",
            server.bind,
            "ephemeral",
            "VMS",
            "set [server] rtp_ports to fix them",
        )
    out.append(rtp)
    enabled = [cam for cam in config.cameras if cam.enabled]
    if enabled:
        by_camera = camera_ports(config)
        at: dict[str, list[int]] = {}
        for cam in enabled:
            at.setdefault(cam.bind or server.bind, []).append(by_camera[cam.name])
        for address, ports in at.items():
            if server.onvif_http:
                out.append(
                    Listener("ONVIF", "TCP", address, port_list(ports), "VMS", "HTTP, per camera")
                )
            https = [p for p in (server.onvif_https_port(q) for q in ports) if p is not None]
            if https:
                out.append(
                    Listener("ONVIF", "TCP", address, port_list(https), "VMS", "HTTPS, per camera")
                )
    settings = parse_settings(config)
    if server.nvr_mode and enabled:
        port = nvr_port_of(config, settings.nvr_port)
        out.append(Listener("ONVIF NVR", "TCP", server.bind, str(port), "VMS", "HTTP"))
    if settings.discovery:
        out.append(
            Listener(
                "WS-Discovery",
                "UDP",
                server.bind,
                str(server.discovery_port),
                "VMS",
                "multicast",
            )
        )
    if config.admin is not None:
        admin = config.admin
        scheme = "HTTPS" if admin.tls else "HTTP"
        out.append(
            Listener(
                "admin API",
                "TCP",
                admin.bind,
                str(admin.port),
                "admin",
                scheme + "; dashboard, /metrics (every worker's cameras)",
            )
        )
    network = config.camera_network
    if network is not None:
        if network.dns_sinkhole:
            out.append(Listener("DNS", "TCP+UDP", network.address, "53", "cameras", "sinkhole"))
        if network.ntp_server:
            out.append(
                Listener("NTP", "UDP", network.address, "123", "cameras", "the gateway's clock")
            )
    return out
