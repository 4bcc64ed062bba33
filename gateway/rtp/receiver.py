"""The receiving side of one RTP track (sans-IO): packets in, counts and frames out.

An :class:`RtpReceiver` is fed RTP packets with their arrival time (``now``, any clock the
caller uses consistently) and does what the RTSP reader needs of each: RFC 3550 sequence
accounting (appendix A.3: loss, duplicates, reordering, wrap-around), and frames handed to
``on_frame``. Without a depacketizer, frames are found by the marker bit (video) or per
packet (audio) and keyframes from the H.264/H.265 payload headers; with ``relay_payloads`` a
complete H.264/H.265 frame goes over as the list of its RTP payloads, a G.711 packet as a
one-payload frame, for a relay that sends them on as they are. A frame whose packets lie
back to back in one interleaved read buffer goes to ``on_span`` as that span instead.

:func:`gateway.rtp.interleaved.walk_interleaved` feeds each receiver the ``$`` frames of
its channel. Nothing here does IO or knows about asyncio.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.codecs import (
    SELF_CONTAINED_PAYLOADS,
    codec_name,
    depacketizer_for,
    params_from_sdp_media,
)
from gateway.codecs.base import CodecParams, Depacketizer
from gateway.codecs.h264 import DEFAULT_MAX_FRAME_SIZE, split_annexb
from gateway.codecs.h264 import rtp_packet_flags as h264_packet_flags
from gateway.codecs.h265 import rtp_packet_flags as h265_packet_flags
from gateway.codecs.sdp import MediaDescription
from gateway.rtp.interleaved import interleaved_payloads
from gateway.rtp.packet import FIXED_HEADER
from gateway.rtp.spans import KEY_H264, KEY_H265, KEY_NONE, SPAN_END, SPAN_KEY, continue_span

log = logging.getLogger(__name__)

# Frame arrival times kept per track (enough for a few seconds of jitter statistics).
ARRIVAL_HISTORY = 512


@dataclass(slots=True)
class TrackStats:
    """What one track received. Times are the ``now`` values the receiver was given."""

    index: int
    media: str
    encoding: str
    clock_rate: int
    control_url: str
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    keyframes: int = 0
    # RTP sequence accounting (RFC 3550 appendix A.3): expected minus received, never < 0.
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    timestamp_backwards: int = 0
    malformed: int = 0
    rtcp_packets: int = 0
    ssrc: int | None = None
    ssrc_changes: int = 0
    first_seq: int | None = None
    rtp_info_seq: int | None = None
    rtp_info_rtptime: int | None = None
    first_packet_at: float | None = None
    last_packet_at: float | None = None
    first_frame_at: float | None = None
    first_keyframe_at: float | None = None
    frame_arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVAL_HISTORY))

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__ if name != "frame_arrivals"}
        arrivals = list(self.frame_arrivals)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        out["max_frame_gap"] = round(max(gaps), 4) if gaps else None
        return out


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """Passed to ``on_frame``; ``data`` is the access unit when depacketizing, else None;
    ``payloads`` are a complete frame's RTP payloads with ``relay_payloads``, else None (also
    for a video frame with a lost packet, or one joined mid-way)."""

    track: int
    timestamp: int
    keyframe: bool
    arrival: float
    data: bytes | None
    payloads: list[bytes] | None = None


FrameCallback = Callable[[ReceivedFrame], None]
# (track, timestamp, keyframe, buffer, start, end, arrival): a complete frame whose packets lie
# back to back in ``buffer[start:end]`` as received, "$"-framed with plain 12-byte headers.
SpanCallback = Callable[[int, int, bool, bytes, int, int, float], None]


# What sequence_step finds a packet to be.
SEQ_DUPLICATE = 0
SEQ_AHEAD = 1  # later than the next expected: the packets in between are missing (so far)
SEQ_LATE = 2  # before the highest: reordered, it makes up for a loss counted earlier


def sequence_step(
    first: int, highest: int, seq: int, received: int, duplicates: int
) -> tuple[int, int, int]:
    """RFC 3550 appendix A.3 accounting of a packet that is not simply the next one.

    ``first`` and ``highest`` are extended sequence numbers (wrap-arounds counted), ``seq``
    the packet's 16-bit one; ``received`` counts this packet, ``duplicates`` the earlier
    duplicates. Returns what the packet is, the new extended highest, and the packets lost:
    expected minus received (duplicates not received), never below 0. The one loss
    algorithm of the RTSP reader (and so of the benchmarks' lean reader, built on it)."""
    delta = (seq - highest) & 0xFFFF
    if delta == 0:
        kind = SEQ_DUPLICATE
        duplicates += 1
    elif delta < 0x8000:
        kind = SEQ_AHEAD
        highest += delta
    else:
        kind = SEQ_LATE
    return kind, highest, max(0, highest - first + 1 - received + duplicates)


def _annexb_is_keyframe(codec: str, frame: bytes) -> bool:
    try:
        nals = split_annexb(frame)
    except ValueError:
        return False
    if codec == "H264":
        return any(n[0] & 0x1F == 5 for n in nals if len(n))
    return any(16 <= (n[0] >> 1) & 0x3F <= 21 for n in nals if len(n))


class RtpReceiver:
    """Receive state of one track; ``stats`` is the public part. See the module docstring.

    ``on_counted(receiver, keyframe, now)`` hears of every frame once it is counted (the
    reader times its first keyframe and wakes its waiters from there).
    """

    __slots__ = (
        "codec",
        "cycles",
        "depacketizer",
        "frame_clean",
        "frame_has_key",
        "frame_open",
        "frame_payloads",
        "frame_size",
        "frame_ts",
        "is_video",
        "key_codec",
        "last_ts",
        "max_seq",
        "media",
        "on_counted",
        "on_frame",
        "on_span",
        "packet_flags",
        "params",
        "payload_frames",
        "span_buffer",
        "span_end",
        "span_start",
        "stats",
    )

    def __init__(
        self,
        stats: TrackStats,
        params: CodecParams | None = None,
        *,
        on_frame: FrameCallback | None = None,
        relay_payloads: bool = False,
        on_span: SpanCallback | None = None,
        depacketize: bool = False,
    ) -> None:
        self.stats = stats
        self.params = params
        self.media = stats.media
        self.is_video = stats.media == "video"
        try:
            self.codec = codec_name(stats.encoding)
        except ValueError:
            self.codec = stats.encoding
        self.on_frame = on_frame
        self.on_span = on_span if relay_payloads else None
        self.on_counted: Callable[[RtpReceiver, bool, float], None] | None = None
        self.packet_flags: Callable[[bytes, int, int], tuple[bool, bool]] | None = None
        self.key_codec = KEY_NONE  # the same rules, for continue_span
        if self.codec == "H264":
            self.packet_flags = h264_packet_flags
            self.key_codec = KEY_H264
        elif self.codec == "H265":
            self.packet_flags = h265_packet_flags
            self.key_codec = KEY_H265
        self.depacketizer: Depacketizer | None = None
        self.max_seq = -1
        self.cycles = 0
        self.last_ts = -1
        # A video frame is open between its first packet and its marker. It is "clean" when
        # it began at a NAL boundary and no packet of it was lost, so it is complete.
        self.frame_open = False
        self.frame_clean = False
        self.frame_has_key = False
        # The open frame's payloads when they are handed over (``relay_payloads``), else None.
        self.frame_payloads: list[bytes] | None = None
        # Every payload handed over as a frame of its own (``relay_payloads``, G.711).
        self.payload_frames = False
        # The open frame as a span of one read buffer (see _collect), if it is one.
        self.span_buffer: bytes | None = None
        self.span_start = 0
        self.span_end = 0
        self.frame_size = 0
        self.frame_ts = -1
        if relay_payloads and self.packet_flags is not None:
            self.frame_payloads = []
        elif relay_payloads and self.codec in SELF_CONTAINED_PAYLOADS:
            self.payload_frames = True
        elif depacketize and params is not None:
            try:
                self.depacketizer = depacketizer_for(params)
            except (ValueError, KeyError) as exc:
                log.debug("cannot depacketize %s: %s", stats.encoding, exc)

    # -- input

    def feed(self, packet: bytes, now: float) -> None:
        """One whole RTP packet (a UDP datagram, or the payload of a parsed ``$`` frame)."""
        self.feed_at(packet, 0, len(packet), now, False)

    def rtcp(self) -> None:
        """An RTCP packet arrived for this track (counted; its content is not needed)."""
        self.stats.rtcp_packets += 1

    def continues_span(self, buf: bytes, pos: int) -> bool:
        """Whether the ``$`` frame at ``buf[pos]`` comes right after the open span."""
        return self.span_buffer is buf and self.span_end == pos

    def extend_span(self, buf: bytes, pos: int, size: int, now: float) -> int:
        """Take the "$" frames from ``pos`` on, as long as each simply continues the frame
        collected as a span ending there (see :func:`continue_span`), up to and including
        its marker packet. Returns where the walk stopped (``pos`` when nothing was taken).
        Most packets are taken here, a run at a time; they skip the full accounting of
        :meth:`feed_at`, which would give the same result for them."""
        stats = self.stats
        first_seq = self.max_seq
        end, seq, room, flags = continue_span(
            buf,
            pos,
            size,
            first_seq,
            self.frame_ts,
            -1 if stats.ssrc is None else stats.ssrc,  # set by the span's first packet
            DEFAULT_MAX_FRAME_SIZE - self.frame_size,
            KEY_NONE if self.frame_has_key else self.key_codec,
        )
        if end == pos:
            return pos
        packets = seq - first_seq
        self.max_seq = seq
        self.frame_size = DEFAULT_MAX_FRAME_SIZE - room
        self.span_end = end
        stats.packets += packets
        stats.bytes += end - pos - 4 * packets
        stats.last_packet_at = now
        if flags & SPAN_KEY:
            self.frame_has_key = True
        if flags & SPAN_END:
            self._collected_frame_done(now)
        return end

    def feed_at(self, buf: bytes, at: int, end: int, now: float, framed: bool) -> None:
        """The RTP packet ``buf[at:end]``; ``framed`` when it sits in an interleaved read
        buffer right after its ``$`` prefix (then a frame may be handed over as a span)."""
        stats = self.stats
        size = end - at
        if size < 12 or buf[at] >> 6 != 2:
            stats.malformed += 1
            return
        b0, b1, seq, timestamp, ssrc = FIXED_HEADER.unpack_from(buf, at)
        stats.packets += 1
        stats.bytes += size
        stats.last_packet_at = now
        if stats.ssrc != ssrc:
            if stats.first_seq is not None:
                stats.ssrc_changes += 1
            stats.ssrc = ssrc
        # Sequence accounting (wrap-around aware); a gap also breaks the frame in progress.
        gap = False
        if self.max_seq < 0:
            stats.first_seq = seq
            stats.first_packet_at = now
            self.max_seq = seq
        elif (seq - self.max_seq) & 0xFFFF == 1:
            # In order: expected and received both grow by one, so "lost" stays.
            if seq == 0:
                self.cycles += 0x10000
            self.max_seq = seq
        else:
            kind, highest, stats.lost = sequence_step(
                stats.first_seq or 0,
                self.cycles + self.max_seq,
                seq,
                stats.packets,
                stats.duplicates,
            )
            if kind == SEQ_DUPLICATE:
                stats.duplicates += 1
                return
            if kind == SEQ_AHEAD:
                self.cycles, self.max_seq = highest & ~0xFFFF, highest & 0xFFFF
                gap = True
            else:
                stats.reordered += 1
        if self.last_ts >= 0 and ((timestamp - self.last_ts) & 0xFFFFFFFF) >= 0x80000000:
            stats.timestamp_backwards += 1
        self.last_ts = timestamp
        marker = bool(b1 & 0x80)

        start = at + 12 + 4 * (b0 & 0x0F)
        stop = end
        if b0 & 0x30:  # header extension and/or padding: rare, so checked only then
            if b0 & 0x10:
                if stop < start + 4:
                    stats.malformed += 1
                    return
                start += 4 + 4 * ((buf[start + 2] << 8) | buf[start + 3])
            if b0 & 0x20:
                stop -= buf[end - 1]
        if stop <= start:
            stats.malformed += 1
            return
        if self.depacketizer is not None:
            self._depacketize(buf[start:stop], marker, timestamp, gap, now)
            return
        if not self.is_video:
            if self.payload_frames:
                if framed and b0 == 0x80 and self.on_span is not None:
                    self._span_done(timestamp, False, buf, at - 4, end, now)
                else:
                    self._frame_done(timestamp, False, now, payloads=[buf[start:stop]])
                return
            data = buf[start:stop] if self.on_frame is not None else None
            self._frame_done(timestamp, False, now, data)
            return
        keyframe = continuation = False
        if self.packet_flags is not None:
            keyframe, continuation = self.packet_flags(buf, start, stop)
        collected = self.frame_payloads
        if collected is not None:
            spannable = framed and b0 == 0x80 and self.on_span is not None
            self._collect(
                collected, buf, at, start, stop, spannable, timestamp, continuation, gap, now
            )
            if keyframe:
                self.frame_has_key = True
            if marker:
                self._collected_frame_done(now)
            return
        if not self.frame_open:
            self.frame_open = True
            self.frame_clean = not continuation
            self.frame_has_key = False
        if gap:
            self.frame_clean = False
        if keyframe:
            self.frame_has_key = True
        if marker:
            self.frame_open = False
            self._frame_done(timestamp, self.frame_has_key and self.frame_clean, now)

    # -- frames

    def _collect(
        self,
        collected: list[bytes],
        buf: bytes,
        at: int,
        start: int,
        stop: int,
        spannable: bool,
        timestamp: int,
        continuation: bool,
        gap: bool,
        now: float,
    ) -> None:
        """Add the payload ``buf[start:stop]`` of the packet at ``at`` to the open frame.

        While a frame's packets lie back to back in one read buffer (``spannable``: framed,
        plain 12-byte headers), only where they start and end is kept; the frame is handed
        over as that span. Anything else turns it into a list of payloads."""
        if self.frame_open and timestamp != self.frame_ts:
            # The marker was lost: the timestamp change ends the previous frame.
            self._collected_frame_done(now)
            collected = cast(list[bytes], self.frame_payloads)
        if not self.frame_open:
            self.frame_open = True
            self.frame_clean = not continuation
            self.frame_has_key = False
            self.frame_ts = timestamp
            self.frame_size = 0
        if gap:
            self.frame_clean = False
        if not self.frame_clean:
            collected.clear()
            self.span_buffer = None
            return
        self.frame_size += stop - start
        if self.frame_size > DEFAULT_MAX_FRAME_SIZE:
            self.frame_clean = False  # bounded memory when a sender never ends a frame
            collected.clear()
            self.span_buffer = None
            return
        span = self.span_buffer
        if spannable:
            if span is None:
                if not collected:
                    self.span_buffer = buf
                    self.span_start = at - 4
                    self.span_end = stop
                    return
            elif span is buf and self.span_end == at - 4:
                self.span_end = stop
                return
        if span is not None:
            collected.extend(interleaved_payloads(span, self.span_start, self.span_end))
            self.span_buffer = None
        collected.append(buf[start:stop])

    def _collected_frame_done(self, now: float) -> None:
        self.frame_open = False
        complete = self.frame_clean
        span = self.span_buffer
        if span is not None:
            self.span_buffer = None
            if complete and self.on_span is not None:
                self._span_done(
                    self.frame_ts, self.frame_has_key, span, self.span_start, self.span_end, now
                )
                return
        payloads = self.frame_payloads if complete else None
        self.frame_payloads = []
        self._frame_done(self.frame_ts, self.frame_has_key and complete, now, payloads=payloads)

    def _depacketize(
        self, payload: bytes, marker: bool, timestamp: int, gap: bool, now: float
    ) -> None:
        depacketizer = cast(Depacketizer, self.depacketizer)
        if gap:
            depacketizer.reset()
        try:
            frames = depacketizer.push(payload, marker, timestamp)
        except ValueError as exc:
            self.stats.malformed += 1
            log.debug("track %d: %s", self.stats.index, exc)
            return
        for frame in frames:
            keyframe = self.packet_flags is not None and _annexb_is_keyframe(self.codec, frame)
            self._frame_done(timestamp, keyframe, now, frame)

    def _frame_done(
        self,
        timestamp: int,
        keyframe: bool,
        now: float,
        data: bytes | None = None,
        payloads: list[bytes] | None = None,
    ) -> None:
        self._count_frame(keyframe, now)
        if self.on_frame is not None:
            index = self.stats.index
            self.on_frame(ReceivedFrame(index, timestamp, keyframe, now, data, payloads))

    def _span_done(
        self, timestamp: int, keyframe: bool, buf: bytes, start: int, end: int, now: float
    ) -> None:
        """A complete frame handed over as ``buf[start:end]`` (see :data:`SpanCallback`)."""
        assert self.on_span is not None
        self._count_frame(keyframe, now)
        self.on_span(self.stats.index, timestamp, keyframe, buf, start, end, now)

    def _count_frame(self, keyframe: bool, now: float) -> None:
        stats = self.stats
        stats.frames += 1
        stats.frame_arrivals.append(now)
        if stats.first_frame_at is None:
            stats.first_frame_at = now
        if keyframe:
            stats.keyframes += 1
            if stats.first_keyframe_at is None:
                stats.first_keyframe_at = now
        if self.on_counted is not None:
            self.on_counted(self, keyframe, now)


def receiver_for(
    index: int,
    media: MediaDescription,
    control_url: str,
    *,
    on_frame: FrameCallback | None = None,
    relay_payloads: bool = False,
    on_span: SpanCallback | None = None,
    depacketize: bool = False,
) -> RtpReceiver:
    """The receiver of track ``index``, an SDP media section; its ``params`` are None when
    the SDP does not say enough to decode the codec."""
    stats = TrackStats(
        index=index,
        media=media.media,
        encoding=media.encoding,
        clock_rate=media.clock_rate,
        control_url=control_url,
    )
    params = None
    try:
        params = params_from_sdp_media(media)
    except (ValueError, KeyError, AttributeError) as exc:
        log.debug("no codec parameters for %s track: %s", media.encoding, exc)
    return RtpReceiver(
        stats,
        params,
        on_frame=on_frame,
        relay_payloads=relay_payloads,
        on_span=on_span,
        depacketize=depacketize,
    )
