"""The contract every RTP payload format module in ``gateway.codecs`` implements.

A *frame* is one access unit as the demuxer hands it over (an Annex-B H.264/H.265 access
unit, one raw AAC frame, a block of G.711 samples). A packetizer turns a frame into RTP
*payloads* (no RTP header: the media layer adds sequence numbers and timestamps once per
stream, so the bytes can be shared by every client). A depacketizer does the reverse and is
used by tests and benchmark readers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

# Largest RTP payload we emit: 1500-byte Ethernet MTU minus IPv4/UDP/RTP headers and room
# for tunnelling overhead. TCP-interleaved clients get the same packets, built once.
DEFAULT_MAX_PAYLOAD = 1400

# Largest camera payload relayed as it is: a full 1500-byte MTU over IPv6/UDP with a 12-byte
# RTP header. Cameras fragment for their own MTU; anything larger is repacketized.
RELAY_MAX_PAYLOAD = 1500 - 40 - 8 - 12


@dataclass(frozen=True)
class CodecParams:
    """What the SDP and the ONVIF encoder configuration need to know about a track."""

    name: str  # "H264", "H265", "AAC", "PCMU", "PCMA"
    media: str  # "video" | "audio"
    clock_rate: int
    channels: int = 1
    width: int = 0
    height: int = 0
    # H.264: SPS, PPS; H.265: VPS, SPS, PPS (raw NAL units, no start codes).
    parameter_sets: tuple[bytes, ...] = ()
    # AAC: AudioSpecificConfig.
    config: bytes = b""
    profile: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Packetizer(ABC):
    """Frame -> RTP payloads. Stateful only where the format needs it (parameter sets)."""

    params: CodecParams
    payload_type: int
    # For relaying packets straight from a receive buffer (StreamHub.push_span): indexed by a
    # payload's first byte, non-zero when a payload starting with it, of relay_min_payload to
    # RELAY_MAX_PAYLOAD bytes, may go on as it is. None when formats must see whole payloads.
    relay_table: bytes | None = None
    relay_min_payload = 1

    @abstractmethod
    def packetize(self, frame: bytes, keyframe: bool) -> list[bytes]:
        """RTP payloads for one frame, in order; the last one carries the marker bit."""

    @abstractmethod
    def sdp_attributes(self) -> list[str]:
        """``a=rtpmap`` and ``a=fmtp`` lines (without ``a=`` control) for this track."""

    def relay(self, payloads: Sequence[bytes], keyframe: bool) -> list[bytes] | None:
        """A source's own RTP payloads of one frame, to send on as they are, or ``None`` when
        they must be depacketized and packetized again. Formats that relay override this."""
        return None

    def timestamp_offsets(self, payloads: Sequence[bytes]) -> list[int] | None:
        """Each payload's RTP timestamp minus the frame's, or ``None`` when all payloads
        share the frame's timestamp (video; fragments of one AAC access unit). Formats that
        split a block of samples across packets (G.711) override this."""
        return None


class Depacketizer(ABC):
    """RTP payloads -> frames; tolerant of loss, strict about malformed payloads."""

    @abstractmethod
    def push(self, payload: bytes, marker: bool, timestamp: int) -> list[bytes]:
        """Feed one RTP payload; return frames completed by it (usually zero or one).

        Malformed payloads raise ``ValueError`` with a precise message; nothing else escapes.
        """

    def reset(self) -> None:  # noqa: B027 - optional hook, stateless formats need nothing
        """Forget any partially assembled frame; the caller calls this on a sequence gap."""
