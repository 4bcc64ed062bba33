"""Wall-clock stamps carried inside the video, for measuring camera-to-reader latency.

A simulated camera started with ``timestamp_sei`` puts one SEI NAL unit (user data
unregistered) in front of every video access unit, holding the time it sent the frame.
Relays pass SEI through untouched, so a reader can measure the latency any relay adds
without clock tricks. The payload uses only non-zero bytes, so no emulation prevention is
needed and the marker can be found with a plain ``bytes.find`` in RTP payloads.
"""

from __future__ import annotations

import time

MARKER = b"onvif-gw-latency"  # the 16-byte UUID field of the SEI message
_BODY = 16 + 16  # UUID + 16 hex digits of nanoseconds


def latency_sei(codec: str, now_ns: int | None = None) -> bytes:
    """One SEI NAL unit (no start code) stamped with ``now_ns`` (default: now)."""
    stamp = f"{(time.time_ns() if now_ns is None else now_ns) & (1 << 64) - 1:016x}".encode()
    message = bytes((5, _BODY)) + MARKER + stamp + b"\x80"  # payloadType 5, size, rbsp stop
    if codec == "H264":
        return b"\x06" + message
    if codec == "H265":
        return b"\x4e\x01" + message  # prefix SEI, layer 0, temporal id 1
    raise ValueError(f"no timestamp SEI for codec {codec!r}")


def find_timestamp(data: bytes | memoryview) -> int | None:
    """The stamp (ns since the epoch) in an RTP payload or access unit, if present."""
    raw = bytes(data)
    at = raw.find(MARKER)
    if at < 0 or len(raw) < at + _BODY:
        return None
    try:
        return int(raw[at + 16 : at + _BODY], 16)
    except ValueError:
        return None
