"""Live view for the dashboard: one hub subscriber per browser, fMP4 over a WebSocket.

The hub calls :meth:`LiveViewer.deliver` on the event loop for every frame; it only queues
a reference (the hub's frames are immutable and shared). The viewer's own task depacketizes
the queued video frames, muxes them (:class:`gateway.media.fmp4.Fmp4Muxer`) and sends the
segments. The queue has a byte budget like an RTSP client's send budget: a browser that
falls behind drops frames until the next keyframe, and one that stays behind for the stall
timeout is disconnected. Audio is not sent (G.711 has no MSE mapping).

Messages to the browser: a text message ``{"type": "init", "mime": ..., "width": ...,
"height": ...}`` before every init segment, binary segments, and ``{"type": "closed",
"reason": ...}`` before the server closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import WSCloseCode, web

from gateway.codecs import depacketizer_for
from gateway.media.fmp4 import Fmp4Muxer
from gateway.media.hub import Frame, StreamHub

log = logging.getLogger("gateway.admin")

MAX_QUEUED_FRAMES = 512


class LiveViewer:
    """A browser watching one stream (implements the hub's ``Subscriber`` protocol)."""

    def __init__(
        self,
        hub: StreamHub,
        ws: web.WebSocketResponse,
        *,
        peer: str,
        camera: str,
        stream: str,
        budget: int,
        stall_timeout: float,
    ) -> None:
        self.hub = hub
        self.ws = ws
        self.peer = peer
        self.camera = camera
        self.stream = stream
        self.budget = budget
        self.stall_timeout = stall_timeout
        self.started = time.monotonic()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.closed_reason: str | None = None
        self._queue: collections.deque[Frame] = collections.deque()
        self._queued_bytes = 0
        self._waiting_keyframe = True
        self._over_since: float | None = None
        self._wake = asyncio.Event()
        video = next((t for t in hub.tracks if t.is_video), None)
        if video is None:
            raise LookupError(f"{hub.key} has no video track yet")
        self.video_track = video.index
        self.codec = video.params.name
        self._depacketizer = depacketizer_for(video.params)
        self.muxer = Fmp4Muxer(self.codec, video.params.parameter_sets)

    # ------------------------------------------------------------------ Subscriber

    def deliver(self, frame: Frame, now: float) -> None:
        if frame.track != self.video_track or self.closed_reason is not None:
            return
        if self._waiting_keyframe:
            if not frame.keyframe:
                return
            self._waiting_keyframe = False
        if self._queued_bytes + frame.size > self.budget or len(self._queue) >= MAX_QUEUED_FRAMES:
            self._skip(now)
            return
        self._over_since = None
        self._queue.append(frame)
        self._queued_bytes += frame.size
        self._wake.set()

    def deliver_many(self, frames: Sequence[Frame], now: float) -> None:
        for frame in frames:
            self.deliver(frame, now)

    def _skip(self, now: float) -> None:
        self.dropped += 1
        self.hub.stats.dropped_frames += 1
        self._waiting_keyframe = True
        if self._over_since is None:
            self._over_since = now
        elif now - self._over_since > self.stall_timeout:
            self.hub.stats.slow_disconnects += 1
            self.close_for(f"browser stalled for more than {self.stall_timeout:g}s")

    def deliver_rtcp(self, track: int, packet: bytes) -> None:
        return None  # the browser gets no RTP

    def resync(self) -> None:
        self._waiting_keyframe = True

    def close_for(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._wake.set()

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def take(self) -> Frame | None:
        """The next queued frame to send, if any."""
        if not self._queue:
            return None
        frame = self._queue.popleft()
        self._queued_bytes -= frame.size
        return frame

    # ------------------------------------------------------------------ sending

    async def run(self) -> None:
        """Subscribe, send until the browser leaves or the stream ends, unsubscribe."""
        for cached in self.hub.subscribe(self):
            self.deliver(cached, cached.arrival)
        log.info(
            "live view opened",
            extra={"stream": self.hub.key, "peer": self.peer, "codec": self.codec},
        )
        reader = asyncio.ensure_future(self._read_until_closed())
        try:
            while self.closed_reason is None:
                frame = self.take()
                if frame is None:
                    self._wake.clear()
                    waiter = asyncio.ensure_future(self._wake.wait())
                    done, _ = await asyncio.wait(
                        {waiter, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader in done:
                        waiter.cancel()
                        self.closed_reason = self.closed_reason or "browser closed the view"
                        break
                    continue
                await self._send_frame(frame)
        except (ConnectionResetError, ConnectionError) as exc:
            self.closed_reason = f"connection lost: {exc}"
        finally:
            self.hub.unsubscribe(self)
            reader.cancel()
            reason = self.closed_reason or "closed"
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_json({"type": "closed", "reason": reason})
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=reason[:100].encode())
            log.info(
                "live view closed",
                extra={
                    "stream": self.hub.key,
                    "peer": self.peer,
                    "reason": reason,
                    "frames": self.frames_sent,
                    "dropped": self.dropped,
                },
            )

    async def _read_until_closed(self) -> None:
        # The browser sends nothing we need; reading is how a close is noticed.
        async for _ in self.ws:
            pass

    async def _send_frame(self, frame: Frame) -> None:
        depack = self._depacketizer
        packets = frame.packets()
        last = len(packets) - 1
        units: list[bytes] = []
        try:
            for i, packet in enumerate(packets):
                units += depack.push(bytes(packet[12:]), i == last, frame.timestamp)
            segments: list[bytes] = []
            for unit in units:
                segments += self.muxer.push(unit, frame.timestamp, frame.keyframe)
        except ValueError as exc:
            depack.reset()
            self.muxer.skip_to_keyframe()
            self._waiting_keyframe = True
            log.warning(
                "live view skipped an unusable frame",
                extra={"stream": self.hub.key, "error": str(exc), "ratelimit": True},
            )
            return
        for segment in segments:
            if segment[4:8] == b"ftyp":
                config = self.muxer.config
                assert config is not None
                await self.ws.send_json(
                    {
                        "type": "init",
                        "codec": config.codec,
                        "mime": config.mime_type,
                        "width": config.width,
                        "height": config.height,
                    }
                )
            await self.ws.send_bytes(segment)
            self.bytes_sent += len(segment)
            self.hub.stats.bytes_out += len(segment)
        if segments:
            self.frames_sent += 1
            self.hub.stats.frames_out += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "live-view",
            "peer": self.peer,
            "transport": "websocket",
            "playing": self.closed_reason is None,
            "connected_seconds": round(time.monotonic() - self.started, 1),
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "dropped_frames": self.dropped,
        }
