"""A stream's counters (:class:`StreamStats`) and its bitrate (:class:`RateMeter`), as the
hub keeps them for the admin API, metrics and the inbox budget."""

from __future__ import annotations

import collections
from dataclasses import dataclass


class RateMeter:
    """Bytes per second over the last ``window`` seconds, in buckets of ``bucket`` seconds.

    Sans-IO (times are passed in). Adding a frame is a comparison and an addition; a
    per-frame record (what this replaced) cost several times that on the hot path."""

    __slots__ = (
        "_bucket",
        "_bucket_bytes",
        "_bucket_end",
        "_bucket_start",
        "_done",
        "_last",
        "_window",
    )

    def __init__(self, window: float = 5.0, bucket: float = 0.5) -> None:
        self._window = window
        self._bucket = bucket
        self._bucket_start = self._bucket_end = float("-inf")
        self._bucket_bytes = 0
        self._last = float("-inf")
        self._done: collections.deque[tuple[float, float, int]] = collections.deque()

    def add(self, now: float, size: int) -> None:
        if now >= self._bucket_end:
            self._roll(now)
        self._bucket_bytes += size
        self._last = now

    def _roll(self, now: float) -> None:
        if self._bucket_bytes:
            # It lasted until this frame came (a bucket followed by silence lasts long, and
            # ages out by its start like the others).
            self._done.append((self._bucket_start, now, self._bucket_bytes))
        while self._done and now - self._done[0][0] > self._window:
            self._done.popleft()
        self._bucket_start = now
        self._bucket_end = now + self._bucket
        self._bucket_bytes = 0

    def rate(self) -> float:
        """Bytes per second: what the window holds over the time from its first bucket's
        start to the last addition (0 until two additions were apart in time)."""
        start = self._done[0][0] if self._done else self._bucket_start
        span = self._last - start
        if not span > 0:
            return 0.0
        return (sum(n for _, _, n in self._done) + self._bucket_bytes) / span


@dataclass
class StreamStats:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped_frames: int = 0  # frames skipped for slow clients
    malformed_frames: int = 0  # frames from upstream the packetizer refused
    relayed_frames: int = 0  # native ingest: camera payloads sent on as they came
    repacketized_frames: int = 0  # native ingest: camera payloads that had to be rebuilt
    slow_disconnects: int = 0
    reconnects: int = 0
    keyframes: int = 0
    last_keyframe_ts: float = 0.0
    gop_frames: int = 0  # frames between the last two keyframes
    gop_seconds: float = 0.0
