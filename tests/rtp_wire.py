"""RTP and RTCP wire types for tests: what the gateway itself never builds or parses.

The gateway writes RTP headers in its hot path and sends RTCP sender reports
(:mod:`gateway.rtp.packet`); tests also need to parse what it sends and to build packets
for the depacketizers, which is what these are for.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.rtp.packet import (
    _RTCP_HEADER,
    FIXED_HEADER,
    RTCP_BYE,
    RTCP_RR,
    RTCP_SDES,
    RTCP_SR,
    RTP_HEADER_SIZE,
    RTP_VERSION,
    SDES_CNAME,
    SDES_END,
    ReportBlock,
    SenderReport,
    _check_range,
    _check_report_count,
    _parse_report_blocks,
    _rtcp_body,
    _rtcp_header,
    _strip_padding,
)

_EXTENSION_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1). Padding is kept as a length only."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    # Header extension (RFC 3550 5.3.1): profile-defined 16 bits and a multiple of 4 bytes.
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        data = bytes(data)
        if len(data) < RTP_HEADER_SIZE:
            raise ValueError(f"RTP packet too short: {len(data)} bytes")
        b0, b1, seq, timestamp, ssrc = FIXED_HEADER.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP version must be 2, got {version}")
        csrc_count = b0 & 0x0F
        pos = RTP_HEADER_SIZE + 4 * csrc_count
        if len(data) < pos:
            raise ValueError(
                f"RTP packet too short for {csrc_count} CSRCs: {len(data)} bytes, need {pos}"
            )
        csrc = struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_SIZE)
        extension_profile: int | None = None
        extension = b""
        if b0 & 0x10:
            if len(data) < pos + 4:
                raise ValueError("RTP header extension truncated: no room for its header")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            pos += 4
            if len(data) < pos + 4 * words:
                raise ValueError(
                    f"RTP header extension truncated: {4 * words} bytes declared, "
                    f"{len(data) - pos} present"
                )
            extension = data[pos : pos + 4 * words]
            pos += 4 * words
        end = len(data)
        padding_size = 0
        if b0 & 0x20:
            if end == pos:
                raise ValueError("RTP padding bit set but the packet has no payload")
            end = _strip_padding(data, pos, "RTP")
            padding_size = len(data) - end
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=data[pos:end],
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=extension_profile,
            extension=extension,
            padding_size=padding_size,
        )

    def __bytes__(self) -> bytes:
        _check_range("RTP payload type", self.payload_type, 7)
        _check_range("RTP sequence number", self.sequence_number, 16)
        _check_range("RTP timestamp", self.timestamp, 32)
        _check_range("RTP SSRC", self.ssrc, 32)
        if len(self.csrc) > 15:
            raise ValueError(f"RTP packet can carry at most 15 CSRCs, got {len(self.csrc)}")
        if not 0 <= self.padding_size <= 255:
            raise ValueError(f"RTP padding size must be 0..255, got {self.padding_size}")
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            b0 |= 0x20
        if self.extension_profile is not None:
            b0 |= 0x10
        parts = [
            FIXED_HEADER.pack(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        ]
        for source in self.csrc:
            _check_range("RTP CSRC", source, 32)
            parts.append(_U32.pack(source))
        if self.extension_profile is not None:
            _check_range("RTP extension profile", self.extension_profile, 16)
            if len(self.extension) % 4 or len(self.extension) >= 4 << 16:
                raise ValueError(
                    f"RTP header extension must be a multiple of 4 bytes under 256 KiB, "
                    f"got {len(self.extension)}"
                )
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        elif self.extension:
            raise ValueError("RTP header extension data given without an extension profile")
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes((self.padding_size,)))
        return b"".join(parts)


def rtp_headers(
    count: int,
    payload_type: int,
    first_seq: int,
    timestamp: int,
    ssrc: int,
    timestamp_offsets: Sequence[int] | None = None,
) -> list[bytes]:
    """``count`` fixed 12-byte RTP headers for one frame: consecutive sequence numbers
    (wrapping at 2^16), the frame's timestamp, the marker bit on the last one.

    ``timestamp_offsets`` (one per packet, from ``Packetizer.timestamp_offsets``) is for
    audio frames split across packets, whose later packets start at later samples.
    """
    _check_range("RTP payload type", payload_type, 7)
    _check_range("RTP SSRC", ssrc, 32)
    if timestamp_offsets is None:
        timestamps: Iterable[int] = itertools.repeat(timestamp & 0xFFFFFFFF, count)
    elif len(timestamp_offsets) != count:
        raise ValueError(f"{len(timestamp_offsets)} timestamp offsets given for {count} packets")
    else:
        timestamps = [(timestamp + offset) & 0xFFFFFFFF for offset in timestamp_offsets]
    pack = FIXED_HEADER.pack
    last = count - 1
    marked = payload_type | 0x80
    return [
        pack(0x80, marked if i == last else payload_type, (first_seq + i) & 0xFFFF, ts, ssrc)
        for i, ts in enumerate(timestamps)
    ]


def build_packets(
    payloads: Sequence[bytes],
    payload_type: int,
    first_seq: int,
    timestamp: int,
    ssrc: int,
    timestamp_offsets: Sequence[int] | None = None,
) -> list[bytes]:
    """Complete RTP packets for one frame's payloads (headers as :func:`rtp_headers`)."""
    headers = rtp_headers(
        len(payloads), payload_type, first_seq, timestamp, ssrc, timestamp_offsets
    )
    return [header + payload for header, payload in zip(headers, payloads, strict=True)]


def seq_distance(newer: int, older: int) -> int:
    """Signed distance between two 16-bit sequence numbers, in -32768..32767."""
    return ((newer - older + 0x8000) & 0xFFFF) - 0x8000


def ntp_short(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as used by LSR in report blocks."""
    return (ntp >> 16) & 0xFFFFFFFF


def dlsr_units(seconds: float) -> int:
    """A delay in units of 1/65536 s for the DLSR field (clamped to 32 bits)."""
    return max(0, min(int(seconds * 65536), 0xFFFFFFFF))


@dataclass(frozen=True)
class ReceiverReport:
    """RTCP RR (PT 201)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> ReceiverReport:
        count, body = _rtcp_body(data, RTCP_RR, "a receiver report")
        if len(body) < 4:
            raise ValueError(f"RTCP receiver report too short: {len(body) + 4} bytes")
        reports = _parse_report_blocks(body, 4, count, "receiver report")
        return cls(_U32.unpack_from(body)[0], reports)

    def __bytes__(self) -> bytes:
        _check_report_count(self.reports)
        _check_range("RR SSRC", self.ssrc, 32)
        body = _U32.pack(self.ssrc) + b"".join(bytes(block) for block in self.reports)
        return _rtcp_header(len(self.reports), RTCP_RR, len(body)) + body


@dataclass(frozen=True)
class SourceDescription:
    """RTCP SDES (PT 202): per source, a tuple of (item type, value) items, e.g. CNAME."""

    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> SourceDescription:
        return cls(((ssrc, ((SDES_CNAME, cname.encode()),)),))

    @classmethod
    def parse(cls, data: bytes) -> SourceDescription:
        count, body = _rtcp_body(data, RTCP_SDES, "a source description")
        chunks = []
        pos = 0
        for _ in range(count):
            if len(body) < pos + 4:
                raise ValueError(f"RTCP SDES chunk truncated at byte {pos + 4}")
            ssrc = _U32.unpack_from(body, pos)[0]
            pos += 4
            items = []
            while True:
                if pos >= len(body):
                    raise ValueError("RTCP SDES chunk has no end item")
                item_type = body[pos]
                if item_type == SDES_END:
                    # The chunk ends with a null item and zero padding to a 32-bit boundary.
                    pos = (pos + 4) & ~3
                    break
                if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                    raise ValueError(f"RTCP SDES item {item_type} truncated")
                length = body[pos + 1]
                items.append((item_type, body[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            chunks.append((ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        if len(self.chunks) > 31:
            raise ValueError(f"an RTCP SDES carries at most 31 chunks, got {len(self.chunks)}")
        parts = []
        for ssrc, items in self.chunks:
            _check_range("SDES SSRC", ssrc, 32)
            chunk = bytearray(_U32.pack(ssrc))
            for item_type, value in items:
                _check_range("SDES item type", item_type, 8)
                if item_type == SDES_END or len(value) > 255:
                    raise ValueError(
                        f"SDES item type must be 1..255 with at most 255 bytes, got type "
                        f"{item_type} with {len(value)} bytes"
                    )
                chunk += bytes((item_type, len(value))) + value
            chunk += bytes(4 - len(chunk) % 4)  # end item plus padding, at least one zero
            parts.append(bytes(chunk))
        body = b"".join(parts)
        return _rtcp_header(len(self.chunks), RTCP_SDES, len(body)) + body


@dataclass(frozen=True)
class Bye:
    """RTCP BYE (PT 203) with an optional reason."""

    sources: tuple[int, ...]
    reason: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Bye:
        count, body = _rtcp_body(data, RTCP_BYE, "a BYE")
        if len(body) < 4 * count:
            raise ValueError(
                f"RTCP BYE with {count} sources needs {4 * count + 4} bytes, got {len(body) + 4}"
            )
        sources = struct.unpack_from(f"!{count}I", body)
        reason = b""
        pos = 4 * count
        if pos < len(body):
            length = body[pos]
            if pos + 1 + length > len(body):
                raise ValueError(f"RTCP BYE reason of {length} bytes exceeds the packet")
            reason = body[pos + 1 : pos + 1 + length]
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        if len(self.sources) > 31:
            raise ValueError(f"an RTCP BYE carries at most 31 sources, got {len(self.sources)}")
        if len(self.reason) > 255:
            raise ValueError(f"RTCP BYE reason is at most 255 bytes, got {len(self.reason)}")
        parts = []
        for source in self.sources:
            _check_range("BYE SSRC", source, 32)
            parts.append(_U32.pack(source))
        if self.reason:
            reason = bytes((len(self.reason),)) + self.reason
            parts.append(reason + bytes(-len(reason) % 4))
        body = b"".join(parts)
        return _rtcp_header(len(self.sources), RTCP_BYE, len(body)) + body


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye

_RTCP_TYPES: dict[
    int, type[SenderReport] | type[ReceiverReport] | type[SourceDescription] | type[Bye]
] = {
    RTCP_SR: SenderReport,
    RTCP_RR: ReceiverReport,
    RTCP_SDES: SourceDescription,
    RTCP_BYE: Bye,
}


def parse_rtcp_compound(data: bytes) -> list[RtcpPacket]:
    """The packets of a compound RTCP datagram, in order.

    Types we do not use (APP, feedback, XR...) are validated for framing and skipped.
    """
    data = bytes(data)
    if not data:
        raise ValueError("RTCP compound packet is empty")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        remaining = len(data) - pos
        if remaining < 4:
            raise ValueError(f"RTCP packet too short: {remaining} bytes")
        b0, packet_type, length = _RTCP_HEADER.unpack_from(data, pos)
        if b0 >> 6 != RTP_VERSION:
            raise ValueError(f"RTCP version must be 2, got {b0 >> 6}")
        size = 4 * (length + 1)
        if size > remaining:
            raise ValueError(f"RTCP length field says {size} bytes but {remaining} remain")
        kind = _RTCP_TYPES.get(packet_type)
        if kind is not None:
            packets.append(kind.parse(data[pos : pos + size]))
        pos += size
    return packets


def rtcp_compound(packets: Sequence[RtcpPacket]) -> bytes:
    """Serialise packets into one compound datagram (the caller orders them: SR/RR first)."""
    return b"".join(bytes(packet) for packet in packets)
