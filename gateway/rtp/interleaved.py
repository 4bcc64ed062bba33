"""RTP and RTCP interleaved in an RTSP connection (RFC 2326 section 10.12; RFC 7826 14).

Each packet is framed as ``$``, a channel byte, a 16-bit length and the packet. This is the
framing's one home: framing packets, the header struct the relay path writes in one go,
and walking the frames of a buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

# "$", channel, length, then a plain 12-byte RTP header: V/P/X/CC, M/PT, sequence number,
# timestamp, SSRC.
INTERLEAVED_HEADER: Final = struct.Struct("!cBHBBHII")

# Prebuilt "$" + channel prefixes: the hot path then only packs the length.
_CHANNEL_PREFIX: Final = tuple(bytes((0x24, ch)) for ch in range(256))


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
        if end - pos < 4 or data[pos] != 0x24:
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
