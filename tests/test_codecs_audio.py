"""AAC (RFC 3640 AAC-hbr) and G.711 (RFC 3551) payload formats, with real PyAV encoders."""

from __future__ import annotations

import re
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import depacketizer_for, packetizer_for
from gateway.codecs.aac import (
    AacDepacketizer,
    AacPacketizer,
    audio_specific_config,
    parse_audio_specific_config,
    strip_adts,
)
from gateway.codecs.base import CodecParams
from gateway.codecs.g711 import G711Depacketizer, G711Packetizer
from tests.rtp_wire import RtpPacket, build_packets


def raises_exactly(message: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def aac_params(rate: int = 16000, channels: int = 1, config: bytes = b"") -> CodecParams:
    return CodecParams("AAC", "audio", rate, channels, config=config)


def au_header(size: int, index: int = 0) -> bytes:
    return ((size << 3) | index).to_bytes(2, "big")


# --- AudioSpecificConfig -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "channels", "expected"),
    [
        (44100, 2, "1210"),
        (48000, 2, "1190"),
        (8000, 1, "1588"),
        (16000, 1, "1408"),
        (48000, 8, "11b8"),
    ],
)
def test_audio_specific_config_known_values(rate: int, channels: int, expected: str) -> None:
    config = audio_specific_config(2, rate, channels)
    assert config.hex() == expected
    assert parse_audio_specific_config(config) == (2, rate, channels)


def test_audio_specific_config_explicit_rate_and_errors() -> None:
    config = audio_specific_config(2, 12345, 2)
    assert len(config) == 5
    assert parse_audio_specific_config(config) == (2, 12345, 2)
    with raises_exactly("audio object type 5 is not a GA (AAC) object type"):
        audio_specific_config(5, 44100, 2)
    with raises_exactly("AAC channel count 7 has no channel configuration"):
        audio_specific_config(2, 44100, 7)
    with raises_exactly("AudioSpecificConfig has reserved sampling frequency index 13"):
        parse_audio_specific_config(bytes((0x16, 0x88)))
    with raises_exactly("AudioSpecificConfig too short: 1 bytes"):
        parse_audio_specific_config(b"\x12")


def test_parse_audio_specific_config_of_ffmpeg_encoder() -> None:
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "fltp"
    encoder.open()
    # FFmpeg appends a backward-compatible SBR sync extension; the core fields come first.
    assert parse_audio_specific_config(encoder.extradata) == (2, 48000, 2)


# --- AAC packetizing -----------------------------------------------------------------------


def aac_relay(
    packetizer: AacPacketizer, units: list[bytes], depacketizer: AacDepacketizer | None = None
) -> tuple[list[bytes], list[bytes]]:
    depacketizer = depacketizer or AacDepacketizer()
    out: list[bytes] = []
    packets: list[bytes] = []
    for i, unit in enumerate(units):
        payloads = packetizer.packetize(unit, True)
        assert packetizer.timestamp_offsets(payloads) is None  # fragments share a timestamp
        for packet in build_packets(payloads, 97, i * 10, i * 1024, 5):
            rtp = RtpPacket.parse(packet)
            packets.append(rtp.payload)
            out.extend(depacketizer.push(rtp.payload, rtp.marker, rtp.timestamp))
    return out, packets


def test_aac_single_access_unit_exact_payload() -> None:
    (payload,) = AacPacketizer(aac_params()).packetize(b"\x21" * 300, True)
    assert payload == b"\x00\x10" + au_header(300) + b"\x21" * 300


@pytest.mark.parametrize(("size", "packets"), [(1395, 1), (1396, 1), (1397, 2), (3000, 3)])
def test_aac_fragmentation_around_the_max_payload(size: int, packets: int) -> None:
    unit = bytes(range(256)) * (size // 256) + bytes(size % 256)
    out, payloads = aac_relay(AacPacketizer(aac_params()), [unit, b"\x01" * 10])
    assert out == [unit, b"\x01" * 10]
    assert len(payloads) == packets + 1
    assert all(len(p) <= 1400 for p in payloads)
    # Every fragment's AU header carries the size of the whole access unit.
    assert {p[2:4] for p in payloads[:packets]} == {au_header(size)}


def test_aac_strips_adts_headers() -> None:
    raw = b"\x21\x10" * 50
    length = 7 + len(raw)
    adts = (
        bytes(
            (
                0xFF,
                0xF1,
                0x60,
                0x40 | (length >> 11),
                (length >> 3) & 0xFF,
                ((length & 7) << 5) | 0x1F,
                0xFC,
            )
        )
        + raw
    )
    assert strip_adts(adts) == raw
    assert AacPacketizer(aac_params()).packetize(adts, True)[0][4:] == raw
    with raises_exactly("ADTS frame length 107 does not match the 108-byte frame"):
        strip_adts(adts + b"\x00")


def test_aac_depacketizer_several_access_units_per_packet() -> None:
    units = [b"a" * 5, b"b" * 300, b"c"]
    payload = b"\x00\x30" + au_header(5) + au_header(300) + au_header(1) + b"".join(units)
    assert AacDepacketizer().push(payload, True, 0) == units


def test_aac_depacketizer_low_bitrate_layout() -> None:
    # AAC-lbr: sizelength=6, indexlength=2, indexdeltalength=2 -> one byte per AU header.
    depacketizer = depacketizer_for(
        CodecParams(
            "AAC",
            "audio",
            8000,
            extra={"sizelength": "6", "indexlength": "2", "indexdeltalength": "2"},
        )
    )
    payload = b"\x00\x10" + bytes((3 << 2, 2 << 2)) + b"xyz" + b"uv"
    assert depacketizer.push(payload, True, 0) == [b"xyz", b"uv"]


def test_aac_depacketizer_drops_an_incomplete_fragmented_unit() -> None:
    unit = b"\x42" * 3000
    payloads = AacPacketizer(aac_params()).packetize(unit, True)
    depacketizer = AacDepacketizer()
    assert depacketizer.push(payloads[0], False, 0) == []
    depacketizer.reset()  # the caller saw a gap: the second fragment was lost
    assert depacketizer.push(payloads[2], True, 0) == []
    # The next unit is complete again.
    for payload in payloads[:-1]:
        assert depacketizer.push(payload, False, 1024) == []
    assert depacketizer.push(payloads[-1], True, 1024) == [unit]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00", "AAC RTP payload too short: 1 bytes"),
        (b"\x00\x00abc", "AAC RTP payload has no AU headers (AU-headers-length is 0)"),
        (b"\x00\x20\x00", "AAC AU headers of 32 bits exceed the 3-byte payload"),
        (b"\x00\x18\x00\x00\x00", "AAC AU-headers-length 24 is not a whole number of AU headers"),
        (
            b"\x00\x20" + au_header(1) + au_header(1) + b"abc",
            "AAC AU sizes add up to 2 bytes but the payload carries 3",
        ),
        (
            b"\x00\x10" + au_header(2) + b"abc",
            "AAC payload carries 3 bytes for a 2-byte access unit",
        ),
    ],
)
def test_aac_depacketizer_errors(payload: bytes, message: str) -> None:
    with raises_exactly(message):
        AacDepacketizer().push(payload, True, 0)


def test_aac_packetizer_errors_and_sdp() -> None:
    packetizer = AacPacketizer(aac_params(44100, 2))
    with raises_exactly("AAC access unit of 8192 bytes exceeds the 13-bit AU-size"):
        packetizer.packetize(bytes(8192), True)
    assert packetizer.packetize(b"", True) == []
    assert packetizer.sdp_attributes() == [
        "rtpmap:97 MPEG4-GENERIC/44100/2",
        "fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
        "indexdeltalength=3;config=1210",
    ]


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 2)), max_size=10),
    size_length=st.integers(1, 16),
    index_length=st.integers(0, 8),
)
def test_aac_depacketizer_fuzz(
    packets: list[tuple[bytes, int]], size_length: int, index_length: int
) -> None:
    depacketizer = AacDepacketizer(size_length, index_length, index_length)
    for payload, timestamp in packets:
        try:
            units = depacketizer.push(payload, True, timestamp)
        except ValueError:
            continue
        assert all(len(u) < 1 << size_length for u in units)


def test_aac_real_encoder_round_trip_decodes() -> None:
    rate = 16000
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "fltp"
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    t = np.arange(rate // 2) / rate
    samples = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    units = []
    for i in range(0, len(samples) - 1024 + 1, 1024):
        frame = av.AudioFrame.from_ndarray(
            samples[None, i : i + 1024], format="fltp", layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = i
        units += [bytes(p) for p in encoder.encode(frame)]
    units += [bytes(p) for p in encoder.encode(None)]
    params = aac_params(rate, 1, bytes(encoder.extradata))
    out, _ = aac_relay(AacPacketizer(params, max_payload=64), units)  # force fragments
    assert out == units

    def decode(access_units: list[bytes]) -> np.ndarray:
        decoder = av.CodecContext.create("aac", "r")
        decoder.extradata = params.config
        frames = [f.to_ndarray() for u in access_units for f in decoder.decode(av.Packet(u))]
        return np.concatenate(frames, axis=1)

    decoded = decode(out)
    assert decoded.shape[1] >= len(units) * 1024 - 2048
    assert np.array_equal(decoded, decode(units))
    assert np.abs(decoded).max() > 0.3  # the sine came through, not silence


# --- G.711 ---------------------------------------------------------------------------------


def test_g711_static_payload_types_and_sdp() -> None:
    pcmu = packetizer_for(CodecParams("PCMU", "audio", 8000))
    pcma = packetizer_for(CodecParams("PCMA", "audio", 8000, channels=2))
    assert (pcmu.payload_type, pcma.payload_type) == (0, 8)
    assert pcmu.sdp_attributes() == ["rtpmap:0 PCMU/8000"]
    assert pcma.sdp_attributes() == ["rtpmap:8 PCMA/8000/2"]
    with raises_exactly("G.711 codec must be PCMU or PCMA, got 'G722'"):
        G711Packetizer(CodecParams("G722", "audio", 8000))


def test_g711_splits_at_20ms_blocks_with_timestamp_offsets() -> None:
    packetizer = G711Packetizer(CodecParams("PCMA", "audio", 8000))
    frame = bytes(range(256)) * 12 + b"\x05" * 128  # 3200 bytes: 400 ms
    payloads = packetizer.packetize(frame, False)
    assert [len(p) for p in payloads] == [1280, 1280, 640]
    assert b"".join(payloads) == frame
    offsets = packetizer.timestamp_offsets(payloads)
    assert offsets == [0, 1280, 2560]
    packets = [RtpPacket.parse(p) for p in build_packets(payloads, 8, 0, 1000, 1, offsets)]
    assert [p.timestamp for p in packets] == [1000, 2280, 3560]
    depacketizer = G711Depacketizer()
    assert [f for p in packets for f in depacketizer.push(p.payload, p.marker, 0)] == payloads
    small = packetizer.packetize(b"\x01" * 320, False)
    assert small == [b"\x01" * 320]
    assert packetizer.timestamp_offsets(small) is None


def test_g711_stereo_and_tiny_max_payload() -> None:
    stereo = G711Packetizer(CodecParams("PCMU", "audio", 8000, channels=2), max_payload=101)
    payloads = stereo.packetize(b"ab" * 120, False)
    assert [len(p) for p in payloads] == [100, 100, 40]  # whole sample pairs
    assert stereo.timestamp_offsets(payloads) == [0, 50, 100]
    with raises_exactly("G.711 frame of 3 bytes is not a whole number of 2-channel samples"):
        stereo.packetize(b"abc", False)


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_alaw"])
def test_g711_real_encoder_round_trip(codec: str) -> None:
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate = 8000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.open()
    t = np.arange(4000) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = 8000
    encoded = b"".join(bytes(p) for p in encoder.encode(frame))
    assert len(encoded) == 4000
    name = "PCMU" if codec == "pcm_mulaw" else "PCMA"
    payloads = packetizer_for(CodecParams(name, "audio", 8000)).packetize(encoded, False)
    depacketizer = depacketizer_for(name)
    received = b"".join(f for p in payloads for f in depacketizer.push(p, False, 0))
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate = 8000
    decoder.layout = "mono"
    decoded = np.concatenate([f.to_ndarray()[0] for f in decoder.decode(av.Packet(received))])
    assert len(decoded) == 4000
    # G.711 is lossy but close: about 1% of full scale.
    assert np.abs(decoded.astype(int) - pcm).max() < 400
