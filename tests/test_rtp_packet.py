"""RTP/RTCP wire types (RFC 3550): exact bytes, round trips, precise errors and fuzzing."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rtp.interleaved import interleaved_payloads
from gateway.rtp.packet import (
    NTP_UNIX_OFFSET,
    ReportBlock,
    SenderReport,
    ntp_from_unix,
    unix_from_ntp,
)
from tests.rtp_wire import (
    Bye,
    ReceiverReport,
    RtpPacket,
    SourceDescription,
    build_packets,
    dlsr_units,
    ntp_short,
    parse_rtcp_compound,
    rtcp_compound,
    rtp_headers,
    seq_distance,
)


def raises_exactly(message: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_rtp_packet_exact_bytes_and_round_trip() -> None:
    packet = RtpPacket(
        payload_type=96,
        sequence_number=0xBEEF,
        timestamp=0x01020304,
        ssrc=0xCAFEBABE,
        payload=b"hello",
        marker=True,
        csrc=(1, 2),
        extension_profile=0xBEDE,
        extension=b"\x10\xff\x00\x00",
        padding_size=3,
    )
    data = bytes(packet)
    assert data == (
        bytes((0x80 | 0x20 | 0x10 | 2, 0x80 | 96))
        + struct.pack("!HII", 0xBEEF, 0x01020304, 0xCAFEBABE)
        + struct.pack("!II", 1, 2)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\xff\x00\x00"
        + b"hello"
        + b"\x00\x00\x03"
    )
    assert RtpPacket.parse(data) == packet
    plain = RtpPacket(0, 1, 2, 3, b"x")
    assert bytes(plain) == b"\x80\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03x"
    assert RtpPacket.parse(bytes(plain)) == plain


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00\x01\x00\x00\x00", "RTP packet too short: 7 bytes"),
        (b"\x40\x60" + bytes(10), "RTP version must be 2, got 1"),
        (b"\x83\x60" + bytes(18), "RTP packet too short for 3 CSRCs: 20 bytes, need 24"),
        (b"\x90\x60" + bytes(12), "RTP header extension truncated: no room for its header"),
        (
            b"\x90\x60" + bytes(10) + b"\xbe\xde\x00\x02" + bytes(4),
            "RTP header extension truncated: 8 bytes declared, 4 present",
        ),
        (b"\xa0\x60" + bytes(10) + b"abc\x28", "RTP padding length 40 exceeds payload"),
        (b"\xa0\x60" + bytes(10) + b"abc\x00", "RTP padding length 0 is invalid"),
        (b"\xa0\x60" + bytes(10), "RTP padding bit set but the packet has no payload"),
    ],
)
def test_rtp_parse_errors(data: bytes, message: str) -> None:
    with raises_exactly(message):
        RtpPacket.parse(data)


def test_rtp_serialise_errors() -> None:
    with raises_exactly("RTP payload type must fit in 7 bits, got 128"):
        bytes(RtpPacket(128, 0, 0, 0))
    with raises_exactly("RTP sequence number must fit in 16 bits, got 65536"):
        bytes(RtpPacket(0, 65536, 0, 0))
    with raises_exactly("RTP packet can carry at most 15 CSRCs, got 16"):
        bytes(RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))))
    with raises_exactly("RTP header extension must be a multiple of 4 bytes under 256 KiB, got 3"):
        bytes(RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc"))


def test_build_packets_wraps_sequence_and_marks_the_last_packet() -> None:
    payloads = [b"a", b"bb", b"ccc"]
    packets = [RtpPacket.parse(p) for p in build_packets(payloads, 96, 65534, 2**32 + 5, 77)]
    assert [p.sequence_number for p in packets] == [65534, 65535, 0]
    assert [p.marker for p in packets] == [False, False, True]
    assert [p.payload for p in packets] == payloads
    assert {(p.timestamp, p.ssrc, p.payload_type) for p in packets} == {(5, 77, 96)}
    headers = rtp_headers(3, 96, 65534, 2**32 + 5, 77)
    assert [h + p for h, p in zip(headers, payloads, strict=True)] == build_packets(
        payloads, 96, 65534, 2**32 + 5, 77
    )


def test_build_packets_with_timestamp_offsets() -> None:
    packets = build_packets([b"a" * 160, b"b" * 160], 0, 10, 2**32 - 100, 1, [0, 160])
    assert [RtpPacket.parse(p).timestamp for p in packets] == [2**32 - 100, 60]
    with raises_exactly("1 timestamp offsets given for 2 packets"):
        build_packets([b"a", b"b"], 0, 10, 0, 1, [0])
    with raises_exactly("RTP SSRC must fit in 32 bits, got 4294967296"):
        build_packets([b"a"], 0, 10, 0, 2**32)


def test_seq_distance_wraps() -> None:
    assert seq_distance(2, 65534) == 4
    assert seq_distance(65534, 2) == -4
    assert seq_distance(100, 100) == 0


def test_ntp_helpers() -> None:
    assert ntp_from_unix(0.0) == NTP_UNIX_OFFSET << 32
    ntp = ntp_from_unix(1_700_000_000.25)
    assert ntp == ((1_700_000_000 + NTP_UNIX_OFFSET) << 32) | (1 << 30)
    assert unix_from_ntp(ntp) == 1_700_000_000.25
    assert ntp_short(0x1122334455667788) == 0x33445566
    assert dlsr_units(1.5) == 98304
    assert dlsr_units(-1) == 0


def _sender_report() -> SenderReport:
    blocks = (
        ReportBlock(0x11111111, 25, -3, (2 << 16) | 500, 40, 0x33445566, 65536),
        ReportBlock(0x22222222, 0, 70000, 9, 0, 0, 0),
    )
    return SenderReport(0xAABBCCDD, ntp_from_unix(1_700_000_000.5), 90000, 12, 3456, blocks)


def test_sender_report_exact_bytes_and_round_trip() -> None:
    report = _sender_report()
    data = bytes(report)
    assert len(data) == 28 + 2 * 24
    assert data[:4] == b"\x82\xc8\x00\x12"  # V=2, RC=2, PT=200, length 18 words
    assert data[28:52] == struct.pack(
        "!IB3sIIII", 0x11111111, 25, b"\xff\xff\xfd", (2 << 16) | 500, 40, 0x33445566, 65536
    )
    assert SenderReport.parse(data) == report


def test_receiver_report_sdes_and_bye_round_trip() -> None:
    rr = ReceiverReport(5, (ReportBlock(6, 1, 2, 3, 4, 5, 6),))
    assert ReceiverReport.parse(bytes(rr)) == rr
    assert ReceiverReport.parse(bytes(ReceiverReport(9))) == ReceiverReport(9)
    sdes = SourceDescription.cname(0xAABBCCDD, "gateway@example")
    data = bytes(sdes)
    assert len(data) % 4 == 0
    assert data[:4] == b"\x81\xca\x00\x06"
    assert SourceDescription.parse(data) == sdes
    bye = Bye((1, 2), b"shutdown")
    data = bytes(bye)
    assert data == b"\x82\xcb\x00\x05" + struct.pack("!II", 1, 2) + b"\x08shutdown\x00\x00\x00"
    assert Bye.parse(data) == bye
    assert Bye.parse(bytes(Bye((7,)))) == Bye((7,))


def test_compound_parse_skips_unknown_types() -> None:
    app = b"\x80\xcc\x00\x02" + struct.pack("!I", 1) + b"NAME"  # APP, not used by us
    packets = [_sender_report(), SourceDescription.cname(1, "x"), Bye((1,))]
    data = bytes(packets[0]) + bytes(packets[1]) + app + bytes(packets[2])
    assert parse_rtcp_compound(data) == packets
    assert rtcp_compound(packets) == data.replace(app, b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP compound packet is empty"),
        (b"\x80\xc8\x00", "RTCP packet too short: 3 bytes"),
        (b"\x40\xc9\x00\x01" + bytes(4), "RTCP version must be 2, got 1"),
        (b"\x80\xc9\x00\x07" + bytes(4), "RTCP length field says 32 bytes but 8 remain"),
        (
            b"\x81\xc9\x00\x01" + bytes(4),
            "RTCP receiver report with 1 report blocks needs 32 bytes, got 8",
        ),
        (b"\x80\xc8\x00\x01" + bytes(4), "RTCP sender report too short: 8 bytes"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x00", "RTCP padding length 0 is invalid"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09", "RTCP padding length 9 exceeds payload"),
        (b"\x81\xca\x00\x01" + bytes(4), "RTCP SDES chunk has no end item"),
        (b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x09ab", "RTCP SDES item 1 truncated"),
        (b"\x82\xcb\x00\x01" + bytes(4), "RTCP BYE with 2 sources needs 12 bytes, got 8"),
        (
            b"\x81\xcb\x00\x02" + bytes(4) + b"\x09abc",
            "RTCP BYE reason of 9 bytes exceeds the packet",
        ),
    ],
)
def test_rtcp_parse_errors(data: bytes, message: str) -> None:
    with raises_exactly(message):
        parse_rtcp_compound(data)


def test_rtcp_single_packet_parse_checks_type_and_length() -> None:
    with raises_exactly("RTCP packet type 201 is not a sender report (200)"):
        SenderReport.parse(bytes(ReceiverReport(1)))
    with raises_exactly("RTCP length field says 8 bytes but the packet has 12"):
        ReceiverReport.parse(bytes(ReceiverReport(1)) + bytes(4))
    with raises_exactly("report block cumulative lost must fit in 24 signed bits, got 8388608"):
        bytes(ReceiverReport(1, (ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0),)))


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120))
def test_rtp_and_rtcp_parsers_raise_only_value_error(data: bytes) -> None:
    for parse in (RtpPacket.parse, parse_rtcp_compound):
        try:
            parsed = parse(data)
        except ValueError:
            continue
        if isinstance(parsed, RtpPacket):
            assert RtpPacket.parse(bytes(parsed)) == parsed
        else:
            assert parse_rtcp_compound(rtcp_compound(parsed)) == parsed


@settings(max_examples=200, deadline=None)
@given(
    header=st.binary(min_size=12, max_size=12),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    payload=st.binary(max_size=40),
    padding=st.integers(0, 255),
)
def test_rtp_round_trip_property(
    header: bytes, csrc: list[int], payload: bytes, padding: int
) -> None:
    b1, seq, ts, ssrc = struct.unpack("!xBHII", header)
    packet = RtpPacket(
        b1 & 0x7F, seq, ts, ssrc, payload, bool(b1 & 0x80), tuple(csrc), padding_size=padding
    )
    assert RtpPacket.parse(bytes(packet)) == packet


def test_interleaved_payloads_of_a_span_and_framing_that_does_not_add_up() -> None:
    def framed(channel: int, seq: int, payload: bytes) -> bytes:
        packet = struct.pack("!BBHII", 0x80, 96, seq, 0, 1) + payload
        return b"$" + bytes((channel,)) + len(packet).to_bytes(2, "big") + packet

    span = b"junk" + framed(0, 1, b"\x41abc") + framed(0, 2, b"\x7c\x85" + b"x" * 300) + b"tail"
    end = len(span) - 4
    assert interleaved_payloads(span, 4, end) == [b"\x41abc", b"\x7c\x85" + b"x" * 300]
    assert interleaved_payloads(bytearray(span), 4, end)[0] == b"\x41abc"
    assert interleaved_payloads(span, 4, 4) == []
    with pytest.raises(ValueError, match="no interleaved frame at offset 0"):
        interleaved_payloads(span, 0, end)
    with pytest.raises(ValueError, match="does not fit its span"):
        interleaved_payloads(span, 4, end - 1)
    with pytest.raises(ValueError, match="does not fit its span"):
        interleaved_payloads(b"$\x00\x00\x04abcd", 0, 8)  # shorter than an RTP header
