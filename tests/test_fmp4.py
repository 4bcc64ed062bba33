"""The fragmented MP4 muxer: real libx264/libx265 access units in, the output demuxed and
decoded by FFmpeg (PyAV); decoder configuration records and codec strings checked."""

from __future__ import annotations

import io
import itertools
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from gateway.media.fmp4 import Fmp4Muxer, init_segment, media_segment, video_config

FPS = 25


def encode(
    codec: str, frames: int, width: int = 320, height: int = 240
) -> list[tuple[bytes, bool]]:
    """Annex-B access units (keyframe every 10 frames, no B-frames)."""
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, FPS)
    ctx.framerate = Fraction(FPS)
    if codec == "libx264":
        ctx.options = {"g": "10", "bf": "0", "preset": "ultrafast"}
    else:
        ctx.options = {"x265-params": "keyint=10:min-keyint=10:bframes=0:log-level=error"}
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        picture = np.full((height, width, 3), (i * 8) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in ctx.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in ctx.encode(None)]
    return out


def boxes(data: bytes) -> list[bytes]:
    kinds = []
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8
        kinds.append(kind)
        pos += size
    assert pos == len(data)
    return kinds


@pytest.mark.parametrize(
    ("encoder", "codec", "prefix"), [("libx264", "H264", "avc1."), ("libx265", "H265", "hvc1.")]
)
def test_muxed_stream_decodes_with_timing(encoder: str, codec: str, prefix: str) -> None:
    units = encode(encoder, 30)
    muxer = Fmp4Muxer(codec)
    assert muxer.push(units[1][0], 3600, False) == []  # nothing before the first keyframe
    out = bytearray()
    for i, (unit, keyframe) in enumerate(units):
        # RTP timestamps near the 32-bit wrap: the decode time must run on smoothly.
        for segment in muxer.push(unit, (0xFFFF0000 + i * 3600) & 0xFFFFFFFF, keyframe):
            out += segment
    assert muxer.config is not None and muxer.config.codec_string.startswith(prefix)
    assert (muxer.config.width, muxer.config.height) == (320, 240)
    kinds = boxes(bytes(out))
    assert kinds[:2] == [b"ftyp", b"moov"] and kinds.count(b"moof") == 29
    with av.open(io.BytesIO(bytes(out))) as container:
        pictures = list(container.decode(video=0))
    # The last frame waits for its successor (its duration is not known yet).
    assert len(pictures) == 29
    times = [float(p.time) for p in pictures]
    assert times[0] == 0.0
    assert all(abs((b - a) - 1 / FPS) < 1e-6 for a, b in itertools.pairwise(times))


def test_parameter_set_change_emits_a_new_init_segment() -> None:
    small = encode("libx264", 10, 320, 240)
    large = encode("libx264", 10, 640, 360)
    muxer = Fmp4Muxer("H264")
    out = bytearray()
    ts = 0
    inits = 0
    for unit, keyframe in small + large:
        for segment in muxer.push(unit, ts, keyframe):
            inits += segment[4:8] == b"ftyp"
            out += segment
        ts += 3600
    assert inits == 2
    assert muxer.config is not None and (muxer.config.width, muxer.config.height) == (640, 360)


def test_h264_decoder_configuration_record() -> None:
    unit, _ = encode("libx264", 1)[0]
    sets = [n for n in unit.split(b"\x00\x00\x00\x01") if n and n[0] & 0x1F in (7, 8)]
    config = video_config("H264", sets)
    sps = sets[0]
    assert config.codec_string == f"avc1.{sps[1]:02X}{sps[2]:02X}{sps[3]:02X}"
    assert config.mime_type == f'video/mp4; codecs="{config.codec_string}"'
    avcc = config.sample_entry[config.sample_entry.index(b"avcC") + 4 :]
    assert avcc[:4] == bytes([1, sps[1], sps[2], sps[3]]) and avcc[4] == 0xFF
    init = init_segment(config)
    assert boxes(init) == [b"ftyp", b"moov"]


def test_h265_codec_string_for_main_profile() -> None:
    unit, _ = encode("libx265", 1)[0]
    sets = [n for n in unit.split(b"\x00\x00\x00\x01") if n and (n[0] >> 1) & 0x3F in (32, 33, 34)]
    config = video_config("H265", sets)
    # Main profile, compatible with Main and Main 10, main tier, progressive source.
    assert config.codec_string.startswith("hvc1.1.6.L")
    assert b"hvcC" in config.sample_entry


@pytest.mark.parametrize(
    ("codec", "sets", "message"),
    [
        ("H264", [], "needs an SPS and a PPS"),
        ("H265", [b"\x40\x01\x0c"], "needs a VPS, an SPS and a PPS"),
        ("PCMU", [], "supports H264 and H265"),
        ("H264", [b"\x67\x64", b"\x68\xee"], "not an H.264 SPS"),
    ],
)
def test_bad_parameter_sets_are_refused_clearly(
    codec: str, sets: list[bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        video_config(codec, sets)


def test_media_segment_layout() -> None:
    from gateway.media.fmp4 import Sample

    segment = media_segment(7, 123456789012, [Sample(b"\x00\x00\x00\x02\x41\x00", 3600, False)])
    assert boxes(segment) == [b"moof", b"mdat"]
    moof_size = struct.unpack_from(">I", segment)[0]
    trun = segment.index(b"trun")
    _, count, offset = struct.unpack_from(">IIi", segment, trun + 4)
    assert count == 1 and offset == moof_size + 8
    assert segment[offset:] == b"\x00\x00\x00\x02\x41\x00"
    tfdt = segment.index(b"tfdt")
    assert struct.unpack_from(">Q", segment, tfdt + 8)[0] == 123456789012
    with pytest.raises(ValueError, match="at least one sample"):
        media_segment(1, 0, [])
