"""The relay path's span walks: the C build against the Python reference, and what both do."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rtp import spans
from gateway.rtp.spans import (
    KEY_H264,
    KEY_H265,
    KEY_NONE,
    SPAN_END,
    SPAN_KEY,
    reference_continue_span,
    reference_stamp_span,
)

SSRC = 0xCAFE
RELAY_ALL = b"\x01" * 256


def packet(
    payload: bytes,
    seq: int,
    ts: int = 9000,
    marker: bool = False,
    channel: int = 0,
    b0: int = 0x80,
    ssrc: int = SSRC,
) -> bytes:
    rtp = struct.pack("!BBHII", b0, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts, ssrc) + payload
    return b"$" + bytes((channel,)) + len(rtp).to_bytes(2, "big") + rtp


def frame(payloads: list[bytes], seq: int = 100, ts: int = 9000) -> bytes:
    last = len(payloads) - 1
    return b"".join(packet(p, seq + i, ts, i == last) for i, p in enumerate(payloads))


def both_continue(*args: object) -> tuple[int, int, int, int]:
    ours = spans.continue_span(*args)  # type: ignore[arg-type]
    assert ours == reference_continue_span(*args)  # type: ignore[arg-type]
    return ours


def both_stamp(*args: object) -> tuple[bytearray, int] | None:
    ours = spans.stamp_span(*args)  # type: ignore[arg-type]
    assert ours == reference_stamp_span(*args)  # type: ignore[arg-type]
    return ours


def test_the_c_build_is_in_use() -> None:
    # The README's install builds it (pip install -e .); without it the relay is 4x slower.
    assert spans.ACCELERATED
    assert spans.continue_span is not reference_continue_span
    assert spans.stamp_span is not reference_stamp_span


def test_a_run_is_taken_up_to_and_including_the_marker_packet() -> None:
    buf = frame([b"\x7c\x81" + b"a" * 50, b"\x7c\x01" + b"b" * 50, b"\x7c\x41" + b"c" * 10])
    buf += packet(b"\x00" * 20, 0, channel=2)  # audio after the frame: not part of it
    first = len(packet(b"\x7c\x81" + b"a" * 50, 100))
    pos, seq, room, flags = both_continue(buf, first, len(buf), 100, 9000, SSRC, 1000, KEY_H264)
    assert (seq, flags) == (102, SPAN_END)
    assert buf[pos : pos + 2] == b"$\x02"
    assert room == 1000 - 52 - 12


@pytest.mark.parametrize(
    ("payloads", "key_codec", "keyframe"),
    [
        ([b"\x41" + b"p" * 30, b"\x65" + b"i" * 30], KEY_H264, True),  # single NAL, IDR
        ([b"\x41" + b"p" * 30, b"\x7c\x85" + b"i" * 30], KEY_H264, True),  # FU-A start, IDR
        ([b"\x41" + b"p" * 30, b"\x7c\x05" + b"i" * 30], KEY_H264, False),  # FU-A continuation
        ([b"\x41" + b"p" * 30, b"\x18\x00\x02\x06\x01\x00\x02\x65\x88"], KEY_H264, True),
        ([b"\x41" + b"p" * 30, b"\x18\x00\x02\x06\x01\x00\x02\x41\x88"], KEY_H264, False),
        ([b"\x41" + b"p" * 30, b"\x7c"], KEY_H264, False),  # a fragment too short to say
        ([b"\x41" + b"p" * 30, b"\x65" + b"i" * 30], KEY_NONE, False),  # not asked
        ([b"\x02\x01" + b"p" * 30, b"\x26\x01" + b"i" * 30], KEY_H265, True),  # IDR_W_RADL
        ([b"\x02\x01" + b"p" * 30, b"\x62\x01\x93" + b"i" * 30], KEY_H265, True),  # FU start
        ([b"\x02\x01" + b"p" * 30, b"\x62\x01\x13" + b"i" * 30], KEY_H265, False),  # middle
        ([b"\x02\x01" + b"p" * 30, b"\x60\x01\x00\x02\x26\x01"], KEY_H265, True),  # AP
        ([b"\x02\x01" + b"p" * 30, b"\x62\x01"], KEY_H265, False),
    ],
)
def test_keyframe_data_is_found_by_the_codec_rules(
    payloads: list[bytes], key_codec: int, keyframe: bool
) -> None:
    buf = frame(payloads)
    first = len(packet(payloads[0], 100))
    *_, flags = both_continue(buf, first, len(buf), 100, 9000, SSRC, 10_000, key_codec)
    assert flags == SPAN_END | (SPAN_KEY if keyframe else 0)


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (packet(b"x" * 20, 102), "sequence gap"),
        (packet(b"x" * 20, 101, ts=9001), "new timestamp"),
        (packet(b"x" * 20, 101, ssrc=1), "other source"),
        (packet(b"x" * 20, 101, b0=0x90), "header extension"),
        (packet(b"x" * 20, 101, b0=0x81), "CSRC"),
        (packet(b"", 101), "empty payload"),
        (packet(b"x" * 20, 101)[:-1], "cut by the read"),
    ],
)
def test_a_packet_that_does_not_simply_continue_stops_the_walk(second: bytes, why: str) -> None:
    first = packet(b"x" * 20, 100)
    buf = first + second
    pos, seq, room, flags = both_continue(buf, len(first), len(buf), 100, 9000, SSRC, 99, 0)
    assert (pos, seq, room, flags) == (len(first), 100, 99, 0), why


def test_the_walk_keeps_to_the_channel_it_starts_on() -> None:
    first = packet(b"x" * 20, 100)
    buf = first + packet(b"x" * 20, 101) + packet(b"x" * 20, 102, channel=2)
    pos, seq, _, flags = both_continue(buf, len(first), len(buf), 100, 9000, SSRC, 99, 0)
    assert (pos, seq, flags) == (2 * len(first), 101, 0)


def test_the_walk_stops_at_the_sequence_wrap_and_at_the_room_left() -> None:
    buf = packet(b"x" * 20, 0xFFFF) + packet(b"x" * 20, 0) + packet(b"x" * 20, 1)
    start = len(packet(b"x" * 20, 0))
    # 0xFFFF -> 0 is left to the reader's full accounting (it counts the wrap).
    assert both_continue(buf, start, len(buf), 0xFFFF, 9000, SSRC, 99, 0)[0] == start
    buf = frame([b"x" * 20] * 4)
    one = len(packet(b"x" * 20, 0))
    assert both_continue(buf, one, len(buf), 100, 9000, SSRC, 40, 0)[:3] == (3 * one, 102, 0)


def test_bad_arguments_are_value_errors() -> None:
    for walk in (spans.continue_span, reference_continue_span):
        with pytest.raises(ValueError, match="outside the buffer"):
            walk(b"$\x00", 0, 3, 0, 0, 0, 0, 0)
        with pytest.raises(ValueError, match="outside the buffer"):
            walk(b"$\x00", -1, 2, 0, 0, 0, 0, 0)
        with pytest.raises(ValueError, match="key_codec"):
            walk(b"$\x00", 0, 2, 0, 0, 0, 0, 3)
    for stamp in (spans.stamp_span, reference_stamp_span):
        with pytest.raises(ValueError, match="outside the buffer"):
            stamp(b"abc", 2, 1, 0, 96, 0, 0, 0, 13, 1500, RELAY_ALL)
        with pytest.raises(ValueError, match="256 entries"):
            stamp(b"abc", 0, 3, 0, 96, 0, 0, 0, 13, 1500, b"\x01")
        with pytest.raises(ValueError, match="payload byte"):
            stamp(b"abc", 0, 3, 0, 96, 0, 0, 0, 12, 1500, RELAY_ALL)


def test_stamping_writes_our_headers_over_theirs_and_copies_once() -> None:
    camera = b"junk" + frame([b"\x7c\x81" + b"a" * 40, b"\x7c\x41" + b"b" * 40], seq=7, ts=1)
    stamped = both_stamp(
        camera, 4, len(camera), 2, 97, 0xFFFF, 0xDEADBEEF, 0x1234, 13, 60, RELAY_ALL
    )
    assert stamped is not None
    blob, count = stamped
    assert count == 2 and isinstance(blob, bytearray) and len(blob) == len(camera) - 4
    headers = []
    pos = 0
    while pos < len(blob):
        length = int.from_bytes(blob[pos + 2 : pos + 4], "big")
        headers.append(struct.unpack_from("!cBHBBHII", blob, pos))
        assert blob[pos + 16 : pos + 4 + length] == camera[4 + pos + 16 : 4 + pos + 4 + length]
        pos += 4 + length
    assert headers == [
        (b"$", 2, 54, 0x80, 97, 0xFFFF, 0xDEADBEEF, 0x1234),
        (b"$", 2, 54, 0x80, 0x80 | 97, 0, 0xDEADBEEF, 0x1234),
    ]
    assert camera[4:6] == b"$\x00"  # the read buffer itself is left alone


@pytest.mark.parametrize(
    ("cut", "shortest", "longest", "table"),
    [
        (0, 13, 60, b"\x01" * 0x7C + b"\x00" + b"\x01" * 131),  # a payload the codec refuses
        (0, 13, 50, RELAY_ALL),  # too long
        (0, 60, 1500, RELAY_ALL),  # too short
        (1, 13, 1500, RELAY_ALL),  # the last packet runs past the end
        (56, 13, 1500, RELAY_ALL),  # a "$" prefix cut in half
    ],
)
def test_stamping_refuses_what_may_not_go_on_as_it_is(
    cut: int, shortest: int, longest: int, table: bytes
) -> None:
    camera = frame([b"\x7c\x81" + b"a" * 40, b"\x7c\x41" + b"b" * 40])
    end = len(camera) - cut if cut != 56 else 56
    assert both_stamp(camera, 0, end, 0, 96, 1, 2, 3, shortest, longest, table) is None


def _mutated_stream(draw: st.DrawFn) -> tuple[bytes, int]:
    payloads = draw(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6))
    buf = bytearray(frame(payloads, seq=draw(st.sampled_from([100, 0xFFFE])), ts=5))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(buf) - 1))
        buf[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(buf)))
    return bytes(buf), cut


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int]:
    return _mutated_stream(draw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(),
    pos=st.integers(0, 80),
    seq=st.sampled_from([99, 100, 0xFFFD, 0xFFFF]),
    room=st.integers(0, 200),
    key_codec=st.sampled_from([KEY_NONE, KEY_H264, KEY_H265]),
)
def test_c_and_python_walk_any_bytes_alike(
    stream: tuple[bytes, int],
    pos: int,
    seq: int,
    room: int,
    key_codec: int,
) -> None:
    buf, size = stream
    args = (buf, min(pos, size), size, seq, 5, SSRC, room, key_codec)
    try:
        expected = reference_continue_span(*args)
    except ValueError:
        with pytest.raises(ValueError):
            spans.continue_span(*args)
        return
    assert spans.continue_span(*args) == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(),
    start=st.integers(0, 40),
    seq=st.integers(0, 0xFFFF),
    shortest=st.integers(13, 30),
    longest=st.integers(13, 60),
    table=st.binary(min_size=256, max_size=256),
)
def test_c_and_python_stamp_any_bytes_alike(
    stream: tuple[bytes, int], start: int, seq: int, shortest: int, longest: int, table: bytes
) -> None:
    buf, end = stream
    args = (buf, min(start, end), end, 4, 96, seq, 0xFFFFFFFF, 7, shortest, longest, table)
    assert spans.stamp_span(*args) == reference_stamp_span(*args)
