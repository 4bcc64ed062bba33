"""Fragmented MP4 (ISO/IEC 14496-12, 14496-15) for H.264 and H.265 video, sans-IO.

The dashboard's live view feeds these bytes to the browser's Media Source Extensions: an
*init segment* (``ftyp`` + ``moov`` whose sample entry carries the decoder configuration,
``avcC`` or ``hvcC``, built from the parameter sets) and then one *media segment*
(``moof`` + ``mdat``) per frame. Nothing is transcoded: access units from the hub are only
re-framed from Annex-B start codes to 4-byte length prefixes.

:class:`Fmp4Muxer` is the stateful part: access units with their RTP timestamp go in, byte
segments come out. It starts at a keyframe, emits a new init segment whenever the in-band
parameter sets change (a camera switched resolution), and holds each frame until the next
one arrives so every sample carries its real duration. Time is the 90 kHz RTP clock; the
decode time is accumulated in 64 bits, so the 32-bit RTP wrap-around is invisible.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.codecs import h264, h265
from gateway.codecs.h264 import split_annexb

TIMESCALE = 90_000
# Larger access units are refused rather than buffered (same bound as the depacketizers).
MAX_SAMPLE_SIZE = h264.DEFAULT_MAX_FRAME_SIZE

_H264_PARAMETER_SETS = (h264.NAL_SPS, h264.NAL_PPS)
_H265_VPS, _H265_SPS, _H265_PPS = 32, 33, 34
_H265_PARAMETER_SETS = (_H265_VPS, _H265_SPS, _H265_PPS)

# trun sample flags (14496-12 8.8.3.1): a sync sample depends on nothing; others depend on
# earlier samples and are not sync samples.
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000

_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    """One ISO BMFF box: 32-bit size, four-character type, payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# --------------------------------------------------------------------------- decoder config


@dataclass(frozen=True)
class VideoConfig:
    """What an init segment describes: codec, picture size and decoder configuration."""

    codec: str  # "H264" | "H265"
    width: int
    height: int
    parameter_sets: tuple[bytes, ...]
    codec_string: str  # RFC 6381 ``codecs`` parameter, e.g. "avc1.64001F"
    sample_entry: bytes  # the avc1/hvc1 box

    @property
    def mime_type(self) -> str:
        """What to ask ``MediaSource.isTypeSupported`` and ``addSourceBuffer``."""
        return f'video/mp4; codecs="{self.codec_string}"'


def nal_type(codec: str, nal: bytes | memoryview) -> int:
    return nal[0] & 0x1F if codec == "H264" else (nal[0] >> 1) & 0x3F


def is_parameter_set(codec: str, nal: bytes | memoryview) -> bool:
    kinds = _H264_PARAMETER_SETS if codec == "H264" else _H265_PARAMETER_SETS
    return nal_type(codec, nal) in kinds


def video_config(codec: str, parameter_sets: Sequence[bytes]) -> VideoConfig:
    """The decoder configuration for ``parameter_sets`` (raw NAL units); ValueError if they
    are incomplete or do not parse."""
    if codec == "H264":
        return _h264_config(parameter_sets)
    if codec == "H265":
        return _h265_config(parameter_sets)
    raise ValueError(f"fragmented MP4 live view supports H264 and H265, not {codec!r}")


def _pick(codec: str, parameter_sets: Sequence[bytes], kind: int) -> list[bytes]:
    return [bytes(ps) for ps in parameter_sets if ps and nal_type(codec, ps) == kind]


def _visual_sample_entry(kind: bytes, width: int, height: int, config_box: bytes) -> bytes:
    if not (0 < width < 65536 and 0 < height < 65536):
        raise ValueError(f"picture size {width}x{height} does not fit a sample entry")
    return box(
        kind,
        bytes(6),  # reserved
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined, reserved, pre_defined[3]
        struct.pack(">HHIIIH", width, height, 0x00480000, 0x00480000, 0, 1),
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        config_box,
    )


def _h264_config(parameter_sets: Sequence[bytes]) -> VideoConfig:
    sps_list = _pick("H264", parameter_sets, h264.NAL_SPS)
    pps_list = _pick("H264", parameter_sets, h264.NAL_PPS)
    if not sps_list or not pps_list:
        raise ValueError("H.264 decoder configuration needs an SPS and a PPS")
    sps = h264.parse_sps(sps_list[0])
    profile, compatibility, level = sps.profile_idc, sps.constraint_flags, sps.level_idc
    record = bytearray([1, profile, compatibility, level, 0xFF, 0xE0 | len(sps_list)])
    for nal in sps_list:
        record += struct.pack(">H", len(nal)) + nal
    record.append(len(pps_list))
    for nal in pps_list:
        record += struct.pack(">H", len(nal)) + nal
    if profile in (100, 110, 122, 144):
        # High profiles add chroma format and bit depths (14496-15 5.3.3.1.2).
        luma_depth, chroma_depth = _bit_depths(sps, "H.264")
        chroma = sps.chroma_format_idc
        record += bytes([0xFC | chroma, 0xF8 | luma_depth, 0xF8 | chroma_depth, 0])
    entry = _visual_sample_entry(b"avc1", sps.width, sps.height, box(b"avcC", bytes(record)))
    codec_string = f"avc1.{profile:02X}{compatibility:02X}{level:02X}"
    sets = (*sps_list, *pps_list)
    return VideoConfig("H264", sps.width, sps.height, sets, codec_string, entry)


def _bit_depths(sps: h264.H264Sps | h265.H265Sps, what: str) -> tuple[int, int]:
    """The SPS's bit depths minus 8, as the 3-bit fields of a decoder configuration."""
    luma, chroma = sps.bit_depth_luma_minus8, sps.bit_depth_chroma_minus8
    if luma > 7 or chroma > 7:
        raise ValueError(f"{what} SPS bit depth out of range")
    return luma, chroma


def _h265_config(parameter_sets: Sequence[bytes]) -> VideoConfig:
    arrays = [(kind, _pick("H265", parameter_sets, kind)) for kind in _H265_PARAMETER_SETS]
    if any(not nals for _, nals in arrays):
        raise ValueError("H.265 decoder configuration needs a VPS, an SPS and a PPS")
    p = h265.parse_sps(arrays[1][1][0])
    luma_depth, chroma_depth = _bit_depths(p, "H.265")
    record = bytearray([1, (p.profile_space << 6) | (p.tier << 5) | p.profile_idc])
    record += struct.pack(">I", p.compatibility) + p.constraints + bytes([p.level_idc])
    record += struct.pack(">H", 0xF000)  # min_spatial_segmentation_idc = 0
    record += bytes([0xFC, 0xFC | p.chroma_format_idc, 0xF8 | luma_depth, 0xF8 | chroma_depth])
    record += struct.pack(">H", 0)  # avgFrameRate: unspecified
    # constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne = 3
    record.append((p.sub_layers << 3) | (p.temporal_id_nested << 2) | 3)
    record.append(len(arrays))
    for kind, nals in arrays:
        record.append(0x80 | kind)  # array_completeness: all sets of this type are here
        record += struct.pack(">H", len(nals))
        for nal in nals:
            record += struct.pack(">H", len(nal)) + nal
    entry = _visual_sample_entry(b"hvc1", p.width, p.height, box(b"hvcC", bytes(record)))
    # Codec string per 14496-15 annex E: compatibility flags in reverse bit order, the
    # constraint bytes without trailing zero bytes.
    space = "" if p.profile_space == 0 else "ABC"[p.profile_space - 1]
    reversed_flags = int(f"{p.compatibility:032b}"[::-1], 2)
    constraints = p.constraints.rstrip(b"\x00")
    parts = [
        "hvc1",
        f"{space}{p.profile_idc}",
        f"{reversed_flags:X}",
        f"{'H' if p.tier else 'L'}{p.level_idc}",
        *(f"{b:X}" for b in constraints),
    ]
    sets = tuple(nal for _, nals in arrays for nal in nals)
    return VideoConfig("H265", p.width, p.height, sets, ".".join(parts), entry)


# --------------------------------------------------------------------------- segments


def init_segment(config: VideoConfig, timescale: int = TIMESCALE) -> bytes:
    """``ftyp`` + ``moov`` for one video track (track ID 1) with an empty sample table."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"mp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # times, timescale, duration
        struct.pack(">IH", 0x00010000, 0x0100),  # rate, volume
        bytes(10),
        _UNITY_MATRIX,
        bytes(24),
        struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = full_box(
        b"tkhd",
        0,
        0x3,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, 1, 0, 0),  # times, track_ID, reserved, duration
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),  # layer, alternate_group, volume, reserved
        _UNITY_MATRIX,
        struct.pack(">II", config.width << 16, config.height << 16),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), config.sample_entry),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    minf = box(b"minf", vmhd, dinf, stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, trak, mvex)


@dataclass(frozen=True)
class Sample:
    data: bytes  # length-prefixed NAL units
    duration: int  # timescale units
    keyframe: bool


def media_segment(sequence: int, decode_time: int, samples: Sequence[Sample]) -> bytes:
    """``moof`` + ``mdat`` holding ``samples`` back to back from ``decode_time``."""
    if not samples:
        raise ValueError("a media segment needs at least one sample")
    entries = b"".join(
        struct.pack(
            ">III",
            s.duration,
            len(s.data),
            SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS,
        )
        for s in samples
    )
    # tfhd: default-base-is-moof; trun: data offset, duration, size and flags per sample.
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
    trun_size = 12 + 8 + len(entries)
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    traf_size = 8 + len(tfhd) + len(tfdt) + trun_size
    moof_size = 8 + len(mfhd) + traf_size
    data_offset = moof_size + 8  # from the start of moof to the first byte of mdat's payload
    trun = full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(samples), data_offset), entries)
    moof = box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun))
    return moof + box(b"mdat", *(s.data for s in samples))


def split_access_unit(codec: str, access_unit: bytes) -> tuple[bytes, list[bytes]]:
    """Annex-B access unit -> (length-prefixed sample without parameter sets, the
    parameter sets it carried)."""
    parts: list[bytes] = []
    parameter_sets: list[bytes] = []
    for nal in split_annexb(access_unit):
        if not nal:
            continue
        if is_parameter_set(codec, nal):
            parameter_sets.append(bytes(nal))
        else:
            parts.append(struct.pack(">I", len(nal)))
            parts.append(bytes(nal))
    return b"".join(parts), parameter_sets


# --------------------------------------------------------------------------- muxer


class Fmp4Muxer:
    """Access units in, fMP4 segments out (init segment first, then one per frame).

    ``parameter_sets`` are the out-of-band sets (from the SDP); in-band sets at a keyframe
    take precedence. Frames before the first keyframe, and after :meth:`skip_to_keyframe`
    until the next keyframe, are dropped.
    """

    def __init__(self, codec: str, parameter_sets: Sequence[bytes] = ()) -> None:
        if codec not in ("H264", "H265"):
            raise ValueError(f"fragmented MP4 live view supports H264 and H265, not {codec!r}")
        self.codec = codec
        self.config: VideoConfig | None = None
        self._known_sets: tuple[bytes, ...] = tuple(bytes(p) for p in parameter_sets)
        self._waiting_keyframe = True
        self._pending: tuple[bytes, bool, int] | None = None  # sample, keyframe, rtp ts
        self._decode_time = 0  # of the pending sample
        self._sequence = 0
        self.frames_out = 0

    def skip_to_keyframe(self) -> None:
        """Drop frames until the next keyframe (the consumer fell behind, or a gap)."""
        self._waiting_keyframe = True

    def push(self, access_unit: bytes, timestamp: int, keyframe: bool) -> list[bytes]:
        """One Annex-B access unit with its 32-bit RTP timestamp (90 kHz)."""
        if len(access_unit) > MAX_SAMPLE_SIZE:
            raise ValueError(f"access unit of {len(access_unit)} bytes exceeds {MAX_SAMPLE_SIZE}")
        if self._waiting_keyframe and not keyframe:
            return []
        sample, in_band = split_access_unit(self.codec, access_unit)
        if not sample:
            return []
        out: list[bytes] = []
        if keyframe:
            sets = self._merge_sets(in_band)
            if self.config is None or sets != self.config.parameter_sets:
                config = video_config(self.codec, sets)
                out += self._flush(timestamp)
                self.config = config
                out.append(init_segment(config))
        self._waiting_keyframe = False
        out += self._flush(timestamp)
        self._pending = (sample, keyframe, timestamp)
        return out

    def _merge_sets(self, in_band: list[bytes]) -> tuple[bytes, ...]:
        if in_band:
            kinds = {nal_type(self.codec, nal) for nal in in_band}
            kept = [p for p in self._known_sets if nal_type(self.codec, p) not in kinds]
            self._known_sets = (*kept, *in_band)
        # Canonical order (VPS, SPS, PPS) so equal sets compare equal.
        return tuple(sorted(self._known_sets, key=lambda nal: nal_type(self.codec, nal)))

    def _flush(self, next_timestamp: int) -> list[bytes]:
        """Emit the pending sample now that the next frame's timestamp gives its duration."""
        if self._pending is None:
            return []
        sample, keyframe, timestamp = self._pending
        self._pending = None
        delta = (next_timestamp - timestamp) & 0xFFFFFFFF
        # Timestamps that go backwards (a camera with B-frames, a glitch) or stand still
        # still advance the decode time, so the browser's timeline never overlaps.
        duration = delta if 0 < delta < 0x80000000 else 1
        self._sequence += 1
        segment = media_segment(
            self._sequence, self._decode_time, [Sample(sample, duration, keyframe)]
        )
        self._decode_time += duration
        self.frames_out += 1
        return [segment]
