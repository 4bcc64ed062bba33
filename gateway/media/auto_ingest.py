"""``ingest = "auto"``: the native RTSP client for every stream it handles, PyAV for the rest.

The native ingest (:mod:`gateway.media.native_ingest`) costs a fraction of PyAV's CPU and
latency, but FFmpeg copes with more camera quirks. In auto mode each stream starts native
and moves to PyAV -- a *fallback* -- when the native path cannot take it:

``not_rtsp``
    the camera URL is not plain ``rtsp://`` (``rtsps://``: the native client has no TLS);
    decided before connecting.
``unsupported_sdp``
    the DESCRIBE answer describes what the native path does not relay but FFmpeg may: an SDP
    our parser refuses, H.264 ``packetization-mode=2`` (interleaved), H.265 with decoding
    order numbers (DONL), an H.264/H.265 track whose parameter sets do not decode, a video
    payload that is not H.264/H.265, or AAC audio in a form we do not depacketize (LATM).
    Decided at once: the same DESCRIBE gives the same answer every time.
``setup_failed``
    the camera answered the session set-up (DESCRIBE, SETUP or PLAY) with something the
    native client cannot use -- a 4xx other than 401/403/404-at-DESCRIBE/408, or a response
    it could not parse -- :data:`SETUP_FAILURE_LIMIT` times in a row (one such answer may be
    a camera booting).
``malformed_frames``
    the stream plays but :data:`MALFORMED_LIMIT` frames within :data:`MALFORMED_WINDOW`
    seconds were refused as malformed (payloads our depacketizer rejects and FFmpeg skips
    past, such as a vendor's private NAL unit types).

An outage is never a reason: the camera unreachable, the connection refused or lost, a
timeout, wrong credentials (401/403), no such stream (DESCRIBE 404) or the camera busy
(5xx). Those keep the native ingest's reconnect with backoff, as with ``ingest = "native"``;
otherwise every camera outage would quietly move streams to the slow path.

A stream that fell back stays on PyAV until the next configuration reload (SIGHUP, admin
reload), which tries native again. The hub stays through the switch and so do its clients:
the new upstream session is a reconnect to them (same tracks; they resume at its first
keyframe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.codecs import codec_name, params_from_sdp_media
from gateway.codecs.sdp import MediaDescription, SessionDescription
from gateway.media.hub import HubState, StreamHub
from gateway.media.ingest import IngestOptions, PyAVIngest
from gateway.media.native_ingest import NativeIngest
from gateway.rtsp.client import RtspClientError

log = logging.getLogger("gateway.ingest")

# The reasons a stream falls back (the values of the metric's ``reason`` label).
NOT_RTSP = "not_rtsp"
UNSUPPORTED_SDP = "unsupported_sdp"
SETUP_FAILED = "setup_failed"
MALFORMED_FRAMES = "malformed_frames"
FALLBACK_REASONS = (NOT_RTSP, UNSUPPORTED_SDP, SETUP_FAILED, MALFORMED_FRAMES)

# Consecutive set-up failures of the unusable-answer kind before falling back.
SETUP_FAILURE_LIMIT = 3
# Malformed frames within the window that move a playing stream to PyAV. A quirk on every
# frame trips it within a second; one on every keyframe (the worst: clients get no picture)
# within 5-20 s for a GOP of 1-4 s; a few stray frames a minute do not.
MALFORMED_LIMIT = 5
MALFORMED_WINDOW = 60.0

# RTSP answers that mean the camera is down, busy or refusing us, not that the native client
# cannot talk to it: 401/403 credentials, 408 timeout, 5xx server trouble.
_OUTAGE_STATUSES = frozenset({401, 403, 408})


@dataclass(frozen=True)
class Fallback:
    """Why a stream runs PyAV under ``ingest = "auto"``; ``since`` is Unix time."""

    reason: str  # one of FALLBACK_REASONS
    detail: str  # one line for people (never credentials)
    since: float


def native_sdp_problem(sdp: SessionDescription) -> str | None:
    """Why the native path would not relay what ``sdp`` describes as PyAV might, or None.

    Video: some H.264/H.265 track must be one the native path takes; a stream with no video
    track at all is left to fail as it would anyway (neither path serves it). Audio: only AAC
    forms FFmpeg reads and we do not (LATM) are a reason, when no other audio track would
    do; other codecs (G.726, Opus, ...) are dropped by both paths.
    """
    media = [m for m in sdp.media if "RTP/AVP" in m.protocol.upper()]
    video = [m for m in media if m.media == "video"]
    if video:
        problems = [_video_problem(m) for m in video]
        if all(problems):
            return problems[0]
    audio = [_audio_problem(m) for m in media if m.media == "audio"]
    if None not in audio:
        return next((p for p in audio if p), None)
    return None


def _video_problem(media: MediaDescription) -> str | None:
    try:
        name = codec_name(media.encoding or "?")
    except ValueError:
        shown = media.encoding or f"payload type {media.payload_type}"
        return f"video {shown} is not H.264/H.265"
    if name not in ("H264", "H265"):
        return f"video {name} is not H.264/H.265"
    fmtp = media.fmtp
    if name == "H264" and fmtp.get("packetization-mode", "0").strip() not in ("0", "1"):
        return f"H.264 packetization-mode={fmtp['packetization-mode'].strip()} (interleaved)"
    if name == "H265" and any(
        fmtp.get(key, "0").strip() not in ("", "0")
        for key in ("sprop-max-don-diff", "sprop-depack-buf-nalus")
    ):
        return "H.265 with decoding order numbers (sprop-max-don-diff)"
    try:
        params_from_sdp_media(media)
    except (ValueError, KeyError) as exc:
        return f"{name} track: {exc}"
    return None


def _audio_problem(media: MediaDescription) -> str | None:
    """ "" when the native path cannot take this track and neither would PyAV, a reason when
    PyAV might, None when the native path takes it."""
    encoding = (media.encoding or "").upper()
    if encoding == "MP4A-LATM":
        return "AAC in LATM (MP4A-LATM) audio"
    try:
        params_from_sdp_media(media)
    except (ValueError, KeyError):
        return ""
    return None


def fallback_reason(error: RtspClientError) -> str | None:
    """:data:`SETUP_FAILED` when a failed :meth:`RtspReader.start` is the kind of failure
    PyAV might not have (see the module docstring), :data:`UNSUPPORTED_SDP` for the
    description, None for an outage or anything after PLAY."""
    if error.step == "sdp":
        return UNSUPPORTED_SDP
    if error.network or error.step in ("", "connect"):
        return None
    status = error.status
    if status in _OUTAGE_STATUSES or status >= 500:
        return None
    if status == 404 and error.step == "describe":
        return None  # no such stream: PyAV asks for the same URL
    return SETUP_FAILED


class MalformedWatch:
    """Whether a stream keeps producing malformed frames: at least ``limit`` of them within
    ``window`` seconds. Fed the hub's running count; memory is ``limit`` timestamps."""

    def __init__(
        self, total: int, *, limit: int = MALFORMED_LIMIT, window: float = MALFORMED_WINDOW
    ) -> None:
        self.limit = limit
        self.window = window
        self._total = total
        self._times: deque[float] = deque(maxlen=limit)

    def exceeded(self, total: int, now: float) -> bool:
        """Take the count as of ``now``; True once the limit is reached within the window."""
        new, self._total = total - self._total, total
        for _ in range(min(max(new, 0), self.limit)):
            self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) >= self.limit


class FallbackPolicy:
    """When one native session history should move its stream to PyAV (sans-IO: the native
    ingest reports, this decides). One per native run."""

    def __init__(self, malformed_total: int) -> None:
        self.setup_failures = 0
        self.malformed = MalformedWatch(malformed_total)

    def sdp_check(self, sdp: SessionDescription) -> str | None:
        return native_sdp_problem(sdp)

    def session_failed(self, error: RtspClientError) -> tuple[str, str] | None:
        """(reason, detail) to fall back for, or None to retry natively."""
        reason = fallback_reason(error)
        if reason == SETUP_FAILED:
            self.setup_failures += 1
            if self.setup_failures < SETUP_FAILURE_LIMIT:
                return None
            return reason, f"{error} ({self.setup_failures} times in a row)"
        self.setup_failures = 0
        return (reason, str(error)) if reason else None

    def session_opened(self) -> None:
        self.setup_failures = 0

    def frames_checked(self, malformed_total: int, now: float) -> tuple[str, str] | None:
        if not self.malformed.exceeded(malformed_total, now):
            return None
        detail = (
            f"{self.malformed.limit} malformed frames within {self.malformed.window:g}s "
            "(payloads the native depacketizer refuses)"
        )
        return MALFORMED_FRAMES, detail


FallbackListener = Callable[[str, Fallback], None]


class AutoIngest:
    """Feeds a hub natively, or through PyAV after a fallback. UpstreamControl.

    ``url`` is what PyAV opens (credentials embedded); ``native_url`` has none, the native
    client gets them apart. ``on_fallback(stream key, fallback)`` hears of each fallback
    once (the gateway counts them for its metrics).
    """

    def __init__(
        self,
        hub: StreamHub,
        url: str,
        *,
        native_url: str,
        username: str,
        password: str,
        display_url: str,
        options: IngestOptions | None = None,
        on_fallback: FallbackListener | None = None,
    ) -> None:
        self.hub = hub
        self._url = url  # may embed credentials: never logged
        self.native_url = native_url
        self._username = username
        self._password = password
        self.display_url = display_url
        self.options = options or IngestOptions()
        self.on_fallback = on_fallback
        self.fallback: Fallback | None = None
        self._retired: list[PyAVIngest] = []
        self.active: NativeIngest | PyAVIngest
        if native_url.lower().startswith("rtsp://"):
            self.active = self._native()
        else:
            scheme = native_url.split("://", 1)[0]
            self.active = self._pyav()
            self._fell_back(NOT_RTSP, f"{scheme}:// URL: the native client reads rtsp:// only")

    @property
    def kind(self) -> str:
        """The ingest the stream runs now: "native" or "pyav"."""
        return "native" if isinstance(self.active, NativeIngest) else "pyav"

    # -- UpstreamControl

    def start(self) -> None:
        self.active.start()

    def stop(self) -> None:
        self.active.stop()

    def restart(self) -> None:
        self.active.restart()

    def reconnect_with(self, url: str, username: str, password: str) -> None:
        """New camera credentials (a configuration reload): ``url`` embeds them (for PyAV).
        A reload is also when a stream that fell back tries native again."""
        self._url, self._username, self._password = url, username, password
        if not self.retry_native():
            self.active.reconnect_with(
                url if isinstance(self.active, PyAVIngest) else self.native_url,
                username,
                password,
            )

    async def wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every ingest this stream started to end."""
        await asyncio.gather(*(i.wait_stopped(timeout) for i in [*self._retired, self.active]))

    # -- switching

    def retry_native(self) -> bool:
        """After a fallback (not for a URL native cannot read): go back to the native client
        on the same hub; True if it did."""
        if self.fallback is None or self.fallback.reason == NOT_RTSP:
            return False
        old = self.active
        old.stop()
        if isinstance(old, PyAVIngest):
            self._retired = [i for i in self._retired if i.running] + [old]
        log.info(
            "ingest: trying the native client again after the reload",
            extra={"stream": self.hub.key, "previous_reason": self.fallback.reason},
        )
        self.fallback = None
        self.active = self._native()
        self._start_if_wanted()
        return True

    def _native(self) -> NativeIngest:
        return NativeIngest(
            self.hub,
            self.native_url,
            username=self._username,
            password=self._password,
            display_url=self.display_url,
            options=self.options,
            policy=FallbackPolicy(self.hub.stats.malformed_frames),
            on_fallback=self._native_gave_up,
        )

    def _pyav(self) -> PyAVIngest:
        return PyAVIngest(self.hub, self._url, display_url=self.display_url, options=self.options)

    def _native_gave_up(self, reason: str, detail: str) -> None:
        """The native ingest ended its run for ``reason``: PyAV takes over the same hub."""
        self.active = self._pyav()
        self._fell_back(reason, detail)
        self._start_if_wanted()

    def _fell_back(self, reason: str, detail: str) -> None:
        self.fallback = Fallback(reason, detail, time.time())
        log.warning(
            "ingest: stream moved to PyAV",
            extra={"stream": self.hub.key, "reason": reason, "detail": detail},
        )
        if self.on_fallback is not None:
            self.on_fallback(self.hub.key, self.fallback)

    def _start_if_wanted(self) -> None:
        # An idle on-demand stream starts when a client comes (the hub calls start()).
        if self.hub.state is not HubState.IDLE:
            self.active.start()
