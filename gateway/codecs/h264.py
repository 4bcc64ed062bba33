"""H.264 RTP payload format (RFC 6184, packetization-mode=1), plus the NAL machinery that
H.265 (``gateway.codecs.h265``) shares: Annex-B splitting, aggregation/fragmentation and
in-band parameter sets.

Packetizing: each access unit is split at its start codes; consecutive NAL units that fit
together go out as one STAP-A, a NAL unit that fits alone as a single NAL unit packet, a
larger one as FU-A fragments of near-equal size. Before every IDR (or frame flagged as a
keyframe) the latest SPS/PPS are inserted when the access unit does not carry them, so a
client can join at any keyframe.
"""

from __future__ import annotations

import base64
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.codecs.base import (
    DEFAULT_MAX_PAYLOAD,
    RELAY_MAX_PAYLOAD,
    CodecParams,
    Depacketizer,
    Packetizer,
)

START_CODE = b"\x00\x00\x00\x01"

# NAL unit types (H.264 table 7-1, RFC 6184 table 1).
NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_STAP_A = 24
NAL_FU_A = 28

# Largest access unit a depacketizer assembles before giving up on it (bounded memory even
# when a sender never sets the marker bit nor changes the timestamp).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

Nal = bytes | memoryview


def split_annexb(data: bytes | memoryview) -> list[memoryview]:
    """NAL units of an Annex-B byte stream (3- or 4-byte start codes), as zero-copy views.

    Trailing zero bytes (the ``trailing_zero_8bits`` and the first byte of a 4-byte start
    code) are not part of a NAL unit and are dropped; empty NAL units are skipped.
    """
    view = memoryview(data)
    raw = data if isinstance(data, bytes) else view.tobytes()
    start = raw.find(b"\x00\x00\x01")
    if start < 0:
        if not raw:
            return []
        raise ValueError("Annex-B data has no start code")
    if raw[:start].strip(b"\x00"):
        raise ValueError(f"Annex-B data has {start} bytes of garbage before the first start code")
    nals: list[memoryview] = []
    start += 3
    while True:
        next_start = raw.find(b"\x00\x00\x01", start)
        end = len(raw) if next_start < 0 else next_start
        while end > start and raw[end - 1] == 0:
            end -= 1
        if end > start:
            nals.append(view[start:end])
        if next_start < 0:
            return nals
        start = next_start + 3


def nal_to_rbsp(nal: bytes | memoryview) -> bytes:
    """Remove emulation prevention bytes (``00 00 03`` -> ``00 00``)."""
    data = bytes(nal)
    parts = []
    pos = 0
    while True:
        found = data.find(b"\x00\x00\x03", pos)
        if found < 0:
            parts.append(data[pos:])
            return b"".join(parts)
        parts.append(data[pos : found + 2])
        pos = found + 3


def rtp_packet_flags(packet: bytes | bytearray, start: int, end: int) -> tuple[bool, bool]:
    """(carries IDR data, continues a fragmented NAL) for one H.264 RTP payload."""
    nal_type = packet[start] & 0x1F
    if nal_type == 28 or nal_type == 29:  # FU-A / FU-B
        if end - start < 2:
            return False, True
        fu_header = packet[start + 1]
        return (fu_header & 0x1F) == 5, not fu_header & 0x80
    if nal_type == 24:  # STAP-A: walk the aggregated NAL headers
        pos = start + 1
        while pos + 2 < end:
            if packet[pos + 2] & 0x1F == 5:
                return True, False
            pos += 2 + ((packet[pos] << 8) | packet[pos + 1])
        return False, False
    return nal_type == 5, False


class BitReader:
    """MSB-first bit reader with Exp-Golomb codes, for parameter sets (not the hot path)."""

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._size = len(data) * 8
        self._pos = 0
        self._what = what

    def u(self, bits: int) -> int:
        if self._pos + bits > self._size:
            raise ValueError(f"{self._what} truncated at bit {self._pos}")
        self._pos += bits
        return (self._value >> (self._size - self._pos)) & ((1 << bits) - 1)

    def skip(self, bits: int) -> None:
        self.u(bits)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError(f"{self._what} has an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


# --------------------------------------------------------------------------------------------
# Shared NAL packetizer / depacketizer machinery (H.264 and H.265)


class NalPacketizer(Packetizer):
    """Annex-B access unit -> single NAL / aggregation / fragmentation payloads."""

    codec: str
    header_size: int  # NAL unit header bytes: 1 (H.264) or 2 (H.265)
    fu_prefix_size: int  # payload header + FU header: 2 (FU-A) or 3 (H.265 FU)
    aud_type: int
    parameter_set_types: tuple[int, ...]  # in the order they are sent
    aggregation_type: int  # STAP-A (H.264) / AP (H.265)
    fragmentation_type: int  # FU-A (H.264) / FU (H.265)

    def __init__(self, params: CodecParams, payload_type: int, max_payload: int) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, got {payload_type}")
        if max_payload < self.fu_prefix_size + 1 + self.header_size:
            raise ValueError(f"max_payload {max_payload} is too small for {self.codec}")
        self.params = params
        self.payload_type = payload_type
        self.max_payload = max_payload
        self.parameter_sets: dict[int, bytes] = {}
        for nal in params.parameter_sets:
            self._remember(nal)
        # Whether the source's payloads suit the packetization our SDP offers (set by the
        # codec from the source's fmtp).
        self.relay_allowed = True

    @abstractmethod
    def nal_type(self, nal: Nal) -> int:
        """The NAL unit type from its header."""

    @abstractmethod
    def is_random_access(self, nal_type: int) -> bool:
        """Whether a NAL of this type starts a picture a decoder can start from."""

    @abstractmethod
    def is_vcl(self, nal_type: int) -> bool:
        """Whether a NAL of this type holds coded picture data (a slice)."""

    @abstractmethod
    def is_relayable(self, payload: bytes) -> bool:
        """Whether one RTP payload is a packet type our SDP's packetization mode allows."""

    @abstractmethod
    def is_plainly_relayable(self, first_byte: int) -> bool:
        """Whether a payload starting with this byte is relayable with no look further in: a
        single NAL unit or a fragment. Aggregation packets are not (their inside is checked
        by :meth:`is_relayable`)."""

    def _relay_table(self) -> bytes | None:
        if not self.relay_allowed:
            return None
        return bytes(self.is_plainly_relayable(b) for b in range(256))

    @abstractmethod
    def aggregation_header(self, nals: Sequence[Nal]) -> bytes:
        """Payload header of an aggregation packet (STAP-A / AP) holding ``nals``."""

    @abstractmethod
    def fu_prefixes(self, nal: Nal) -> tuple[bytes, bytes, bytes]:
        """Payload + FU headers for the first, middle and last fragments of ``nal``."""

    def _remember(self, nal: Nal) -> bool:
        if len(nal) <= self.header_size:
            return False
        nal_type = self.nal_type(nal)
        if nal_type in self.parameter_set_types:
            self.parameter_sets[nal_type] = bytes(nal)
            return True
        return False

    def current_parameter_sets(self) -> list[bytes]:
        """The latest parameter sets seen (in band or from ``params``), in sending order."""
        return [
            self.parameter_sets[t] for t in self.parameter_set_types if t in self.parameter_sets
        ]

    def packetize(self, frame: bytes, keyframe: bool) -> list[bytes]:
        nals: list[Nal] = [nal for nal in split_annexb(frame) if len(nal) >= self.header_size]
        self._insert_parameter_sets(nals, keyframe)
        return self.packetize_nals(nals)

    def relay(self, payloads: Sequence[bytes], keyframe: bool) -> list[bytes] | None:
        """The camera's payloads as they are (the native ingest's fast path), or ``None`` when
        one is too large for our MTU or of a packet type our SDP does not offer. A keyframe
        that lacks parameter sets gets the latest ones in front, as :meth:`packetize` does.
        """
        if not self.relay_allowed:
            return None
        is_relayable = self.is_relayable
        for payload in payloads:
            if not 0 < len(payload) <= RELAY_MAX_PAYLOAD or not is_relayable(payload):
                return None
        if not keyframe:
            return list(payloads)
        return self._relay_keyframe(payloads)

    def _relay_keyframe(self, payloads: Sequence[bytes]) -> list[bytes] | None:
        # Parameter sets precede the first slice: scan payloads up to it, remembering sets
        # sent in band so the SDP and later keyframes use the camera's current ones.
        present: set[int] = set()
        position = 0
        header_size = self.header_size
        for index, payload in enumerate(payloads):
            payload_type = self.nal_type(payload)
            if payload_type == self.aggregation_type:
                try:
                    nals = _aggregated_nals(payload, header_size)
                except ValueError:
                    return None
            elif self.is_vcl(payload_type) or payload_type == self.fragmentation_type:
                break  # a slice or a fragment: no parameter set comes after it
            else:
                nals = [payload]
            for nal in nals:
                nal_type = self.nal_type(nal)
                if nal_type in self.parameter_set_types:
                    self._remember(nal)
                    present.add(nal_type)
                elif nal_type == self.aud_type and index == 0:
                    position = 1
        out = list(payloads)
        if not present.issuperset(self.parameter_sets):
            out[position:position] = self.packetize_nals(self.current_parameter_sets())
        return out

    def _insert_parameter_sets(self, nals: list[Nal], keyframe: bool) -> None:
        present: set[int] = set()
        random_access = False
        for nal in nals:
            nal_type = self.nal_type(nal)
            if nal_type in self.parameter_set_types:
                self._remember(nal)
                if not random_access:
                    present.add(nal_type)
            elif self.is_random_access(nal_type):
                random_access = True
        if not (random_access or keyframe) or present.issuperset(self.parameter_sets):
            return
        # Something is missing: send the full current set right after any access unit
        # delimiter (duplicates of what the access unit carries are harmless; a partial set
        # in the wrong order is not).
        position = 1 if nals and self.nal_type(nals[0]) == self.aud_type else 0
        nals[position:position] = self.current_parameter_sets()

    def packetize_nals(self, nals: Sequence[Nal]) -> list[bytes]:
        """Payloads for the NAL units of one access unit (no start codes)."""
        max_payload = self.max_payload
        aggregation_overhead = self.header_size
        payloads: list[bytes] = []
        group: list[Nal] = []
        group_size = aggregation_overhead
        for nal in nals:
            size = len(nal)
            if size > max_payload:
                if group:
                    payloads.append(self._group_payload(group))
                    group = []
                    group_size = aggregation_overhead
                self._fragment(nal, payloads)
            elif group and group_size + 2 + size <= max_payload:
                group.append(nal)
                group_size += 2 + size
            else:
                if group:
                    payloads.append(self._group_payload(group))
                group = [nal]
                group_size = aggregation_overhead + 2 + size
        if group:
            payloads.append(self._group_payload(group))
        return payloads

    def _group_payload(self, group: list[Nal]) -> bytes:
        if len(group) == 1:
            return bytes(group[0])
        parts: list[Nal] = [self.aggregation_header(group)]
        for nal in group:
            parts.append(len(nal).to_bytes(2, "big"))
            parts.append(nal)
        return b"".join(parts)

    def _fragment(self, nal: Nal, payloads: list[bytes]) -> None:
        # Near-equal fragments: sizes differ by at most one byte, so no tiny last packet.
        first, middle, last = self.fu_prefixes(nal)
        data = memoryview(nal)
        pos = self.header_size
        remaining = len(data) - pos
        capacity = self.max_payload - self.fu_prefix_size
        count = -(-remaining // capacity)
        base, extra = divmod(remaining, count)
        for i in range(count):
            size = base + 1 if i < extra else base
            prefix = first if i == 0 else last if i == count - 1 else middle
            payloads.append(prefix + data[pos : pos + size])
            pos += size


def aggregation_is_sound(payload: bytes, header_size: int) -> bool:
    """Whether an aggregation packet's size fields tile it exactly (cheap check, no copies)."""
    pos = header_size
    end = len(payload)
    if pos >= end:
        return False
    while pos + 2 <= end:
        size = (payload[pos] << 8) | payload[pos + 1]
        if size < header_size:
            return False
        pos += 2 + size
    return pos == end


def _aggregated_nals(payload: bytes, header_size: int) -> list[bytes]:
    """The NAL units of an aggregation packet (no DONL); ``ValueError`` if truncated."""
    nals = []
    pos = header_size
    end = len(payload)
    while pos < end:
        if pos + 2 > end:
            raise ValueError("aggregation packet has a truncated size field")
        size = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if size < header_size or pos + size > end:
            raise ValueError(f"aggregated NAL unit of {size} bytes does not fit the packet")
        nals.append(payload[pos : pos + size])
        pos += size
    return nals


class NalDepacketizer(Depacketizer):
    """RTP payloads -> Annex-B access units (4-byte start codes).

    A frame is emitted on the marker bit, or when the timestamp changes (lost marker). The
    caller calls :meth:`reset` on a sequence gap, which drops a fragmented NAL in progress;
    fragments continuing a NAL whose start was lost are dropped silently.
    """

    codec: str

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._nals: list[bytes] = []
        self._size = 0
        self._timestamp: int | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_type = -1
        self._fragment_size = 0
        self._ready: list[bytes] = []

    def reset(self) -> None:
        """Forget a fragmented NAL in progress (call on a sequence-number gap)."""
        self._fragments = None

    @abstractmethod
    def unpack(self, payload: bytes) -> None:
        """Parse one payload, calling ``add_nal``/``add_fragment``."""

    def push(self, payload: bytes, marker: bool, timestamp: int) -> list[bytes]:
        if timestamp != self._timestamp:
            self._fragments = None
            if self._nals:
                self._ready.append(self._take_frame())
            self._timestamp = timestamp
        try:
            self.unpack(bytes(payload))
        except ValueError:
            self._fragments = None
            raise
        finally:
            if marker:
                self._fragments = None
                if self._nals:
                    self._ready.append(self._take_frame())
        ready, self._ready = self._ready, []
        return ready

    def add_nal(self, nal: bytes) -> None:
        self._size += 4 + len(nal)
        if self._size > self.max_frame_size:
            self._nals = []
            self._size = 0
            raise ValueError(f"{self.codec} access unit exceeds {self.max_frame_size} bytes")
        self._nals.append(nal)

    def add_aggregate(self, payload: bytes, pos: int, min_nal_size: int) -> None:
        """The NAL units of an aggregation packet from ``pos`` (16-bit size + NAL each)."""
        nals = []
        end = len(payload)
        while pos < end:
            if pos + 2 > end:
                raise ValueError(f"{self.codec} aggregation packet has a truncated size field")
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size < min_nal_size:
                raise ValueError(f"{self.codec} aggregation packet has a {size}-byte NAL unit")
            if pos + size > end:
                raise ValueError(
                    f"{self.codec} aggregated NAL unit of {size} bytes exceeds the packet "
                    f"({end - pos} bytes left)"
                )
            nals.append(payload[pos : pos + size])
            pos += size
        if not nals:
            raise ValueError(f"{self.codec} aggregation packet holds no NAL unit")
        for nal in nals:
            self.add_nal(nal)

    def add_fragment(
        self, start: bool, end: bool, nal_type: int, header: bytes, data: bytes
    ) -> None:
        if start and end:
            raise ValueError(f"{self.codec} fragmentation unit has both start and end bits set")
        if start:
            self._fragments = [header]
            self._fragment_type = nal_type
            self._fragment_size = len(header)
        elif self._fragments is None:
            return  # the start was lost: drop the rest of this NAL unit
        elif nal_type != self._fragment_type:
            self._fragments = None
            raise ValueError(
                f"{self.codec} fragment of NAL type {nal_type} continues a NAL unit of type "
                f"{self._fragment_type}"
            )
        self._fragment_size += len(data)
        if self._size + self._fragment_size > self.max_frame_size:
            self._fragments = None
            raise ValueError(f"{self.codec} access unit exceeds {self.max_frame_size} bytes")
        self._fragments.append(data)
        if end:
            nal = b"".join(self._fragments)
            self._fragments = None
            self.add_nal(nal)

    def _take_frame(self) -> bytes:
        parts = []
        for nal in self._nals:
            parts.append(START_CODE)
            parts.append(nal)
        self._nals = []
        self._size = 0
        return b"".join(parts)


# --------------------------------------------------------------------------------------------
# H.264


def _fu_a_prefixes(header: int) -> tuple[bytes, bytes, bytes]:
    indicator = (header & 0xE0) | NAL_FU_A
    nal_type = header & 0x1F
    return (
        bytes((indicator, 0x80 | nal_type)),
        bytes((indicator, nal_type)),
        bytes((indicator, 0x40 | nal_type)),
    )


# Precomputed for every possible NAL header byte: no per-NAL header arithmetic.
_FU_A_PREFIXES = tuple(_fu_a_prefixes(header) for header in range(256))


class H264Packetizer(NalPacketizer):
    codec = "H.264"
    header_size = 1
    fu_prefix_size = 2
    aud_type = NAL_AUD
    parameter_set_types = (NAL_SPS, NAL_PPS)
    aggregation_type = NAL_STAP_A
    fragmentation_type = NAL_FU_A

    def __init__(
        self, params: CodecParams, payload_type: int = 96, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        super().__init__(params, payload_type, max_payload)
        # Modes 0 and 1 send what our packetization-mode=1 allows; mode 2 interleaves.
        self.relay_allowed = params.extra.get("packetization-mode", "0").strip() in ("0", "1")
        self.relay_table = self._relay_table()

    def nal_type(self, nal: Nal) -> int:
        return nal[0] & 0x1F

    def is_random_access(self, nal_type: int) -> bool:
        return nal_type == NAL_IDR

    def is_vcl(self, nal_type: int) -> bool:
        return 1 <= nal_type <= 5

    def is_relayable(self, payload: bytes) -> bool:
        if payload[0] & 0x1F == NAL_STAP_A:
            return aggregation_is_sound(payload, 1)
        return self.is_plainly_relayable(payload[0])

    def is_plainly_relayable(self, first_byte: int) -> bool:
        nal_type = first_byte & 0x1F
        return 0 < nal_type < NAL_STAP_A or nal_type == NAL_FU_A

    def aggregation_header(self, nals: Sequence[Nal]) -> bytes:
        forbidden = 0
        nri = 0
        for nal in nals:
            forbidden |= nal[0] & 0x80
            nri = max(nri, nal[0] & 0x60)
        return bytes((forbidden | nri | NAL_STAP_A,))

    def fu_prefixes(self, nal: Nal) -> tuple[bytes, bytes, bytes]:
        return _FU_A_PREFIXES[nal[0]]

    def sdp_attributes(self) -> list[str]:
        pt = self.payload_type
        fmtp = ["packetization-mode=1"]
        sps = self.parameter_sets.get(NAL_SPS)
        if sps is not None and len(sps) >= 4:
            fmtp.append(f"profile-level-id={sps[1:4].hex().upper()}")
        sets = self.current_parameter_sets()
        if sets:
            encoded = ",".join(base64.b64encode(nal).decode("ascii") for nal in sets)
            fmtp.append(f"sprop-parameter-sets={encoded}")
        return [f"rtpmap:{pt} H264/90000", f"fmtp:{pt} {';'.join(fmtp)}"]


class H264Depacketizer(NalDepacketizer):
    codec = "H.264"

    def unpack(self, payload: bytes) -> None:
        if not payload:
            raise ValueError("H.264 RTP payload is empty")
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            self.add_nal(payload)
        elif nal_type == NAL_STAP_A:
            self.add_aggregate(payload, 1, 1)
        elif nal_type == NAL_FU_A:
            if len(payload) < 2:
                raise ValueError("H.264 FU-A payload too short: 1 bytes")
            fu = payload[1]
            header = bytes(((payload[0] & 0xE0) | (fu & 0x1F),))
            self.add_fragment(bool(fu & 0x80), bool(fu & 0x40), fu & 0x1F, header, payload[2:])
        elif nal_type in (25, 26, 27, 29):
            name = {25: "STAP-B", 26: "MTAP16", 27: "MTAP24", 29: "FU-B"}[nal_type]
            raise ValueError(
                f"H.264 packet type {nal_type} ({name}) is not allowed in packetization-mode=1"
            )
        else:
            raise ValueError(f"H.264 NAL unit type {nal_type} is reserved")


def parameter_sets_from_extradata(extradata: bytes) -> tuple[bytes, ...]:
    """SPS and PPS NAL units from H.264 extradata: Annex-B or avcC (ISO 14496-15 5.3.3.1)."""
    data = bytes(extradata)
    if not data:
        return ()
    if data[0] != 1:
        nals = split_annexb(data)
        return tuple(bytes(nal) for nal in nals if nal[0] & 0x1F in (NAL_SPS, NAL_PPS))
    if len(data) < 7:
        raise ValueError(f"avcC record too short: {len(data)} bytes")
    sets: list[bytes] = []
    pos = 5
    for label, mask in (("SPS", 0x1F), ("PPS", 0xFF)):
        if pos >= len(data):
            raise ValueError(f"avcC record truncated before its {label} count")
        count = data[pos] & mask
        pos += 1
        for _ in range(count):
            if pos + 2 > len(data):
                raise ValueError(f"avcC record truncated in a {label} length")
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(data):
                raise ValueError(f"avcC {label} of {size} bytes does not fit the record")
            sets.append(data[pos : pos + size])
            pos += size
    return tuple(sets)


# Profiles whose SPS carries chroma format and bit depth (H.264 7.3.2.1.1).
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))


def _skip_scaling_list(bits: BitReader, size: int) -> None:
    last = 8
    next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


@dataclass(frozen=True)
class H264Sps:
    """What the gateway reads from an H.264 SPS (7.3.2.1.1)."""

    profile_idc: int
    constraint_flags: int  # the byte after profile_idc ("profile compatibility" in avcC)
    level_idc: int
    chroma_format_idc: int
    bit_depth_luma_minus8: int
    bit_depth_chroma_minus8: int
    width: int  # pixels, after frame cropping
    height: int


def parse_sps(sps: bytes) -> H264Sps:
    """An H.264 SPS NAL unit, as far as size and decoder configuration need it."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise ValueError("not an H.264 SPS NAL unit")
    bits = BitReader(nal_to_rbsp(sps[1:]), "H.264 SPS")
    profile_idc = bits.u(8)
    constraint_flags = bits.u(8)
    level_idc = bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    luma_depth = chroma_depth = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > 3:
            raise ValueError(f"H.264 SPS chroma_format_idc {chroma_format_idc} is invalid")
        if chroma_format_idc == 3:
            separate_colour_plane = bits.u(1)
        luma_depth, chroma_depth = bits.ue(), bits.ue()
        bits.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.skip(1)
        bits.se()
        bits.se()
        for _ in range(min(bits.ue(), 255)):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.skip(1)  # mb_adaptive_frame_field_flag
    bits.skip(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if bits.u(1):  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        if chroma_format_idc == 0 or separate_colour_plane:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_format_idc == 3 else 2
            sub_height = 2 if chroma_format_idc == 1 else 1
            crop_x, crop_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError(f"H.264 SPS gives an invalid size {width}x{height}")
    return H264Sps(
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc,
        luma_depth,
        chroma_depth,
        width,
        height,
    )
