"""H.265 RTP payload format (RFC 7798) without DONL (sprop-max-don-diff=0).

Single NAL unit packets, aggregation packets (AP, type 48) of consecutive small NAL units and
fragmentation units (FU, type 49) of near-equal size. The latest VPS/SPS/PPS are inserted
before every IRAP picture that lacks them. The splitting and aggregation logic is shared with
H.264 (:mod:`gateway.codecs.h264`); only the 2-byte NAL header handling differs.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.codecs.base import DEFAULT_MAX_PAYLOAD, CodecParams
from gateway.codecs.h264 import (
    BitReader,
    Nal,
    NalDepacketizer,
    NalPacketizer,
    aggregation_is_sound,
    nal_to_rbsp,
    split_annexb,
)

# NAL unit types (H.265 table 7-1, RFC 7798 section 4.4).
NAL_BLA_W_LP = 16
NAL_CRA = 21
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_AP = 48
NAL_FU = 49
NAL_PACI = 50

PARAMETER_SET_TYPES = (NAL_VPS, NAL_SPS, NAL_PPS)


def nal_type(nal: Nal) -> int:
    return (nal[0] >> 1) & 0x3F


def rtp_packet_flags(packet: bytes | bytearray, start: int, end: int) -> tuple[bool, bool]:
    """(carries IRAP data, continues a fragmented NAL) for one H.265 RTP payload."""
    if end - start < 3:
        return False, False
    nal_type = (packet[start] >> 1) & 0x3F
    if nal_type == 49:  # FU
        fu_header = packet[start + 2]
        return 16 <= (fu_header & 0x3F) <= 21, not fu_header & 0x80
    if nal_type == 48:  # AP
        pos = start + 2
        while pos + 2 < end:
            if 16 <= (packet[pos + 2] >> 1) & 0x3F <= 21:
                return True, False
            pos += 2 + ((packet[pos] << 8) | packet[pos + 1])
        return False, False
    return 16 <= nal_type <= 21, False


class H265Packetizer(NalPacketizer):
    codec = "H.265"
    header_size = 2
    fu_prefix_size = 3
    aud_type = NAL_AUD
    parameter_set_types = PARAMETER_SET_TYPES
    aggregation_type = NAL_AP
    fragmentation_type = NAL_FU

    def __init__(
        self, params: CodecParams, payload_type: int = 96, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        super().__init__(params, payload_type, max_payload)
        # A source that sends decoding-order numbers (DONL) cannot be relayed to clients
        # offered an SDP without them.
        self.relay_allowed = params.extra.get("sprop-max-don-diff", "0").strip() in ("", "0")
        self.relay_table = self._relay_table()

    def nal_type(self, nal: Nal) -> int:
        return (nal[0] >> 1) & 0x3F

    def is_random_access(self, nal_type: int) -> bool:
        return NAL_BLA_W_LP <= nal_type <= NAL_CRA

    def is_vcl(self, nal_type: int) -> bool:
        return nal_type < 32

    def is_relayable(self, payload: bytes) -> bool:
        if len(payload) <= 2:
            return False
        if (payload[0] >> 1) & 0x3F == NAL_AP:
            return aggregation_is_sound(payload, 2)
        return self.is_plainly_relayable(payload[0])

    relay_min_payload = 3  # a two-byte payload header and something after it

    def is_plainly_relayable(self, first_byte: int) -> bool:
        packet_type = (first_byte >> 1) & 0x3F
        return packet_type < NAL_AP or packet_type == NAL_FU

    def aggregation_header(self, nals: Sequence[Nal]) -> bytes:
        # F is the OR of the aggregated F bits; LayerId and TID are the lowest ones.
        forbidden = 0
        layer_id = 63
        tid = 7
        for nal in nals:
            forbidden |= nal[0] & 0x80
            layer_id = min(layer_id, ((nal[0] & 1) << 5) | (nal[1] >> 3))
            tid = min(tid, nal[1] & 7)
        return bytes((forbidden | (NAL_AP << 1) | (layer_id >> 5), ((layer_id & 31) << 3) | tid))

    def fu_prefixes(self, nal: Nal) -> tuple[bytes, bytes, bytes]:
        payload_header = ((nal[0] & 0x81) | (NAL_FU << 1), nal[1])
        fu_type = (nal[0] >> 1) & 0x3F
        return (
            bytes((*payload_header, 0x80 | fu_type)),
            bytes((*payload_header, fu_type)),
            bytes((*payload_header, 0x40 | fu_type)),
        )

    def sdp_attributes(self) -> list[str]:
        pt = self.payload_type
        fmtp = []
        sps = self.parameter_sets.get(NAL_SPS)
        if sps is not None:
            rbsp = nal_to_rbsp(sps[2:20])
            if len(rbsp) >= 13:
                # profile_tier_level starts at the second byte of the SPS RBSP.
                fmtp.append(f"profile-id={rbsp[1] & 0x1F}")
                fmtp.append(f"tier-flag={(rbsp[1] >> 5) & 1}")
                fmtp.append(f"level-id={rbsp[12]}")
        for name, set_type in (("vps", NAL_VPS), ("sps", NAL_SPS), ("pps", NAL_PPS)):
            nal = self.parameter_sets.get(set_type)
            if nal is not None:
                fmtp.append(f"sprop-{name}={base64.b64encode(nal).decode('ascii')}")
        lines = [f"rtpmap:{pt} H265/90000"]
        if fmtp:
            lines.append(f"fmtp:{pt} {';'.join(fmtp)}")
        return lines


class H265Depacketizer(NalDepacketizer):
    codec = "H.265"

    def unpack(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise ValueError(f"H.265 RTP payload too short: {len(payload)} bytes")
        packet_type = (payload[0] >> 1) & 0x3F
        if packet_type < NAL_AP:
            self.add_nal(payload)
        elif packet_type == NAL_AP:
            self.add_aggregate(payload, 2, 2)
        elif packet_type == NAL_FU:
            if len(payload) < 3:
                raise ValueError("H.265 FU payload too short: 2 bytes")
            fu = payload[2]
            fu_type = fu & 0x3F
            header = bytes(((payload[0] & 0x81) | (fu_type << 1), payload[1]))
            self.add_fragment(bool(fu & 0x80), bool(fu & 0x40), fu_type, header, payload[3:])
        elif packet_type == NAL_PACI:
            raise ValueError("H.265 PACI packets (type 50) are not supported")
        else:
            raise ValueError(f"H.265 packet type {packet_type} is unspecified")


def parameter_sets_from_extradata(extradata: bytes) -> tuple[bytes, ...]:
    """VPS, SPS and PPS NAL units from H.265 extradata: Annex-B or hvcC (ISO 14496-15 8.3.3)."""
    data = bytes(extradata)
    if not data:
        return ()
    if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        found = [bytes(nal) for nal in split_annexb(data) if len(nal) > 2]
    else:
        found = _parse_hvcc(data)
    # Keep the parameter sets only, in VPS, SPS, PPS order.
    return tuple(
        sorted((nal for nal in found if nal_type(nal) in PARAMETER_SET_TYPES), key=nal_type)
    )


def _parse_hvcc(data: bytes) -> list[bytes]:
    if len(data) < 23:
        raise ValueError(f"hvcC record too short: {len(data)} bytes")
    if data[0] != 1:
        raise ValueError(f"hvcC configurationVersion must be 1, got {data[0]}")
    nals = []
    pos = 23
    for _ in range(data[22]):
        if pos + 3 > len(data):
            raise ValueError("hvcC record truncated in an array header")
        count = int.from_bytes(data[pos + 1 : pos + 3], "big")
        pos += 3
        for _ in range(count):
            if pos + 2 > len(data):
                raise ValueError("hvcC record truncated in a NAL unit length")
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if size < 2 or pos + size > len(data):
                raise ValueError(f"hvcC NAL unit of {size} bytes does not fit the record")
            nals.append(data[pos : pos + size])
            pos += size
    return nals


@dataclass(frozen=True)
class H265Sps:
    """What the gateway reads from an H.265 SPS (7.3.2.2): size and the general profile,
    tier and level that a decoder configuration (hvcC) repeats."""

    profile_space: int
    tier: int
    profile_idc: int
    compatibility: int  # general_profile_compatibility_flags, 32 bits
    constraints: bytes  # the 48 constraint-indicator bits, 6 bytes
    level_idc: int
    sub_layers: int
    temporal_id_nested: int
    chroma_format_idc: int
    bit_depth_luma_minus8: int
    bit_depth_chroma_minus8: int
    width: int  # pixels, after the conformance window
    height: int


def parse_sps(sps: bytes) -> H265Sps:
    """An H.265 SPS NAL unit, as far as size and decoder configuration need it."""
    if len(sps) < 4 or nal_type(sps) != NAL_SPS:
        raise ValueError("not an H.265 SPS NAL unit")
    bits = BitReader(nal_to_rbsp(sps[2:]), "H.265 SPS")
    bits.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    nested = bits.u(1)
    profile_space, tier, profile_idc = bits.u(2), bits.u(1), bits.u(5)
    compatibility = bits.u(32)
    constraints = bits.u(48).to_bytes(6, "big")
    level_idc = bits.u(8)
    present = [(bits.u(1), bits.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        bits.skip(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        if profile_present:
            bits.skip(88)
        if level_present:
            bits.skip(8)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = bits.ue()
    if chroma_format_idc > 3:
        raise ValueError(f"H.265 SPS chroma_format_idc {chroma_format_idc} is invalid")
    separate_colour_plane = bits.u(1) if chroma_format_idc == 3 else 0
    width = bits.ue()
    height = bits.ue()
    if bits.u(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        if chroma_format_idc == 0 or separate_colour_plane:
            sub_width = sub_height = 1
        else:
            sub_width = 1 if chroma_format_idc == 3 else 2
            sub_height = 2 if chroma_format_idc == 1 else 1
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError(f"H.265 SPS gives an invalid size {width}x{height}")
    luma_depth, chroma_depth = bits.ue(), bits.ue()
    return H265Sps(
        profile_space,
        tier,
        profile_idc,
        compatibility,
        constraints,
        level_idc,
        max_sub_layers_minus1 + 1,
        nested,
        chroma_format_idc,
        luma_depth,
        chroma_depth,
        width,
        height,
    )
