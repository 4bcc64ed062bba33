"""RTP and RTCP interleaved in an RTSP connection (RFC 2326 section 10.12; RFC 7826 14).

Each packet is framed as ``$``, a channel byte, a 16-bit length and the packet. This is the
framing's one home: framing packets, the header struct the relay path writes in one go,
and walking the frames of a buffer: :func:`walk_interleaved` over what a connection
received (to each channel's receiver), :func:`iter_frames` over a span known to hold frames.
The RTSP message parser and the span kernels (:mod:`gateway.rtp.spans`, ``_spans.c``) read
the same prefix in their own loops, where a call per packet would cost too much.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final, Protocol

FRAME_START: Final = 0x24  # "$"

# "$", channel, length, then a plain 12-byte RTP header: V/P/X/CC, M/PT, sequence number,
# timestamp, SSRC.
INTERLEAVED_HEADER: Final = struct.Struct("!cBHBBHII")

# Prebuilt "$" + channel prefixes: the hot path then only packs the length.
_CHANNEL_PREFIX: Final = tuple(bytes((FRAME_START, ch)) for ch in range(256))


def interleave(channel: int, packet: bytes) -> bytes:
    """``$``-frame one RTP/RTCP packet for channel ``channel``."""
    size = len(packet)
    if size > 0xFFFF:
        raise ValueError(f"interleaved packet of {size} bytes exceeds 65535")
    return b"".join((_CHANNEL_PREFIX[channel], size.to_bytes(2, "big"), packet))


def frame_end(data: bytes | bytearray | memoryview, pos: int) -> int:
    """Where the ``$`` frame starting at ``data[pos]`` ends (its 4-byte prefix must be there)."""
    return pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])


def iter_frames(data: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[int]:
    """Where each ``$`` frame laid back to back in ``data[start:end]`` starts; ValueError
    when the framing does not add up (a byte that is not ``$``, a frame past ``end``)."""
    pos = start
    while pos < end:
        if end - pos < 4 or data[pos] != FRAME_START:
            raise ValueError(f"no interleaved frame at offset {pos}")
        stop = frame_end(data, pos)
        if stop > end:
            raise ValueError(f"interleaved frame at offset {pos} does not fit its span")
        yield pos
        pos = stop


def frame_offsets(data: bytes | bytearray, count: int) -> list[int]:
    """Where each of the ``count`` frames laid back to back from ``data[0]`` starts."""
    out = []
    pos = 0
    for _ in range(count):
        out.append(pos)
        pos = frame_end(data, pos)
    return out


def interleaved_payloads(data: bytes | bytearray, start: int, end: int) -> list[bytes]:
    """The payloads of the RTSP-interleaved RTP packets in ``data[start:end]``, each framed
    as ``$``, channel, 16-bit length, then a packet with a plain 12-byte header (no CSRC,
    extension or padding). ValueError when the framing does not add up."""
    payloads = []
    for pos in iter_frames(data, start, end):
        stop = frame_end(data, pos)
        if stop - pos < 16:
            raise ValueError(f"interleaved frame at offset {pos} does not fit its span")
        payloads.append(bytes(data[pos + 16 : stop]))
    return payloads


class InterleavedReceiver(Protocol):
    """What :func:`walk_interleaved` feeds: one track's receiving side
    (:class:`gateway.rtp.receiver.RtpReceiver`)."""

    span_buffer: bytes | None
    span_end: int

    def feed(self, packet: bytes, now: float) -> None: ...

    def feed_at(self, buf: bytes, at: int, end: int, now: float, framed: bool) -> None: ...

    def extend_span(self, buf: bytes, pos: int, size: int, now: float) -> int: ...

    def rtcp(self) -> None: ...


# Interleaved channel -> (the receiver of its track, True for the RTCP channel).
Channels = dict[int, tuple[InterleavedReceiver, bool]]


def walk_interleaved(data: bytes, channels: Channels, now: float) -> int:
    """Feed the whole ``$`` frames at the start of ``data`` to their receivers.

    Returns where the walk stopped: ``len(data)``, the start of a frame the buffer cuts, or
    a byte that is not ``$`` (an RTSP message, for the caller's parser). Frames on channels
    without a receiver are skipped. A frame that continues its receiver's open span goes to
    ``extend_span``, which takes a run of them at a time."""
    pos = 0
    size = len(data)
    # The frame length is read inline: this loop runs once per packet of every camera.
    while pos + 4 <= size and data[pos] == FRAME_START:
        end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
        if end > size:
            break
        target = channels.get(data[pos + 1])
        if target is not None:
            track, is_rtcp = target
            if is_rtcp:
                track.rtcp()
            else:
                if track.span_buffer is data and track.span_end == pos:
                    taken = track.extend_span(data, pos, size, now)
                    if taken > pos:
                        pos = taken
                        continue
                track.feed_at(data, pos + 4, end, now, True)
        pos = end
    return pos
