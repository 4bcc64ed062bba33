"""A frame as a stream sends it to its clients, and what those clients offer the stream.

The media hub builds :class:`Frame` objects; the RTSP server's sessions are the
:class:`Subscriber` they are delivered to. Both sides import this, neither the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.rtp.interleaved import frame_offsets


class Frame:
    """One access unit as RTP, laid out for the default interleaved channel (2 x track)."""

    __slots__ = (
        "_by_channel",
        "_udp",
        "arrival",
        "blob",
        "first_seq",
        "keyframe",
        "packet_count",
        "size",
        "timestamp",
        "track",
    )

    def __init__(
        self,
        track: int,
        keyframe: bool,
        timestamp: int,
        first_seq: int,
        blob: bytes | bytearray,
        packet_count: int,
        arrival: float,
    ) -> None:
        self.track = track
        self.keyframe = keyframe
        self.timestamp = timestamp
        self.first_seq = first_seq
        self.blob = blob
        self.packet_count = packet_count
        self.size = len(blob)
        self.arrival = arrival
        self._udp: list[memoryview] | None = None
        self._by_channel: dict[int, bytes] | None = None

    def interleaved(self, channel: int) -> bytes | bytearray:
        """The frame framed for ``channel``; built at most once per channel layout."""
        if channel == self.track * 2:
            return self.blob
        if self._by_channel is None:
            self._by_channel = {}
        blob = self._by_channel.get(channel)
        if blob is None:
            out = bytearray(self.blob)
            for pos in self._packet_offsets():
                out[pos + 1] = channel
            blob = self._by_channel[channel] = bytes(out)
        return blob

    def packets(self) -> list[memoryview]:
        """RTP packets without interleaving prefixes, for UDP (zero-copy slices)."""
        if self._udp is None:
            view = memoryview(self.blob)
            blob = self.blob
            self._udp = [
                view[pos + 4 : pos + 4 + ((blob[pos + 2] << 8) | blob[pos + 3])]
                for pos in self._packet_offsets()
            ]
        return self._udp

    def _packet_offsets(self) -> list[int]:
        """Where each packet's "$" prefix starts in ``blob``."""
        return frame_offsets(self.blob, self.packet_count)


class Subscriber(Protocol):
    """What a stream source needs of a client session (the RTSP server implements it)."""

    def deliver(self, frame: Frame, now: float) -> None: ...

    def deliver_many(self, frames: Sequence[Frame], now: float) -> None:
        """Several frames that arrived together, in order (one write where possible)."""

    def deliver_rtcp(self, track: int, packet: bytes) -> None: ...

    def resync(self) -> None:
        """Deliver nothing more until the next video keyframe (after an upstream gap)."""

    def close_for(self, reason: str) -> None: ...
