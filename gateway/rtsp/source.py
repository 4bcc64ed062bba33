"""What the RTSP server serves: a small protocol any stream source implements.

The media hub is the gateway's source and the simulator's; the server knows only this, so it
imports nothing from :mod:`gateway.media`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.codecs.base import Packetizer
from gateway.rtp.frame import Frame, Subscriber


class SourceTrack(Protocol):
    """One RTP stream of a source, as SETUP and the SDP describe it."""

    @property
    def index(self) -> int: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def is_video(self) -> bool: ...

    @property
    def packetizer(self) -> Packetizer: ...


class SourceStats(Protocol):
    """The counters the server adds to as it sends (shown by the admin API and metrics)."""

    bytes_out: int
    frames_out: int
    dropped_frames: int
    slow_disconnects: int


class StreamSource(Protocol):
    """One stream, served by path: its tracks, its clients, and what a new client starts with."""

    @property
    def key(self) -> str: ...

    @property
    def tracks(self) -> Sequence[SourceTrack]: ...

    @property
    def stats(self) -> SourceStats: ...

    async def wait_ready(self, timeout: float) -> bool:
        """True once the tracks are known, False if ``timeout`` seconds pass first."""
        ...

    def subscribe(self, sub: Subscriber) -> list[Frame]:
        """Start delivering to ``sub``; returns the cached GOP to send it first."""
        ...

    def unsubscribe(self, sub: Subscriber) -> None: ...

    def rtp_info(self, gop: Sequence[Frame]) -> list[tuple[int, int]]:
        """(seq, rtptime) per track of the first packet the client will receive."""
        ...
