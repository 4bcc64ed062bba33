"""Walks over spans of TCP-interleaved RTP packets: the per-packet loops of the relay path.

A span is a run of ``$``-framed RTP packets lying back to back in one buffer, each
``$ channel length(16)`` followed by the packet. Two walks run for every video frame the
native ingest relays, one step per packet, so they are the gateway's hottest loops:

- :func:`continue_span` (the RTSP reader): how far the packets simply continue a frame.
- :func:`stamp_span` (the hub): a copy of a frame's span with our RTP headers written over
  the camera's.

Both are pure functions (bytes and integers in, integers and bytes out). They are written
here in Python, which is the reference, and again in C (``_spans.c``), which the package
uses when it was built: ``ACCELERATED`` says which. Tests hold the two to the same answers.
"""

from __future__ import annotations

from gateway.codecs.h264 import rtp_packet_flags as _h264_flags
from gateway.codecs.h265 import rtp_packet_flags as _h265_flags
from gateway.rtp.interleaved import INTERLEAVED_HEADER
from gateway.rtp.packet import FIXED_HEADER

# Which codec's rules say whether a payload carries keyframe data (``key_codec``).
KEY_NONE = 0
KEY_H264 = 1
KEY_H265 = 2

# Bits of the flags continue_span returns.
SPAN_KEY = 1  # a packet taken carries keyframe data (H.264 IDR, H.265 IRAP)
SPAN_END = 2  # the last packet taken has the marker bit: the frame is complete

# Per key_codec: fragmentation units by payload header byte, and where their start bit is.
_FRAGMENTS = {
    KEY_NONE: (bytes(256), 0),
    KEY_H264: (bytes(b & 0x1F in (28, 29) for b in range(256)), 1),  # FU-A, FU-B
    KEY_H265: (bytes((b >> 1) & 0x3F == 49 for b in range(256)), 2),
}


def continue_span(
    buf: bytes | bytearray,
    pos: int,
    size: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    room: int,
    key_codec: int,
) -> tuple[int, int, int, int]:
    """Take the packets from ``buf[pos:size]`` on while each continues the frame whose last
    packet had sequence number ``seq``: the channel of the first, a plain header (version 2,
    no padding, extension or CSRCs), sequence number ``seq + 1`` (no wrap), the same
    ``timestamp`` and ``ssrc``, and a non-empty payload that fits in ``room`` bytes. A packet
    with the marker bit is taken and ends the walk (``SPAN_END``).

    With ``key_codec`` set, packets that start a NAL unit are checked for keyframe data until
    one has it (``SPAN_KEY``); fragments that continue a NAL unit are not, as their start was.

    Returns ``(pos, seq, room, flags)`` after the last packet taken; ``pos`` is unchanged when
    none was taken."""
    if pos < 0 or size > len(buf):
        raise ValueError("span outside the buffer")
    if key_codec not in _FRAGMENTS:
        raise ValueError("key_codec must be KEY_NONE, KEY_H264 or KEY_H265")
    flags = 0
    if pos + 1 >= size:
        return pos, seq, room, flags
    channel = buf[pos + 1]
    unpack = FIXED_HEADER.unpack_from
    fu_types, fu_start = _FRAGMENTS[key_codec]
    # The "$" prefix is read inline rather than through gateway.rtp.interleaved: this is the
    # per-packet loop of the relay path, where a function call per packet would cost more
    # than the rest of the step.
    while pos + 16 < size and buf[pos] == 0x24 and buf[pos + 1] == channel:
        end = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
        payload_size = end - pos - 16
        if end > size or payload_size <= 0 or payload_size > room:
            break
        b0, b1, next_seq, next_ts, next_ssrc = unpack(buf, pos + 4)
        if b0 != 0x80 or next_seq != seq + 1 or next_ts != timestamp or next_ssrc != ssrc:
            break
        if key_codec and not flags & SPAN_KEY:
            at = pos + 16
            # (A fragment too short to hold its start bit carries no keyframe data either.)
            continues_nal = fu_types[buf[at]] and (
                at + fu_start >= end or not buf[at + fu_start] & 0x80
            )
            if not continues_nal and _starts_key(key_codec, buf, at, end):
                flags |= SPAN_KEY
        room -= payload_size
        seq = next_seq
        pos = end
        if b1 & 0x80:
            flags |= SPAN_END
            break
    return pos, seq, room, flags


def _starts_key(key_codec: int, buf: bytes | bytearray, start: int, end: int) -> bool:
    """Keyframe data in a payload that does not continue a fragmented NAL unit."""
    flags = _h264_flags if key_codec == KEY_H264 else _h265_flags
    keyframe, continuation = flags(buf, start, end)
    return keyframe and not continuation


def stamp_span(
    data: bytes | bytearray,
    start: int,
    end: int,
    channel: int,
    payload_type: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    shortest: int,
    longest: int,
    table: bytes,
) -> tuple[bytearray, int] | None:
    """A copy of the packets in ``data[start:end]`` with each ``$`` prefix and fixed RTP
    header rewritten: ``channel``, version 2, ``payload_type``, sequence numbers from ``seq``
    on, ``timestamp``, ``ssrc``, and the marker bit on the last packet only. Returns the copy
    and the number of packets, or None when a packet's length (header included) is outside
    ``shortest..longest``, runs past ``end``, or its payload's first byte has a zero entry in
    ``table`` (the codec says that payload may not go on as it is)."""
    if not 0 <= start <= end <= len(data):
        raise ValueError("span outside the buffer")
    if shortest < 13 or len(table) != 256:
        raise ValueError("shortest must leave a payload byte and table have 256 entries")
    blob = bytearray(memoryview(data)[start:end])
    size = end - start
    pack_into = INTERLEAVED_HEADER.pack_into
    packets = 0
    pos = 0
    while pos < size:
        if pos + 4 > size:
            return None
        length = (blob[pos + 2] << 8) | blob[pos + 3]
        stop = pos + 4 + length
        if not shortest <= length <= longest or stop > size or not table[blob[pos + 16]]:
            return None
        marker = 0x80 if stop == size else 0
        pack_into(
            blob, pos, b"$", channel, length, 0x80, payload_type | marker, seq, timestamp, ssrc
        )
        packets += 1
        seq = (seq + 1) & 0xFFFF
        pos = stop
    return blob, packets


# The Python versions stay reachable under these names, for the tests that compare them.
reference_continue_span = continue_span
reference_stamp_span = stamp_span

try:
    from gateway.rtp._spans import continue_span, stamp_span  # type: ignore[no-redef]
except ImportError:  # not built (a plain checkout): the Python versions above
    ACCELERATED = False
else:
    ACCELERATED = True
# For the start-up log and the benchmark's machine line.
IMPLEMENTATION = "C" if ACCELERATED else "Python (C part not built)"
