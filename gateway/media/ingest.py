"""PyAV ingest: one reader thread per camera stream, feeding its hub through a FrameInbox.

PyAV's demux releases the GIL while FFmpeg waits on the socket, so a thread per upstream is
cheap. The thread never touches asyncio objects; it hands tuples to the loop through
:class:`~gateway.media.inbox.FrameInbox` (one wake-up per burst).

Timeouts: FFmpeg's ``timeout`` RTSP option (microseconds) is the socket I/O timeout in the
FFmpeg bundled with PyAV >= 12 (FFmpeg >= 5; ``stimeout`` is gone and ``rw_timeout`` does not
apply to the RTSP handshake). PyAV's own ``timeout=`` argument installs an interrupt
callback that takes the GIL on every poll, which degrades many-stream ingest, so it is not
used; ``stop()`` interrupts a blocked read by closing the container from the loop side is
not safe either, so stop is observed between packets and bounded by the I/O timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from gateway.backoff import Backoff
from gateway.codecs import SUPPORTED, h264, h265
from gateway.codecs.base import CodecParams
from gateway.media.hub import HubState, StreamHub
from gateway.media.inbox import FrameInbox, inbox_budget

if TYPE_CHECKING:
    # PyAV (and FFmpeg's libraries, tens of MiB resident) is imported by the reader thread
    # of the first stream that uses it: a gateway on native ingest never loads it.
    import av

log = logging.getLogger("gateway.ingest")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
if _LIBC is not None:
    # glibc gives each new thread its own malloc arena (up to 8 per core); with one reader
    # thread per camera stream that multiplies resident memory for nothing.
    _LIBC.mallopt(-8, 2)  # M_ARENA_MAX


_VIDEO_NAMES = {"h264": "H264", "hevc": "H265"}
_AUDIO_NAMES = {"pcm_mulaw": "PCMU", "pcm_alaw": "PCMA", "aac": "AAC"}


@dataclass(frozen=True)
class IngestOptions:
    transport: str = "tcp"
    io_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def backoff(self) -> Backoff:
        """Reconnect timing: jitter around each delay spreads a site-wide outage."""
        return Backoff(self.backoff_initial, self.backoff_max, jitter=(0.5, 1.5))


def codec_params_from_stream(stream: av.stream.Stream) -> CodecParams | None:
    """CodecParams for a PyAV stream, or None when we cannot relay its codec."""
    ctx: Any = stream.codec_context  # video or audio context, by stream.type
    name = ctx.name
    if stream.type == "video" and name in _VIDEO_NAMES:
        codec = _VIDEO_NAMES[name]
        extradata = bytes(ctx.extradata or b"")
        parse = (
            h264.parameter_sets_from_extradata
            if codec == "H264"
            else (h265.parameter_sets_from_extradata)
        )
        try:
            psets = tuple(parse(extradata)) if extradata else ()
        except ValueError:
            psets = ()  # odd extradata: parameter sets still arrive in band
        profile = ctx.profile or ""
        return CodecParams(
            name=codec,
            media="video",
            clock_rate=90000,
            width=ctx.width or 0,
            height=ctx.height or 0,
            parameter_sets=psets,
            profile=str(profile),
        )
    if stream.type == "audio" and name in _AUDIO_NAMES:
        codec = _AUDIO_NAMES[name]
        rate = ctx.sample_rate or 8000
        channels = ctx.channels if hasattr(ctx, "channels") else 1
        with contextlib.suppress(AttributeError):
            channels = ctx.layout.nb_channels
        config = bytes(ctx.extradata or b"") if codec == "AAC" else b""
        if codec == "AAC" and not config:
            return None  # cannot describe AAC without its AudioSpecificConfig
        return CodecParams(
            name=codec, media="audio", clock_rate=rate, channels=channels or 1, config=config
        )
    return None


class PyAVIngest:
    """Feeds a :class:`StreamHub` from an RTSP URL, reconnecting with backoff and jitter."""

    def __init__(
        self,
        hub: StreamHub,
        url: str,
        *,
        display_url: str,
        options: IngestOptions | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.hub = hub
        self._url = url  # may embed credentials: never logged
        self.display_url = display_url
        self.options = options or IngestOptions()
        self.loop = loop or asyncio.get_running_loop()
        self.inbox = FrameInbox(self.loop, self._on_item)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._generation = 0
        self.connects = 0

    # -- UpstreamControl

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._generation += 1
        self._thread = threading.Thread(
            target=self._run, args=(self._generation,), name=f"ingest:{self.hub.key}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._generation += 1

    def restart(self) -> None:
        self._restart.set()

    def reconnect_with(self, url: str, username: str, password: str) -> None:
        """New camera credentials (a configuration reload): the next session uses ``url``
        (which embeds them); the current one is restarted, the hub's clients stay."""
        self._url = url
        self.restart()

    async def wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the reader thread to end after stop() (it
        notices between packets or at the I/O timeout)."""
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)

    @property
    def running(self) -> bool:
        """Whether the reader thread is alive (it may be on its way out after stop())."""
        return self._thread is not None and self._thread.is_alive()

    # -- thread side

    def _av_options(self) -> dict[str, str]:
        return {
            "rtsp_transport": self.options.transport,
            "timeout": str(int(self.options.io_timeout * 1_000_000)),
            # Hand packets over as they arrive: no reordering buffer on TCP.
            "reorder_queue_size": "0" if self.options.transport == "tcp" else "64",
            "max_delay": "500000",
            # No "fflags nobuffer": it discards the packets read while probing the stream,
            # and with them the first keyframe.
            "analyzeduration": "1000000",
            "probesize": "5000000",
            "allowed_media_types": "video+audio",
        }

    def _run(self, generation: int) -> None:
        backoff = self.options.backoff()
        while not self._stop.is_set() and generation == self._generation:
            started = time.monotonic()
            error = self._session(generation)
            if self._stop.is_set() or generation != self._generation:
                break
            if time.monotonic() - started > 30:
                backoff.reset()  # it was up for a while: retry soon
            self.inbox.put(("failed", error))
            if self._stop.wait(backoff.next_delay()):
                break

    def _session(self, generation: int) -> str:
        import av

        self._restart.clear()
        try:
            container = av.open(self._url, options=self._av_options(), timeout=None)
        except av.error.FFmpegError as exc:
            return _describe_error(exc)
        except Exception as exc:  # PyAV raises a few non-FFmpeg errors on odd input
            return f"{type(exc).__name__}: {exc}"
        try:
            video = next(
                (s for s in container.streams.video if s.codec_context.name in _VIDEO_NAMES), None
            )
            if video is None:
                return "no H.264/H.265 video track in the camera's stream"
            selected: list[av.stream.Stream] = [video]
            params = [codec_params_from_stream(video)]
            audio = next(
                (s for s in container.streams.audio if codec_params_from_stream(s) is not None),
                None,
            )
            if audio is not None:
                selected.append(audio)
                params.append(codec_params_from_stream(audio))
            if not all(p is not None and p.name in SUPPORTED for p in params):
                return "unsupported codec"
            index_of = {s.index: i for i, s in enumerate(selected)}
            scale = {
                s.index: (s.time_base or Fraction(1, 90000)) * p.clock_rate
                for s, p in zip(selected, params, strict=True)
                if p is not None
            }
            self.connects += 1
            self.inbox.put(("opened", tuple(params)))
            resync = False
            last_pts: dict[int, int] = {}
            # A stream's first packet may come without a pts (before RTCP sync); it is held
            # until the next one and given that pts minus one frame, so the keyframe that
            # starts the session is never dropped and timestamps stay monotonic.
            held: dict[int, av.Packet] = {}
            frame_ticks = {s.index: _frame_ticks(s) for s in selected}
            for packet in container.demux(selected):
                if self._stop.is_set() or generation != self._generation:
                    return "stopped"
                if self._restart.is_set():
                    return "reconnect requested"
                if packet.size == 0:
                    continue  # end-of-stream flush packet
                sidx = packet.stream_index
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    if sidx not in last_pts:
                        held[sidx] = packet
                        continue
                    pts = last_pts[sidx] + frame_ticks[sidx]
                batch = []
                first = held.pop(sidx, None)
                if first is not None:
                    batch.append((first, pts - frame_ticks[sidx]))
                batch.append((packet, pts))
                for pkt, pkt_pts in batch:
                    last_pts[sidx] = pkt_pts
                    keyframe = pkt.is_keyframe
                    if resync:
                        if not (keyframe and sidx == video.index):
                            continue
                        resync = False
                    item = (
                        "frame",
                        index_of[sidx],
                        int(pkt_pts * scale[sidx]),
                        keyframe,
                        bytes(pkt),
                        time.monotonic(),
                    )
                    if not self.inbox.put(item, pkt.size):
                        resync = True  # the loop fell behind: restart cleanly at a keyframe
            return "camera ended the stream"
        except av.error.FFmpegError as exc:
            return _describe_error(exc)
        except Exception as exc:
            log.exception("ingest failed", extra={"stream": self.hub.key})
            return f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                container.close()

    # -- loop side

    def _on_item(self, item: tuple[object, ...]) -> None:
        kind = item[0]
        hub = self.hub
        if kind == "frame":
            _, track, ts, keyframe, data, arrival = item
            if hub.state is HubState.LIVE:
                hub.push(track, ts, keyframe, data, arrival)  # type: ignore[arg-type]
                if keyframe and track == 0:
                    # What the inbox may hold follows the stream's rate (once per GOP).
                    self.inbox.max_bytes = inbox_budget(hub.bitrate)
        elif kind == "opened":
            log.info("camera stream up", extra={"stream": hub.key, "url": self.display_url})
            hub.upstream_opened(item[1])  # type: ignore[arg-type]
        elif kind == "failed":
            report_upstream_failure(hub, str(item[1]))


def _frame_ticks(stream: av.stream.Stream) -> int:
    """One frame's duration in the stream's time base (a guess good enough to place the
    first, pts-less packet just before the second)."""
    tb = stream.time_base or Fraction(1, 90000)
    if stream.type == "video":
        rate = stream.average_rate or stream.guessed_rate or 25
        return max(1, int(1 / (rate * tb)))
    return max(1, int(Fraction(1, 50) / tb))  # 20 ms of audio


def _describe_error(exc: Exception) -> str:
    text = str(exc)
    # FFmpeg errors quote the URL, which may carry credentials.
    if "'" in text:
        text = text.split(": '", 1)[0]
    lowered = text.lower()
    if "401" in text or "unauthorized" in lowered:
        return "camera refused the credentials (401)"
    if "404" in text or "not found" in lowered:
        return "camera has no such stream (404)"
    if "connection refused" in lowered:
        return "connection refused"
    if "timed out" in lowered or "invalid data" in lowered or "etimedout" in lowered:
        return f"no answer or no valid stream within the I/O timeout ({text})"
    return text


def report_upstream_failure(hub: StreamHub, error: str) -> None:
    """Log an upstream session that ended or could not open (loudly once it was live, rate
    limited while it keeps failing) and tell the hub."""
    if hub.state is HubState.LIVE:
        log.warning("camera stream down", extra={"stream": hub.key, "reason": error})
    else:
        log.warning(
            "camera stream unavailable",
            extra={"stream": hub.key, "reason": error, "ratelimit": True},
        )
    hub.upstream_failed(error)
