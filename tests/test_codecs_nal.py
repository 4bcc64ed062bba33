"""H.264 (RFC 6184) and H.265 (RFC 7798) packetizers and depacketizers on synthetic NAL units.

The same behaviours are checked for both codecs through a small per-codec description; real
encoder output is covered in test_codecs_video.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import h264, h265
from gateway.codecs.base import DEFAULT_MAX_PAYLOAD, CodecParams
from gateway.codecs.h264 import NalDepacketizer, NalPacketizer, split_annexb
from tests.rtp_wire import RtpPacket, build_packets


@dataclass(frozen=True)
class Codec:
    name: str
    header_size: int
    fu_prefix_size: int
    aggregation_type: int
    fu_type: int
    aud: int
    sei: int
    parameter_sets: tuple[int, ...]
    idr: int
    non_idr: int
    packetizer: type[NalPacketizer]
    depacketizer: type[NalDepacketizer]

    def nal(self, nal_type: int, size: int, seed: int = 0) -> bytes:
        """A NAL unit of ``size`` bytes without zero bytes (so no start-code emulation)."""
        one_byte = bytes((0x60 | nal_type,))
        header = one_byte if self.header_size == 1 else bytes((nal_type << 1, 0x01))
        body = random.Random(seed).randbytes(size - self.header_size).replace(b"\x00", b"\x07")
        return header + body

    def nal_type(self, nal: bytes) -> int:
        return nal[0] & 0x1F if self.header_size == 1 else (nal[0] >> 1) & 0x3F

    def packet_type(self, payload: bytes) -> int:
        return self.nal_type(payload)

    def params(self, parameter_sets: tuple[bytes, ...] = ()) -> CodecParams:
        return CodecParams(self.name, "video", 90000, parameter_sets=parameter_sets)


H264 = Codec("H264", 1, 2, 24, 28, 9, 6, (7, 8), 5, 1, h264.H264Packetizer, h264.H264Depacketizer)
H265 = Codec(
    "H265", 2, 3, 48, 49, 35, 39, (32, 33, 34), 19, 1, h265.H265Packetizer, h265.H265Depacketizer
)


def raises_exactly(message: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


CODECS = pytest.mark.parametrize("codec", [H264, H265], ids=["h264", "h265"])


def annexb(nals: list[bytes], start_codes: tuple[bytes, ...] = (b"\x00\x00\x00\x01",)) -> bytes:
    return b"".join(start_codes[i % len(start_codes)] + nal for i, nal in enumerate(nals))


def relay(
    codec: Codec,
    packetizer: NalPacketizer,
    access_units: list[bytes],
    keyframes: list[bool] | None = None,
) -> tuple[list[bytes], list[list[bytes]]]:
    depacketizer = codec.depacketizer()
    frames: list[bytes] = []
    all_payloads = []
    seq = 65530  # wraps during the test
    for i, au in enumerate(access_units):
        keyframe = keyframes[i] if keyframes else False
        payloads = packetizer.packetize(au, keyframe)
        all_payloads.append(payloads)
        for packet in build_packets(payloads, 96, seq, 3000 * i, 0x1234):
            rtp = RtpPacket.parse(packet)
            frames.extend(depacketizer.push(rtp.payload, rtp.marker, rtp.timestamp))
        seq = (seq + len(payloads)) & 0xFFFF
    return frames, all_payloads


@CODECS
def test_multi_nal_access_unit_round_trips_with_aggregation_and_fragments(codec: Codec) -> None:
    nals = [codec.nal(codec.aud, 3 if codec.header_size == 2 else 2)]
    nals += [codec.nal(t, 20 + t, seed=t) for t in codec.parameter_sets]
    nals += [
        codec.nal(codec.sei, 40),
        codec.nal(codec.idr, 5000, seed=1),
        codec.nal(codec.idr, 300, seed=2),
    ]
    # Mixed 3- and 4-byte start codes, as FFmpeg and cameras produce them.
    au = annexb(nals, (b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    packetizer = codec.packetizer(codec.params())
    frames, (payloads,) = relay(codec, packetizer, [au])
    assert frames == [annexb(nals)]
    # AUD + parameter sets + SEI aggregate into one packet, the big slice is fragmented and
    # the last small slice travels alone.
    types = [codec.packet_type(p) for p in payloads]
    assert types[0] == codec.aggregation_type
    assert types[1:-1] == [codec.fu_type] * (len(payloads) - 2)
    assert codec.nal_type(payloads[-1]) == codec.idr
    assert payloads[-1] == nals[-1]
    assert all(len(p) <= DEFAULT_MAX_PAYLOAD for p in payloads)


@CODECS
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_nal_sizes_around_the_max_payload(codec: Codec, delta: int) -> None:
    max_payload = 1200
    nal = codec.nal(codec.non_idr, max_payload + delta)
    packetizer = codec.packetizer(codec.params(), max_payload=max_payload)
    frames, (payloads,) = relay(codec, packetizer, [annexb([nal])])
    assert frames == [annexb([nal])]
    if delta <= 0:
        assert payloads == [nal]  # single NAL unit packet, exactly at the limit included
    else:
        assert len(payloads) == 2
        assert [codec.packet_type(p) for p in payloads] == [codec.fu_type] * 2
        assert abs(len(payloads[0]) - len(payloads[1])) <= 1
    assert all(len(p) <= max_payload for p in payloads)


@CODECS
def test_aggregation_stops_exactly_at_the_max_payload(codec: Codec) -> None:
    max_payload = 200
    # Aggregate header + two (2-byte size + NAL) entries exactly fill the payload.
    first = codec.nal(codec.non_idr, 90, seed=1)
    second_size = max_payload - codec.header_size - 2 - 90 - 2
    second = codec.nal(codec.non_idr, second_size, seed=2)
    third = codec.nal(codec.non_idr, 10, seed=3)
    packetizer = codec.packetizer(codec.params(), max_payload=max_payload)
    frames, (payloads,) = relay(codec, packetizer, [annexb([first, second, third])])
    assert [len(p) for p in payloads] == [max_payload, 10]
    assert payloads[1] == third
    assert frames == [annexb([first, second, third])]


@CODECS
@pytest.mark.parametrize("size", [65535, 65536, 70_001, 250_000])
def test_nal_larger_than_64k_round_trips_with_even_fragments(codec: Codec, size: int) -> None:
    nal = codec.nal(codec.idr, size, seed=size)
    packetizer = codec.packetizer(codec.params())
    frames, (payloads,) = relay(codec, packetizer, [annexb([nal])])
    assert frames == [annexb([nal])]
    sizes = [len(p) for p in payloads]
    assert max(sizes) <= DEFAULT_MAX_PAYLOAD
    assert max(sizes) - min(sizes) <= 1
    fu_data = size - codec.header_size
    assert len(payloads) == -(-fu_data // (DEFAULT_MAX_PAYLOAD - codec.fu_prefix_size))


@CODECS
def test_60kb_nal_gives_43_or_44_near_equal_packets(codec: Codec) -> None:
    for size in (60_000, 61_440):
        payloads = codec.packetizer(codec.params()).packetize(
            annexb([codec.nal(codec.idr, size)]), True
        )
        assert 43 <= len(payloads) <= 44
        sizes = {len(p) for p in payloads}
        assert max(sizes) - min(sizes) <= 1


@CODECS
def test_parameter_sets_inserted_before_a_keyframe_that_lacks_them(codec: Codec) -> None:
    sets = [codec.nal(t, 12 + i, seed=i) for i, t in enumerate(codec.parameter_sets)]
    idr = codec.nal(codec.idr, 3000, seed=10)
    p_frame = codec.nal(codec.non_idr, 500, seed=11)
    aud = codec.nal(codec.aud, codec.header_size + 1)
    packetizer = codec.packetizer(codec.params())
    access_units = [
        annexb([*sets, idr]),  # in band: learned
        annexb([p_frame]),  # not a keyframe: left alone
        annexb([aud, idr]),  # IDR without parameter sets: inserted after the AUD
        annexb([*sets, idr]),  # already complete: nothing duplicated
    ]
    frames, _ = relay(codec, packetizer, access_units)
    assert frames == [
        annexb([*sets, idr]),
        annexb([p_frame]),
        annexb([aud, *sets, idr]),
        annexb([*sets, idr]),
    ]


@CODECS
def test_parameter_sets_from_params_and_updated_in_band(codec: Codec) -> None:
    old = tuple(codec.nal(t, 12, seed=1) for t in codec.parameter_sets)
    new = [codec.nal(t, 14, seed=2) for t in codec.parameter_sets]
    idr = codec.nal(codec.idr, 800, seed=3)
    packetizer = codec.packetizer(codec.params(old))
    # The keyframe flag alone (no IDR/IRAP NAL, e.g. a recovery point) also gets them.
    recovery = codec.nal(codec.non_idr, 700, seed=4)
    frames, _ = relay(
        codec,
        packetizer,
        [annexb([idr]), annexb([recovery]), annexb([*new, idr]), annexb([idr])],
        keyframes=[True, True, True, True],
    )
    assert frames == [
        annexb([*old, idr]),
        annexb([*old, recovery]),
        annexb([*new, idr]),
        annexb([*new, idr]),
    ]
    assert packetizer.current_parameter_sets() == new


def depacketize_payloads(codec: Codec, payloads: list[bytes]) -> list[bytes]:
    depacketizer = codec.depacketizer()
    frames: list[bytes] = []
    for i, payload in enumerate(payloads):
        frames.extend(depacketizer.push(payload, i == len(payloads) - 1, 9000))
    return frames


@CODECS
def test_relay_passes_camera_payloads_through_and_completes_keyframes(codec: Codec) -> None:
    """The native ingest's fast path: a camera's own payloads go out as they are, and a
    keyframe that lacks parameter sets gets the latest ones, after any AUD."""
    old = tuple(codec.nal(t, 12, seed=1) for t in codec.parameter_sets)
    new = [codec.nal(t, 14, seed=2) for t in codec.parameter_sets]
    idr = codec.nal(codec.idr, 5000, seed=3)
    aud = codec.nal(codec.aud, codec.header_size + 1)
    camera = codec.packetizer(codec.params(), max_payload=1300)  # the camera's own MTU
    relay_packetizer = codec.packetizer(codec.params(old))

    p_frame = camera.packetize(annexb([codec.nal(codec.non_idr, 3000, seed=4)]), False)
    assert relay_packetizer.relay(p_frame, False) == p_frame

    bare = camera.packetize(annexb([aud, idr]), True)
    relayed = relay_packetizer.relay(bare, True)
    assert relayed is not None and relayed[0] == bare[0] and relayed[2:] == bare[1:]
    assert depacketize_payloads(codec, relayed) == [annexb([aud, *old, idr])]

    # Sets sent in band (aggregated, as cameras do) are kept as they are and remembered.
    complete = camera.packetize(annexb([*new, idr]), True)
    assert codec.packet_type(complete[0]) == codec.aggregation_type
    assert relay_packetizer.relay(complete, True) == complete
    assert relay_packetizer.current_parameter_sets() == new
    later = relay_packetizer.relay(camera.packetize(annexb([idr]), True), True)
    assert later is not None
    assert depacketize_payloads(codec, later) == [annexb([*new, idr])]


@CODECS
def test_relay_refuses_what_clients_were_not_offered(codec: Codec) -> None:
    camera = codec.packetizer(codec.params(), max_payload=4000)
    big = camera.packetize(annexb([codec.nal(codec.non_idr, 3000)]), False)
    assert len(big) == 1 and len(big[0]) > 1440
    packetizer = codec.packetizer(codec.params())
    assert packetizer.relay(big, False) is None  # larger than an Ethernet MTU allows
    assert packetizer.relay([b""], False) is None
    if codec is H264:
        fu_b = bytes((0x60 | 29, 0x85)) + b"\x11" * 100  # FU-B: interleaved mode only
        assert packetizer.relay([fu_b], False) is None
        interleaved = codec.packetizer(
            CodecParams("H264", "video", 90000, extra={"packetization-mode": "2"})
        )
        small = [codec.nal(codec.non_idr, 100)]
        assert interleaved.relay(small, False) is None
        assert packetizer.relay(small, False) == small
    else:
        paci = bytes((50 << 1, 1)) + b"\x11" * 100
        assert packetizer.relay([paci], False) is None
        donl = codec.packetizer(
            CodecParams("H265", "video", 90000, extra={"sprop-max-don-diff": "2"})
        )
        assert donl.relay([codec.nal(codec.non_idr, 100)], False) is None
    # A truncated aggregation packet in a keyframe is left to the depacketizer to refuse.
    truncated = bytes(codec.nal(codec.aggregation_type, codec.header_size)) + b"\x00\x40\x01"
    assert packetizer.relay([truncated], True) is None


@CODECS
def test_depacketizer_flushes_on_timestamp_change_when_the_marker_is_lost(codec: Codec) -> None:
    depacketizer = codec.depacketizer()
    first = codec.nal(codec.non_idr, 100, seed=1)
    second = codec.nal(codec.non_idr, 100, seed=2)
    assert depacketizer.push(first, False, 1000) == []
    assert depacketizer.push(second, True, 4000) == [annexb([first]), annexb([second])]


@CODECS
def test_depacketizer_drops_a_fragmented_nal_after_a_gap(codec: Codec) -> None:
    packetizer = codec.packetizer(codec.params(), max_payload=500)
    big = codec.nal(codec.non_idr, 2000, seed=1)
    small = codec.nal(codec.non_idr, 100, seed=2)
    payloads = packetizer.packetize(annexb([big, small]), False)
    assert len(payloads) == 6  # 5 fragments + the small NAL
    depacketizer = codec.depacketizer()
    # Lose the start fragment: the rest of that NAL unit is dropped, the next one kept.
    out = [f for p in payloads[1:-1] for f in depacketizer.push(p, False, 0)]
    out += depacketizer.push(payloads[-1], True, 0)
    assert out == [annexb([small])]
    # Lose a middle fragment: the caller sees the sequence gap and resets.
    depacketizer.push(payloads[0], False, 9000)
    depacketizer.push(payloads[1], False, 9000)
    depacketizer.reset()
    out = [f for p in payloads[3:-1] for f in depacketizer.push(p, False, 9000)]
    out += depacketizer.push(payloads[-1], True, 9000)
    assert out == [annexb([small])]


@CODECS
def test_depacketizer_bounds_the_access_unit_size(codec: Codec) -> None:
    depacketizer = codec.depacketizer(max_frame_size=10_000)
    nal = codec.nal(codec.non_idr, 3000)
    for _ in range(3):
        assert depacketizer.push(nal, False, 0) == []
    with raises_exactly(f"{codec.name[0]}.{codec.name[1:]} access unit exceeds 10000 bytes"):
        depacketizer.push(nal, False, 0)
    # The oversized frame was dropped; the depacketizer keeps working.
    assert depacketizer.push(nal, True, 3000) == [annexb([nal])]


MALFORMED = [
    (h264.H264Depacketizer, b"", "H.264 RTP payload is empty"),
    (h264.H264Depacketizer, b"\x00abc", "H.264 NAL unit type 0 is reserved"),
    (h264.H264Depacketizer, b"\x7eabc", "H.264 NAL unit type 30 is reserved"),
    (
        h264.H264Depacketizer,
        b"\x19abc",
        "H.264 packet type 25 (STAP-B) is not allowed in packetization-mode=1",
    ),
    (
        h264.H264Depacketizer,
        b"\x1d\x85abc",
        "H.264 packet type 29 (FU-B) is not allowed in packetization-mode=1",
    ),
    (h264.H264Depacketizer, b"\x7c", "H.264 FU-A payload too short: 1 bytes"),
    (
        h264.H264Depacketizer,
        b"\x7c\xc5abc",
        "H.264 fragmentation unit has both start and end bits set",
    ),
    (h264.H264Depacketizer, b"\x78", "H.264 aggregation packet holds no NAL unit"),
    (h264.H264Depacketizer, b"\x78\x00", "H.264 aggregation packet has a truncated size field"),
    (h264.H264Depacketizer, b"\x78\x00\x00", "H.264 aggregation packet has a 0-byte NAL unit"),
    (
        h264.H264Depacketizer,
        b"\x78\x00\x05\x65ab",
        "H.264 aggregated NAL unit of 5 bytes exceeds the packet (3 bytes left)",
    ),
    (h265.H265Depacketizer, b"\x02", "H.265 RTP payload too short: 1 bytes"),
    (h265.H265Depacketizer, b"\x62\x01", "H.265 FU payload too short: 2 bytes"),
    (
        h265.H265Depacketizer,
        b"\x62\x01\xd3abc",
        "H.265 fragmentation unit has both start and end bits set",
    ),
    (h265.H265Depacketizer, b"\x64\x01abc", "H.265 PACI packets (type 50) are not supported"),
    (h265.H265Depacketizer, b"\x7e\x01abc", "H.265 packet type 63 is unspecified"),
    (
        h265.H265Depacketizer,
        b"\x60\x01\x00\x01\x02",
        "H.265 aggregation packet has a 1-byte NAL unit",
    ),
    (h265.H265Depacketizer, b"\x60\x01", "H.265 aggregation packet holds no NAL unit"),
]


@pytest.mark.parametrize(("depacketizer_class", "payload", "message"), MALFORMED)
def test_depacketizer_rejects_malformed_payloads(
    depacketizer_class: type[NalDepacketizer], payload: bytes, message: str
) -> None:
    with raises_exactly(message):
        depacketizer_class().push(payload, True, 0)


def test_h264_fragment_type_mismatch_is_an_error() -> None:
    depacketizer = h264.H264Depacketizer()
    depacketizer.push(b"\x7c\x85start", False, 0)
    with raises_exactly("H.264 fragment of NAL type 1 continues a NAL unit of type 5"):
        depacketizer.push(b"\x7c\x41end", True, 0)


def test_h265_aggregation_header_takes_the_lowest_layer_and_tid() -> None:
    packetizer = h265.H265Packetizer(CodecParams("H265", "video", 90000))
    a = bytes((1 << 1, 0x0B)) + b"abc"  # layer 1, TID 3
    b = bytes((1 << 1, 0x02)) + b"def"  # layer 0, TID 2
    (payload,) = packetizer.packetize(annexb([a, b]), False)
    assert payload[:2] == bytes((48 << 1, 0x02))
    assert payload[2:] == b"\x00\x05" + a + b"\x00\x05" + b


def test_split_annexb() -> None:
    data = b"\x00\x00\x00\x01\x67AB\x00\x00\x01\x68C\x00\x00\x00\x00\x01\x65DEF\x00"
    assert [bytes(n) for n in split_annexb(data)] == [b"\x67AB", b"\x68C", b"\x65DEF"]
    assert split_annexb(b"") == []
    with raises_exactly("Annex-B data has no start code"):
        split_annexb(b"\x65abc")
    with raises_exactly("Annex-B data has 3 bytes of garbage before the first start code"):
        split_annexb(b"xyz\x00\x00\x01\x65")


def test_max_payload_must_leave_room_for_fragments() -> None:
    with raises_exactly("max_payload 3 is too small for H.264"):
        h264.H264Packetizer(CodecParams("H264", "video", 90000), max_payload=3)
    with raises_exactly("RTP payload type must be 0..127, got 200"):
        h265.H265Packetizer(CodecParams("H265", "video", 90000), payload_type=200)


@CODECS
@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(
        st.tuples(st.binary(max_size=64), st.booleans(), st.integers(0, 3)), max_size=12
    )
)
def test_depacketizer_fuzz_raises_only_value_error(
    codec: Codec, packets: list[tuple[bytes, bool, int]]
) -> None:
    depacketizer = codec.depacketizer(max_frame_size=300)
    for payload, marker, timestamp in packets:
        try:
            frames = depacketizer.push(payload, marker, timestamp)
        except ValueError:
            continue
        assert all(f.startswith(b"\x00\x00\x00\x01") for f in frames)


@CODECS
@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8), max_payload=st.integers(8, 1500)
)
def test_packetizer_round_trip_property(codec: Codec, sizes: list[int], max_payload: int) -> None:
    nals = [
        codec.nal(codec.non_idr, size + codec.header_size, seed=i) for i, size in enumerate(sizes)
    ]
    packetizer = codec.packetizer(codec.params(), max_payload=max_payload)
    frames, (payloads,) = relay(codec, packetizer, [annexb(nals)])
    assert frames == [annexb(nals)]
    assert all(len(p) <= max_payload for p in payloads)
