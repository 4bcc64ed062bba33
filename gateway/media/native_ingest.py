"""Native ingest: the camera's RTSP read on the event loop by our own client, no FFmpeg.

What ``ingest = "auto"`` (the default) runs wherever it can and ``ingest = "native"``
always: many cameras per core. FFmpeg's RTSP demuxer reads TCP-interleaved RTP with several
small reads per packet and runs in a thread per stream; the asyncio reader parses whole
socket buffers and hands each complete video frame to the hub as the camera's own RTP
payloads, which go out as they came under the hub's RTP identity (no depacketizing and
packetizing again). A frame whose packets lie back to back in one read goes over as that
span of the buffer, and the hub writes its headers over the camera's in one copy of the
bytes. G.711 audio packets go on as they came as well; AAC is depacketized and packetized
again. The hub then works exactly as with PyAV ingest (same RTP identity, GOP cache,
reconnect continuity).

With ``ingest = "auto"`` (the default) a :class:`~gateway.media.auto_ingest.FallbackPolicy`
watches each session and the stream moves to PyAV, which copes with more unusual camera
SDPs and packetizations, when the native path cannot take it (gateway.media.auto_ingest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.cancellation import wait_for
from gateway.codecs import SUPPORTED
from gateway.codecs.base import CodecParams
from gateway.media.hub import HubState, StreamHub
from gateway.media.ingest import IngestOptions, report_upstream_failure
from gateway.rtp.receiver import ReceivedFrame
from gateway.rtsp.client import RtspClientError, RtspReader

if TYPE_CHECKING:
    from gateway.media.auto_ingest import FallbackPolicy

log = logging.getLogger("gateway.ingest")


class NativeIngest:
    """Feeds a :class:`StreamHub` from an RTSP URL with :class:`RtspReader`. UpstreamControl."""

    def __init__(
        self,
        hub: StreamHub,
        url: str,
        *,
        username: str,
        password: str,
        display_url: str,
        options: IngestOptions | None = None,
        policy: FallbackPolicy | None = None,
        on_fallback: Callable[[str, str], None] | None = None,
    ) -> None:
        self.hub = hub
        self.url = url  # without credentials
        self._username = username
        self._password = password
        self.display_url = display_url
        self.options = options or IngestOptions()
        self._task: asyncio.Task[None] | None = None
        # The run stop() cancelled, until it has ended (its TEARDOWN sent or given up).
        self._stopping: asyncio.Task[None] | None = None
        self._restart = asyncio.Event()
        self._track_map: dict[int, int] = {}
        self._last_frame = 0.0
        self.attempts = 0  # sessions tried
        self.connects = 0  # sessions that played
        # Auto mode: ``policy`` decides when the stream should move to PyAV; the run then
        # ends and ``on_fallback(reason, detail)`` is called instead of retrying.
        self.policy = policy
        self.on_fallback = on_fallback
        self._fallback: tuple[str, str] | None = None

    # -- UpstreamControl

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._stopping = self._task
            self._task = None

    def restart(self) -> None:
        self._restart.set()

    def reconnect_with(self, url: str, username: str, password: str) -> None:
        """New camera credentials (a configuration reload): the next session uses them; the
        current one is restarted, the hub's clients stay. ``url`` is without credentials."""
        self._username, self._password = username, password
        self.restart()

    async def wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the session stop() cancelled to end: it
        closes its reader (a TEARDOWN, at most 2 s) and only then lets go of the hub."""
        task = self._stopping
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
            if task.done() and self._stopping is task:
                self._stopping = None

    # -- session loop

    async def _run(self) -> None:
        backoff = self.options.backoff()
        while True:
            started = time.monotonic()
            error = await self._session()
            if self._stopping is asyncio.current_task():
                return  # stopped, even if the cancellation went astray on the way
            if self._fallback is not None and self.on_fallback is not None:
                self._task = None
                self.on_fallback(*self._fallback)
                return
            if time.monotonic() - started > 30:
                backoff.reset()
            report_upstream_failure(self.hub, error)
            await asyncio.sleep(backoff.next_delay())

    async def _session(self) -> str:
        self._restart.clear()
        self.attempts += 1
        reader = RtspReader(
            self.url,
            self._username or None,
            self._password or None,
            transport="udp" if self.options.transport == "udp" else "tcp",
            on_frame=self._on_frame,
            depacketize=True,
            relay_payloads=True,
            on_span=self._on_span,
            request_timeout=self.options.io_timeout,
            sdp_check=self.policy.sdp_check if self.policy is not None else None,
        )
        # Frames of one socket read (a video frame and the audio sent with it) go to each
        # client in one write.
        self.hub.batching = True
        reader.on_batch_end = self.hub.flush
        try:
            try:
                await reader.start()
            except RtspClientError as exc:
                if self.policy is not None:
                    self._fallback = self.policy.session_failed(exc)
                return _describe(exc)
            except OSError as exc:
                return f"cannot connect: {exc.strerror or exc}"
            params = self._select_tracks(reader.codec_params)
            if params is None:
                return "no H.264/H.265 video track in the camera's stream"
            self.connects += 1
            if self.policy is not None:
                self.policy.session_opened()
            self._last_frame = time.monotonic()
            log.info(
                "camera stream up",
                extra={"stream": self.hub.key, "url": self.display_url, "ingest": "native"},
            )
            self.hub.upstream_opened(params)
            # The reader raises when the session fails; silence is caught here, so a camera
            # that keeps the connection open but sends nothing cannot hang the stream.
            while True:
                try:
                    await reader.run_for(0.5)
                except RtspClientError as exc:
                    return _describe(exc)
                if self._restart.is_set():
                    return "reconnect requested"
                if self.policy is not None:
                    self._fallback = self.policy.frames_checked(
                        self.hub.stats.malformed_frames, time.monotonic()
                    )
                    if self._fallback is not None:
                        return self._fallback[1]
                if time.monotonic() - self._last_frame > self.options.io_timeout:
                    return (
                        f"no media from the camera for {self.options.io_timeout:g}s (I/O timeout)"
                    )
        finally:
            self._track_map = {}
            with contextlib.suppress(Exception):
                await wait_for(reader.close(), 2.0)
            # The hub is left as found: frames held for a batch go out, and whatever feeds
            # it next (a PyAV ingest after a fallback) delivers frame by frame.
            self.hub.flush()
            self.hub.batching = False

    def _select_tracks(self, offered: list[CodecParams | None]) -> list[CodecParams] | None:
        """First H.264/H.265 video track, then the first supported audio track."""
        video = next(
            (
                i
                for i, p in enumerate(offered)
                if p is not None and p.media == "video" and p.name in ("H264", "H265")
            ),
            None,
        )
        if video is None:
            return None
        audio = next(
            (
                i
                for i, p in enumerate(offered)
                if p is not None and p.media == "audio" and p.name in SUPPORTED
            ),
            None,
        )
        chosen = [video] + ([audio] if audio is not None else [])
        self._track_map = {reader_index: hub_index for hub_index, reader_index in enumerate(chosen)}
        return [offered[i] for i in chosen]  # type: ignore[misc]

    def _on_frame(self, frame: ReceivedFrame) -> None:
        index = self._track_map.get(frame.track)
        if index is None or self.hub.state is not HubState.LIVE:
            return
        if frame.payloads:
            now = time.monotonic()
            self._last_frame = now
            self.hub.push_relayed(index, frame.timestamp, frame.keyframe, frame.payloads, now)
        elif frame.data:
            now = time.monotonic()
            self._last_frame = now
            self.hub.push(index, frame.timestamp, frame.keyframe, frame.data, now)

    def _on_span(
        self,
        track: int,
        timestamp: int,
        keyframe: bool,
        data: bytes,
        start: int,
        end: int,
        arrival: float,
    ) -> None:
        index = self._track_map.get(track)
        if index is None or self.hub.state is not HubState.LIVE:
            return
        now = time.monotonic()
        self._last_frame = now
        self.hub.push_span(index, timestamp, keyframe, data, start, end, now)


def _describe(exc: RtspClientError) -> str:
    if exc.status == 401:
        return "camera refused the credentials (401)"
    if exc.status == 404:
        return "camera has no such stream (404)"
    return str(exc)
