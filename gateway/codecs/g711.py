"""G.711 over RTP (RFC 3551 section 4.5.14): PCMU (static PT 0) and PCMA (static PT 8).

One byte per sample per channel at 8000 Hz. A frame (a block of samples) is split into
payloads of whole 20 ms blocks that fit the maximum payload; each later payload starts at a
later sample, which :meth:`G711Packetizer.timestamp_offsets` reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.codecs.base import (
    DEFAULT_MAX_PAYLOAD,
    RELAY_MAX_PAYLOAD,
    CodecParams,
    Depacketizer,
    Packetizer,
)

CLOCK_RATE = 8000
STATIC_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
SAMPLES_PER_20MS = CLOCK_RATE // 50


class G711Packetizer(Packetizer):
    def __init__(
        self,
        params: CodecParams,
        payload_type: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        name = params.name.upper()
        if name not in STATIC_PAYLOAD_TYPES:
            raise ValueError(f"G.711 codec must be PCMU or PCMA, got {params.name!r}")
        if params.channels < 1:
            raise ValueError(f"G.711 channel count must be at least 1, got {params.channels}")
        if payload_type is None:
            payload_type = STATIC_PAYLOAD_TYPES[name]
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, got {payload_type}")
        if max_payload < params.channels:
            raise ValueError(f"max_payload {max_payload} is too small for G.711")
        self.params = params
        self.name = name
        self.payload_type = payload_type
        self.max_payload = max_payload
        block = SAMPLES_PER_20MS * params.channels
        # Whole 20 ms blocks when at least one fits, else whole sample frames.
        self.chunk_size = (max_payload // block) * block or (
            max_payload - max_payload % params.channels
        )
        # Any mono payload up to our MTU is whole samples; multi-channel ones need a size check.
        self.relay_table = b"\x01" * 256 if params.channels == 1 else None

    def packetize(self, frame: bytes, keyframe: bool) -> list[bytes]:
        if len(frame) % self.params.channels:
            raise ValueError(
                f"G.711 frame of {len(frame)} bytes is not a whole number of "
                f"{self.params.channels}-channel samples"
            )
        if len(frame) <= self.chunk_size:
            return [bytes(frame)] if frame else []
        view = memoryview(frame)
        step = self.chunk_size
        return [view[pos : pos + step].tobytes() for pos in range(0, len(frame), step)]

    def relay(self, payloads: Sequence[bytes], keyframe: bool) -> list[bytes] | None:
        """A camera's packets as they are: every G.711 payload is a block of whole samples that
        stands on its own, so only the size (our MTU, whole samples) is checked."""
        channels = self.params.channels
        for payload in payloads:
            if not 0 < len(payload) <= RELAY_MAX_PAYLOAD or len(payload) % channels:
                return None
        return payloads if isinstance(payloads, list) else list(payloads)

    def timestamp_offsets(self, payloads: Sequence[bytes]) -> list[int] | None:
        if len(payloads) < 2:
            return None
        offsets = []
        samples = 0
        for payload in payloads:
            offsets.append(samples)
            samples += len(payload) // self.params.channels
        return offsets

    def sdp_attributes(self) -> list[str]:
        channels = f"/{self.params.channels}" if self.params.channels > 1 else ""
        return [f"rtpmap:{self.payload_type} {self.name}/{CLOCK_RATE}{channels}"]


class G711Depacketizer(Depacketizer):
    """Every payload is a frame of samples; nothing to reassemble."""

    def push(self, payload: bytes, marker: bool, timestamp: int) -> list[bytes]:
        return [bytes(payload)] if payload else []
