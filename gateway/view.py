"""What the services (ONVIF, admin, policy, egress) see of the running gateway.

:class:`GatewayView` is the typed seam between :mod:`gateway.runtime`, which implements it,
and the services it starts, which are given one; :class:`StreamStatus` is one stream's
state as ingested.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Config
from gateway.limits import Refusals
from gateway.media.hub import StreamHub
from gateway.rtsp.server import RtspServer
from gateway.tls import ServerTLS


@dataclass(frozen=True)
class StreamStatus:
    """What one stream carries as ingested (not as configured), and how it is doing."""

    camera: str
    stream: str
    path: str
    state: str  # a HubState value: idle, connecting, live, down
    last_error: str
    down_since: float | None  # Unix time the stream went down (state down), else None
    on_demand: bool
    codec: str | None
    profile: str | None
    width: int
    height: int
    fps: float
    bitrate: int  # bits per second
    gop_frames: int
    gop_seconds: float
    audio_codec: str | None
    audio_rate: int
    audio_channels: int
    clients: int
    upstream_sessions: int
    reconnects: int
    frames_in: int
    bytes_in: int
    dropped_frames: int
    slow_disconnects: int

    @property
    def should_stream(self) -> bool:
        """See :func:`should_stream`."""
        return should_stream(self.state, on_demand=self.on_demand)


# The states a stream is reported in: a hub's (gateway.media.hub.HubState) and, for a
# camera with ``enabled = false``, ``disabled``.
STREAM_STATES = ("live", "idle", "connecting", "down", "disabled")


def should_stream(state: str, *, on_demand: bool) -> bool:
    """Whether a stream in ``state`` is expected to deliver frames now: every stream of an
    enabled camera, except an on-demand one nobody is watching (idle). Alerts, the
    ``stream_up`` metric and ``onvif-gateway status`` judge a stream by this."""
    if state == "disabled":
        return False
    return not (on_demand and state == "idle")


ReloadHook = Callable[[Config], Awaitable[None]]


class GatewayView(Protocol):
    """The running gateway, as a service uses it."""

    @property
    def config(self) -> Config:
        """This process's configuration (its own cameras when sharded)."""
        ...

    @property
    def site_config(self) -> Config:
        """The whole site's configuration (site-wide services)."""
        ...

    @property
    def worker(self) -> tuple[int, int]:
        """This process's index among the site's worker processes, and their count
        ((0, 1) for a single process; gateway.workers)."""
        ...

    @property
    def rtsp(self) -> RtspServer | None: ...

    @property
    def vms_tls(self) -> ServerTLS | None:
        """The VMS-side certificate (RTSPS, ONVIF over HTTPS); None when TLS is off."""
        ...

    @property
    def refusals(self) -> Refusals:
        """What every listener of this process refused (docs/security.md)."""
        ...

    @property
    def reload_hooks(self) -> list[ReloadHook]:
        """Called with this process's new config after a reload."""
        ...

    @property
    def site_reload_hooks(self) -> list[ReloadHook]:
        """Called with the site's new config after a reload."""
        ...

    def hub(self, camera: str, stream: str) -> StreamHub | None: ...

    def stream_status(self, camera: str, stream: str) -> StreamStatus | None: ...

    async def snapshot(
        self, camera: str, stream: str = "main", max_width: int | None = None
    ) -> bytes:
        """A JPEG of the stream's latest keyframe; LookupError when there is none yet."""
        ...

    def reconnect(self, camera: str) -> bool:
        """Restart the camera's upstream sessions; False for an unknown camera."""
        ...
