"""RTP and RTCP on the wire (RFC 3550), as far as the gateway needs them itself.

The fixed 12-byte RTP header, the RTCP sender report the hub sends (built and parsed, with
report blocks), and the NTP timestamps it carries, which the SNTP server
(:mod:`gateway.egress.ntp`) uses too. Receiving RTP is :mod:`gateway.rtp.receiver`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

SDES_END = 0
SDES_CNAME = 1

# Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET = 2_208_988_800

FIXED_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
# A TCP-interleaved packet's "$", channel and length (RFC 2326 10.12), then the fixed header.
_EXTENSION_HEADER = struct.Struct("!HH")
_RTCP_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packets, octets
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_U32 = struct.Struct("!I")


def _strip_padding(data: bytes, start: int, what: str) -> int:
    """End offset of ``data`` without its padding (last byte = padding count incl. itself)."""
    pad = data[-1]
    if pad == 0:
        raise ValueError(f"{what} padding length 0 is invalid")
    if pad > len(data) - start:
        raise ValueError(f"{what} padding length {pad} exceeds payload")
    return len(data) - pad


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must fit in {bits} bits, got {value}")


# --------------------------------------------------------------------------------------------
# NTP timestamps (RFC 3550 section 4): 32.32 fixed point seconds since 1900.


def ntp_from_unix(unix_time: float) -> int:
    """64-bit NTP timestamp for a Unix time in seconds (the caller reads the clock)."""
    if unix_time < -NTP_UNIX_OFFSET:
        raise ValueError(f"time {unix_time} is before the NTP epoch")
    seconds = int(unix_time // 1)
    fraction = min(int((unix_time - seconds) * (1 << 32)), 0xFFFFFFFF)
    return (((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | fraction


def unix_from_ntp(ntp: int, *, near: float | None = None) -> float:
    """Unix time for a 64-bit NTP timestamp: in the era closest to ``near`` (a Unix time),
    or without it in era 0 (until 2036)."""
    seconds = (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32)
    if near is not None:
        era_seconds = 1 << 32
        seconds += round((near + NTP_UNIX_OFFSET - seconds) / era_seconds) * era_seconds
    return seconds - NTP_UNIX_OFFSET


# --------------------------------------------------------------------------------------------
# RTCP


def _rtcp_header(count: int, packet_type: int, body_size: int) -> bytes:
    """Common RTCP header; ``body_size`` (after the 4 header bytes) is a multiple of 4."""
    return _RTCP_HEADER.pack(0x80 | count, packet_type, body_size // 4)


def _rtcp_body(data: bytes, packet_type: int, what: str) -> tuple[int, bytes]:
    """Validate one whole RTCP packet of ``packet_type``; return (count field, body)."""
    data = bytes(data)
    if len(data) < 4:
        raise ValueError(f"RTCP packet too short: {len(data)} bytes")
    b0, actual_type, length = _RTCP_HEADER.unpack_from(data)
    version = b0 >> 6
    if version != RTP_VERSION:
        raise ValueError(f"RTCP version must be 2, got {version}")
    if actual_type != packet_type:
        raise ValueError(f"RTCP packet type {actual_type} is not {what} ({packet_type})")
    size = 4 * (length + 1)
    if size != len(data):
        raise ValueError(f"RTCP length field says {size} bytes but the packet has {len(data)}")
    end = len(data)
    if b0 & 0x20:
        end = _strip_padding(data, 4, "RTCP")
    return b0 & 0x1F, data[4:end]


@dataclass(frozen=True)
class ReportBlock:
    """Reception statistics for one source (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int  # fixed point /256
    cumulative_lost: int  # signed 24 bits (duplicates can make it negative)
    highest_sequence: int  # extended: cycles << 16 | seq
    jitter: int
    last_sr: int  # middle 32 bits of the NTP timestamp of the last SR, 0 if none
    delay_since_last_sr: int  # units of 1/65536 s

    SIZE = 24

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        if len(data) - offset < cls.SIZE:
            raise ValueError(f"RTCP report block truncated: {len(data) - offset} bytes")
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        return cls(
            ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr
        )

    def __bytes__(self) -> bytes:
        _check_range("report block fraction lost", self.fraction_lost, 8)
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise ValueError(
                f"report block cumulative lost must fit in 24 signed bits, got "
                f"{self.cumulative_lost}"
            )
        for name, value in (
            ("SSRC", self.ssrc),
            ("highest sequence", self.highest_sequence),
            ("jitter", self.jitter),
            ("LSR", self.last_sr),
            ("DLSR", self.delay_since_last_sr),
        ):
            _check_range(f"report block {name}", value, 32)
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            self.cumulative_lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )


def _parse_report_blocks(
    body: bytes, offset: int, count: int, what: str
) -> tuple[ReportBlock, ...]:
    need = offset + count * ReportBlock.SIZE
    if len(body) < need:
        raise ValueError(
            f"RTCP {what} with {count} report blocks needs {need + 4} bytes, got {len(body) + 4}"
        )
    return tuple(ReportBlock.parse(body, offset + i * ReportBlock.SIZE) for i in range(count))


def _check_report_count(reports: tuple[ReportBlock, ...]) -> None:
    if len(reports) > 31:
        raise ValueError(f"an RTCP report carries at most 31 report blocks, got {len(reports)}")


@dataclass(frozen=True)
class SenderReport:
    """RTCP SR (PT 200). Profile-specific extensions after the blocks are ignored."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        count, body = _rtcp_body(data, RTCP_SR, "a sender report")
        if len(body) < _SENDER_INFO.size:
            raise ValueError(f"RTCP sender report too short: {len(body) + 4} bytes")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        reports = _parse_report_blocks(body, _SENDER_INFO.size, count, "sender report")
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports)

    def __bytes__(self) -> bytes:
        _check_report_count(self.reports)
        _check_range("SR NTP timestamp", self.ntp_timestamp, 64)
        for name, value in (
            ("SSRC", self.ssrc),
            ("RTP timestamp", self.rtp_timestamp),
            ("packet count", self.packet_count),
            ("octet count", self.octet_count),
        ):
            _check_range(f"SR {name}", value, 32)
        blocks = b"".join(bytes(block) for block in self.reports)
        body = (
            _SENDER_INFO.pack(
                self.ssrc,
                self.ntp_timestamp,
                self.rtp_timestamp,
                self.packet_count,
                self.octet_count,
            )
            + blocks
        )
        return _rtcp_header(len(self.reports), RTCP_SR, len(body)) + body
