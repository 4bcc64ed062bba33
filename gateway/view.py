"""What the services (ONVIF, admin, policy, egress) see of the running gateway.

:class:`GatewayView` is the typed seam between :mod:`gateway.runtime`, which implements it,
and the services it starts (listed by explicit import in ``runtime.SERVICE_STARTERS``),
which are given one and return a :class:`Service`. What crosses it is typed:
:class:`StreamStatus` is one stream's state as ingested, :class:`StreamSample` one stream's
counters and rates as ``/metrics`` exports them; services turn them into JSON or XML only at
their own edge.
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
from gateway.workers import Shard


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
    # What reads the camera now: "native" or "pyav". With ingest = "auto", why the stream
    # moved to PyAV (a gateway.media.auto_ingest reason), in a line, and since when (Unix
    # time); None/"" while it runs as configured.
    ingest: str = ""
    ingest_fallback: str | None = None
    ingest_fallback_detail: str = ""
    ingest_fallback_since: float | None = None

    @property
    def should_stream(self) -> bool:
        """See :func:`should_stream`."""
        return should_stream(self.state, on_demand=self.on_demand)


@dataclass(frozen=True)
class StreamSample:
    """One stream's counters and rates, read at once (what ``/metrics`` exports per stream).

    Rates are as measured, unrounded; a stream of a disabled camera has state ``disabled``
    and zeros (nothing runs for it).
    """

    camera: str
    stream: str
    state: str  # one of STREAM_STATES
    on_demand: bool
    down_since: float | None  # Unix time the stream went down (state down), else None
    last_frame_age: float | None  # seconds since the camera's last frame; None before one
    bytes_in: int
    frames_in: int
    bytes_out: int
    frames_out: int
    dropped_frames: int
    slow_disconnects: int
    malformed_frames: int
    relayed_frames: int
    repacketized_frames: int
    reconnects: int
    upstream_sessions: int
    byte_rate: float  # bytes per second received, over the last seconds
    fps: float
    gop_seconds: float
    gop_cache_bytes: int  # what the GOP cache holds for new clients

    @property
    def should_stream(self) -> bool:
        """See :func:`should_stream`."""
        return should_stream(self.state, on_demand=self.on_demand)

    @classmethod
    def disabled(cls, camera: str, stream: str, *, on_demand: bool = False) -> StreamSample:
        """A stream of a camera with ``enabled = false``."""
        return cls(
            camera=camera,
            stream=stream,
            state="disabled",
            on_demand=on_demand,
            down_since=None,
            last_frame_age=None,
            bytes_in=0,
            frames_in=0,
            bytes_out=0,
            frames_out=0,
            dropped_frames=0,
            slow_disconnects=0,
            malformed_frames=0,
            relayed_frames=0,
            repacketized_frames=0,
            reconnects=0,
            upstream_sessions=0,
            byte_rate=0.0,
            fps=0.0,
            gop_seconds=0.0,
            gop_cache_bytes=0,
        )


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
# What a reload did, by camera: added, removed, changed, unchanged; ``failed`` names the
# services that could not follow it.
ReloadChanges = dict[str, list[str]]


class Service(Protocol):
    """What a service's ``start(gateway)`` returns: the runtime closes it on stop."""

    async def close(self) -> None: ...


class GatewayView(Protocol):
    """The running gateway, as a service uses it."""

    @property
    def config(self) -> Config:
        """This process's configuration (its own cameras when sharded)."""
        ...

    @property
    def site_config(self) -> Config:
        """The whole site's configuration (site-wide services); for a fleet shard, the
        site's cameras this gateway serves (gateway.fleet)."""
        ...

    @property
    def worker(self) -> tuple[int, int]:
        """This process's index among the site's worker processes, and their count
        ((0, 1) for a single process; gateway.workers)."""
        ...

    @property
    def shard(self) -> Shard | None:
        """This process's share of the site's cameras, None for a single process."""
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
    def ingest_fallbacks(self) -> dict[tuple[str, str, str], int]:
        """Streams moved to PyAV under ingest = "auto", by (camera, stream, reason)."""
        ...

    @property
    def reload_hooks(self) -> list[ReloadHook]:
        """Called with this process's new config after a reload."""
        ...

    @property
    def site_reload_hooks(self) -> list[ReloadHook]:
        """Called with the site's new config after a reload."""
        ...

    def hub(self, camera: str, stream: str) -> StreamHub | None:
        """The stream's hub (its key is ``camera/stream``); None when not running here."""
        ...

    def stream_status(self, camera: str, stream: str) -> StreamStatus | None:
        """The stream as ingested now; None for a stream that is not running here."""
        ...

    def stream_samples(self) -> list[StreamSample]:
        """Every stream of this process's cameras: the running ones, then those of
        disabled cameras."""
        ...

    async def snapshot(
        self, camera: str, stream: str = "main", max_width: int | None = None
    ) -> bytes:
        """A JPEG of the stream's latest keyframe; LookupError when there is none yet."""
        ...

    def reconnect(self, camera: str) -> bool:
        """Restart the camera's upstream sessions; False for an unknown camera."""
        ...

    def validate(self, config: Config) -> None:
        """Raise ConfigError when a section other subsystems own is invalid."""
        ...

    async def reload(self, config: Config) -> ReloadChanges:
        """Apply the site's ``config``; ValueError when it needs a restart instead."""
        ...
