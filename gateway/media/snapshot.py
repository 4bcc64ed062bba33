"""JPEG snapshots from a stream's last keyframe (ONVIF GetSnapshotUri, the dashboard).

:func:`encode_jpeg` is blocking (it decodes and encodes a picture with PyAV): callers run it
with ``asyncio.to_thread``. :class:`SnapshotCache` keeps one JPEG per stream for a short
while and makes concurrent requests for the same stream share one decode, so a VMS polling
snapshots of many cameras costs one decode per camera per ``max_age``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from fractions import Fraction
from typing import TYPE_CHECKING

from gateway.codecs.base import CodecParams

if TYPE_CHECKING:
    # PyAV is imported by the first snapshot (in its worker thread), not with the gateway.
    import av

_DECODERS = {"H264": "h264", "H265": "hevc"}
# A keyframe of even an 8K camera stays far below this; anything larger is not a picture.
MAX_ACCESS_UNIT = 32 * 1024 * 1024
_START_CODE = b"\x00\x00\x00\x01"


def _decode_picture(params: CodecParams, access_unit: bytes) -> av.VideoFrame:
    import av

    decoder_name = _DECODERS.get(params.name)
    if decoder_name is None:
        raise ValueError(f"cannot snapshot {params.name!r} video (only H264, H265)")
    if not access_unit:
        raise ValueError("empty access unit")
    if len(access_unit) > MAX_ACCESS_UNIT:
        raise ValueError(f"access unit of {len(access_unit)} bytes exceeds {MAX_ACCESS_UNIT}")
    # Parameter sets from the SDP go first; any in band come later and take precedence, which
    # is right when the camera changed resolution since the SDP was made.
    data = b"".join(_START_CODE + ps for ps in params.parameter_sets) + access_unit
    decoder = av.CodecContext.create(decoder_name, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    decoder.thread_count = 1  # one picture: threads only add start-up cost
    try:
        frames = decoder.decode(av.Packet(data))
        frames += decoder.decode(None)
    except av.FFmpegError as exc:
        raise ValueError(f"{params.name} access unit does not decode: {exc}") from exc
    pictures = [f for f in frames if isinstance(f, av.VideoFrame)]
    if not pictures:
        raise ValueError(
            f"{params.name} access unit decoded into no picture "
            "(not a keyframe, or no parameter sets?)"
        )
    return pictures[0]


def encode_jpeg(
    params: CodecParams, access_unit: bytes, *, max_width: int | None = None, quality: int = 80
) -> bytes:
    """Decode one keyframe access unit (Annex-B) and return it as a JPEG.

    ``max_width`` scales larger pictures down, keeping the aspect ratio; ``quality`` is 1..100
    (higher is better). Raises ``ValueError`` when the data is not a decodable picture.
    """
    import av
    from av.video.reformatter import ColorRange

    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, not {quality}")
    if max_width is not None and max_width < 16:
        raise ValueError(f"max_width must be at least 16, not {max_width}")
    picture = _decode_picture(params, access_unit)
    width, height = picture.width, picture.height
    if max_width is not None and width > max_width:
        # Even sizes: 4:2:0 chroma is subsampled by two in both directions.
        height = max(2, round(height * max_width / width / 2) * 2)
        width = max_width // 2 * 2
    # JPEG is full range; converting here avoids the encoder's non-standard limited-range mode.
    picture = picture.reformat(
        width=width, height=height, format="yuv420p", dst_color_range=ColorRange.JPEG
    )
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.color_range = ColorRange.JPEG
    encoder.time_base = Fraction(1, 1)
    # Fixed quantiser: map quality 100..1 onto MJPEG qscale 2..31 (lower is finer).
    qscale = round(2 + (100 - quality) * 29 / 99)
    encoder.qmin = qscale
    encoder.qmax = qscale
    picture.pts = 0
    packets = encoder.encode(picture) + encoder.encode(None)
    if len(packets) != 1:
        raise RuntimeError(f"MJPEG encoder returned {len(packets)} packets for one picture")
    return bytes(packets[0])


class SnapshotCache:
    """The latest JPEG per stream, reused while younger than ``max_age`` seconds.

    Time is injected (``now`` on every call, any monotonic clock). Concurrent callers for a
    stream share one in-flight producer call; a caller that is cancelled does not cancel it
    for the others. At most ``max_entries`` JPEGs are kept (least recently used go first).
    """

    def __init__(self, max_age: float = 1.0, max_entries: int = 256) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must not be negative, not {max_age}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._in_flight: dict[Hashable, asyncio.Future[bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def discard(self, key: Hashable) -> None:
        """Forget the stream's JPEG (its source restarted or went away)."""
        self._entries.pop(key, None)

    async def get(
        self, key: Hashable, now: float, produce: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The cached JPEG for ``key`` if fresh at ``now``, else what ``produce()`` returns."""
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.max_age:
            self._entries.move_to_end(key)
            return entry[1]
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.ensure_future(produce())
            self._in_flight[key] = future
            future.add_done_callback(lambda done: self._finished(key, now, done))
        return await asyncio.shield(future)

    def _finished(self, key: Hashable, started: float, future: asyncio.Future[bytes]) -> None:
        if self._in_flight.get(key) is future:
            del self._in_flight[key]
        # Failures reach every waiter through the future; nothing is cached for them.
        if future.cancelled() or future.exception() is not None:
            return
        self._entries[key] = (started, future.result())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
