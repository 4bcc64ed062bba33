"""The ``[onvif]`` section: settings of the virtual ONVIF devices beyond ``[server]``.

```toml
[onvif]
auth_window = 300          # seconds a UsernameToken Created / Digest nonce stays valid
discovery = true           # WS-Discovery responder on the VMS-side address
location = "building-a"    # onvif://www.onvif.org/location/<location> scope (default: none)
nvr_port = 8100            # port of the NVR-mode device (default: base port + camera count)
max_subscriptions = 32     # PullPoint subscriptions per device
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.config import Config, ConfigError, covers, onvif_port_of

_SCOPE_VALUE_RE = re.compile(r"^[A-Za-z0-9._~%-]{1,64}$")


@dataclass(frozen=True)
class OnvifSettings:
    auth_window: float = 300.0
    discovery: bool = True
    location: str = ""
    nvr_port: int | None = None
    max_subscriptions: int = 32
    # ``[camera_network] subnets``: push notification consumers may never be there.
    camera_subnets: tuple[str, ...] = ()
    # ``[vms] allow_basic``: HTTP Basic accepted besides Digest (as for RTSP).
    allow_basic: bool = False


def parse_settings(config: Config) -> OnvifSettings:
    """Validate ``config.sections["onvif"]`` or raise :class:`ConfigError` listing problems."""
    table: Any = config.sections.get("onvif", {})
    problems: list[tuple[str, str]] = []
    if not isinstance(table, dict):
        raise ConfigError(config.source, [("onvif", "must be a table ([onvif])")])
    known = {"auth_window", "discovery", "location", "nvr_port", "max_subscriptions"}
    for key in sorted(set(table) - known):
        problems.append((f"onvif.{key}", "unknown key (check the spelling)"))

    window = table.get("auth_window", 300)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 1 <= window <= 86400:
        problems.append(("onvif.auth_window", "must be a number of seconds between 1 and 86400"))
        window = 300
    discovery = table.get("discovery", True)
    if not isinstance(discovery, bool):
        problems.append(("onvif.discovery", "must be true or false"))
        discovery = True
    location = table.get("location", "")
    if not isinstance(location, str) or (location and not _SCOPE_VALUE_RE.match(location)):
        problems.append(
            ("onvif.location", "must be up to 64 letters, digits or . _ ~ % - (a scope value)")
        )
        location = ""
    nvr_port = table.get("nvr_port")
    if nvr_port is not None and (
        isinstance(nvr_port, bool) or not isinstance(nvr_port, int) or not 1 <= nvr_port <= 65535
    ):
        problems.append(("onvif.nvr_port", "must be a port number between 1 and 65535"))
        nvr_port = None
    max_subs = table.get("max_subscriptions", 32)
    if isinstance(max_subs, bool) or not isinstance(max_subs, int) or not 1 <= max_subs <= 1024:
        problems.append(("onvif.max_subscriptions", "must be an integer between 1 and 1024"))
        max_subs = 32
    if config.server.nvr_mode:
        # The NVR device is on [server] bind: only what listens there can clash with it.
        server = config.server
        port = nvr_port_of(config, nvr_port)
        ports = camera_ports(config)
        here = [ports[c.name] for c in config.cameras if not c.bind or covers(server.bind, c.bind)]
        used: set[int | None] = {server.rtsp_port, server.rtsps_port, *here}
        used |= {server.onvif_https_port(p) for p in here}
        if config.admin is not None:
            used.add(config.admin.port)
        https = server.onvif_https_port(port)
        if port in used:
            problems.append(("onvif.nvr_port", f"port {port} is already used"))
        elif https is not None and (https in used or https > 65535):
            problems.append(("onvif.nvr_port", f"its HTTPS port {https} is used or invalid"))
    if problems:
        raise ConfigError(config.source, problems)
    return OnvifSettings(
        auth_window=float(window),
        discovery=discovery,
        location=location,
        nvr_port=nvr_port,
        max_subscriptions=max_subs,
        camera_subnets=tuple(config.camera_network.subnets) if config.camera_network else (),
        allow_basic=config.vms.allow_basic,
    )


def camera_ports(config: Config) -> dict[str, int]:
    """The ONVIF port of each camera (:func:`gateway.config.onvif_port_of`)."""
    return {cam.name: onvif_port_of(config.server, cam, i) for i, cam in enumerate(config.cameras)}


def nvr_port_of(config: Config, nvr_port: int | None) -> int:
    # After the site's last camera: a fleet shard's cameras keep their site-wide ports.
    count = max(len(config.cameras), len(config.site_cameras))
    return nvr_port or (config.server.onvif_base_port + count)
