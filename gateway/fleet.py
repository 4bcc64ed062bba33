"""A site split across several gateways: which cameras this gateway owns (``[fleet]``).

```toml
[fleet]
shards = 3                  # gateways the site's cameras are split across
shard = "from-hostname"     # this one: 0..shards-1, or the trailing -K of $HOSTNAME
identity_secret_file = "/run/secrets/onvif-gateway/identity"   # shared by every shard
```

Every gateway of the fleet reads the same file with every camera of the site and serves only
the cameras whose shard is its own; the others are not ingested, not served over RTSP or
ONVIF, not announced by WS-Discovery, and the policy and egress services never see them.

A camera's shard is chosen by rendezvous (highest random weight) hashing of its name: each
shard k scores the camera with the first 8 bytes of SHA-256 over (k, name) and the highest
score wins. The choice depends on nothing but the name and the shard count, so it is the
same on every gateway, whatever the order of the file; adding or removing a camera moves no
other camera; going from N to N+1 shards moves only the cameras the new shard wins (about
1/(N+1) of them), and going down moves only the removed shard's cameras. (A plain
``hash mod N`` would move about N/(N+1) of all cameras on every resize.) Python's
``hash()`` is salted per process and is never used for this.

The ONVIF device uuid a VMS keys a camera on comes from ``identity_secret`` and the camera's
name when one is given (:func:`device_uuid`), so the camera keeps it on whichever gateway
serves it; without it, each gateway derives uuids from a random secret in its own state
directory and a camera that moves looks like a new device to the VMS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError, Secret, _Reader, onvif_port_of

SECTION = "fleet"
FROM_HOSTNAME = "from-hostname"
MAX_SHARDS = 256
# The shared secret is what keeps device uuids unguessable: no shorter than a random
# 128-bit value written in hex.
MIN_SECRET_LENGTH = 32
_ORDINAL = re.compile(r"-(\d{1,3})$")


@dataclass(frozen=True)
class FleetSettings:
    """The ``[fleet]`` section: this gateway is ``shard`` of ``shards``."""

    shards: int
    shard: int
    # Where ``shard`` came from, for a person: "configured" or "host name web-2".
    source: str
    identity_secret: Secret | None = None

    def owns(self, camera: str) -> bool:
        return shard_of(camera, self.shards) == self.shard


def _score(name: str, shard: int) -> int:
    digest = hashlib.sha256(f"{shard}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shard_of(name: str, shards: int) -> int:
    """The shard (0..shards-1) that serves camera ``name``: rendezvous hashing (see above)."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return max(range(shards), key=lambda k: (_score(name, k), -k))


def shard_from_hostname(hostname: str, shards: int) -> int:
    """The StatefulSet ordinal K of a host name ending in ``-K``; ValueError saying why not."""
    match = _ORDINAL.search(hostname)
    if match is None:
        raise ValueError(
            f"host name {hostname!r} does not end in -K (a StatefulSet pod's ordinal); "
            "set HOSTNAME to the pod name or give shard as a number"
        )
    ordinal = int(match.group(1))
    if ordinal >= shards:
        raise ValueError(
            f"host name {hostname!r} names shard {ordinal}, but shards = {shards} "
            "(replicas and shards must agree)"
        )
    return ordinal


def hostname() -> str:
    """``$HOSTNAME`` (Kubernetes: set it to the pod name; with host networking the system's
    host name is the node's), else the system's host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def parse_fleet(config: Config) -> FleetSettings | None:
    """Validate ``config.sections["fleet"]`` (None without one) or raise ConfigError."""
    if SECTION not in config.sections:
        return None
    raw: Any = config.sections[SECTION]
    if not isinstance(raw, dict):
        raise ConfigError(config.source, [(SECTION, "must be a table ([fleet])")])
    problems: list[tuple[str, str]] = []
    reader = _Reader(raw, SECTION, problems, Path(config.source).resolve().parent)
    shards = reader.get(
        "shards",
        int,
        ...,
        lambda v: None if 1 <= v <= MAX_SHARDS else f"must be 1..{MAX_SHARDS}",
    )
    shard, source = _shard(reader, shards)
    secret = reader.secret("identity_secret", required=False)
    if secret is not None and len(secret.reveal()) < MIN_SECRET_LENGTH:
        reader.error(
            "identity_secret",
            f"is shorter than {MIN_SECRET_LENGTH} characters (e.g. openssl rand -hex 32)",
        )
    reader.finish()
    if problems or shards is None or shard is None:
        raise ConfigError(config.source, problems)
    return FleetSettings(shards, shard, source, secret)


def _shard(reader: _Reader, shards: int | None) -> tuple[int | None, str]:
    value = reader.get("shard", (int, str), ...)
    if value is None or shards is None:
        return None, ""
    if isinstance(value, str):
        if value != FROM_HOSTNAME:
            reader.error("shard", f'must be a number or "{FROM_HOSTNAME}", not {value!r}')
            return None, ""
        name = hostname()
        try:
            return shard_from_hostname(name, shards), f"host name {name}"
        except ValueError as exc:
            reader.error("shard", str(exc))
            return None, ""
    if not 0 <= value < shards:
        reader.error("shard", f"must be 0..{shards - 1} (shards = {shards})")
        return None, ""
    return value, "configured"


def own(config: Config) -> Config:
    """``config`` as this gateway serves it: only the cameras of its shard, each with the
    ONVIF port it has in the whole site's file, and ``site_cameras`` naming every camera.
    A configuration without ``[fleet]``, or one already narrowed, is returned as it is."""
    settings = parse_fleet(config)
    if settings is None or config.site_cameras:
        return config
    cameras = tuple(
        dataclasses.replace(cam, onvif_port=onvif_port_of(config.server, cam, k))
        for k, cam in enumerate(config.cameras)
        if settings.owns(cam.name)
    )
    return dataclasses.replace(
        config, cameras=cameras, site_cameras=tuple(cam.name for cam in config.cameras)
    )


@dataclass(frozen=True)
class Selection:
    """What ``check`` and ``status`` say about this gateway's part of the fleet."""

    settings: FleetSettings
    owned: tuple[str, ...]
    per_shard: tuple[int, ...]  # cameras per shard, 0..shards-1

    @property
    def site_cameras(self) -> int:
        return sum(self.per_shard)

    def summary(self) -> str:
        s = self.settings
        spread = ", ".join(str(n) for n in self.per_shard)
        return (
            f"fleet shard {s.shard} of {s.shards} ({s.source}): owns {len(self.owned)} of "
            f"{self.site_cameras} camera(s); cameras per shard: {spread}"
        )

    @property
    def warning(self) -> str | None:
        """What ``check`` warns about: shards without a shared identity."""
        if self.settings.shards > 1 and self.settings.identity_secret is None:
            return (
                "fleet: no identity_secret: a camera that moves to another shard gets a new "
                "ONVIF device uuid (docs/fleet.md)"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.settings.shard,
            "shards": self.settings.shards,
            "source": self.settings.source,
            "owned": list(self.owned),
            "site_cameras": self.site_cameras,
            "per_shard": list(self.per_shard),
            "shared_identity": self.settings.identity_secret is not None,
        }


def selection(site: Config) -> Selection | None:
    """This gateway's part of the site ``site`` (every camera), None without ``[fleet]``."""
    settings = parse_fleet(site)
    if settings is None:
        return None
    names = site.site_cameras or tuple(cam.name for cam in site.cameras)
    per_shard = [0] * settings.shards
    for name in names:
        per_shard[shard_of(name, settings.shards)] += 1
    owned = tuple(name for name in names if settings.owns(name))
    return Selection(settings, owned, tuple(per_shard))


# --------------------------------------------------------------------------- identities

_UUID_NAMESPACE_LABEL = b"onvif-gateway fleet device uuid:"


def device_uuid(secret: Secret, device: str) -> str:
    """The ``urn:uuid:`` of virtual device ``device`` (a camera's name) in a fleet sharing
    ``secret``: the same on every gateway, unguessable without the secret."""
    digest = hashlib.sha256(_UUID_NAMESPACE_LABEL + secret.reveal().encode()).digest()
    namespace = uuid.UUID(bytes=digest[:16])
    return f"urn:uuid:{uuid.uuid5(namespace, device)}"


def nvr_device_key(settings: FleetSettings) -> str:
    """The NVR device's key: one NVR per gateway, so each shard's is its own device."""
    return f"nvr@shard-{settings.shard}"
