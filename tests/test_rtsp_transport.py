"""The Transport header: what real clients send, round trips, and precise errors."""

from __future__ import annotations

import pytest

from gateway.rtsp.transport import (
    TransportSpec,
    format_transport_header,
    parse_transport_header,
)

# Offers as FFmpeg, GStreamer, VLC/live555 and cameras write them.
REAL_VALUES = [
    "RTP/AVP/TCP;unicast;interleaved=0-1",
    "RTP/AVP/UDP;unicast;client_port=50000-50001",
    "RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971;ssrc=1A2B3C4D;mode=play",
    'RTP/AVP;unicast;destination=127.0.0.1;source=127.0.0.2;client_port=1-2;mode="PLAY"',
    "RTP/AVP;multicast;destination=239.1.2.3;ttl=16;port=5004-5005",
    "RTP/AVP/TCP;interleaved=4",
    "RTP/SAVP;unicast;client_port=9000-9001;x-custom=1;x-flag",
]


@pytest.mark.parametrize("value", REAL_VALUES)
def test_round_trip(value: str) -> None:
    (spec,) = parse_transport_header(value)
    assert TransportSpec.parse(str(spec)) == spec
    assert bytes(spec) == str(spec).encode()


def test_fields() -> None:
    (tcp,) = parse_transport_header("RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=0000abcd")
    assert tcp.is_tcp and not tcp.is_multicast
    assert tcp.interleaved == (2, 3)
    assert tcp.ssrc == 0xABCD
    assert str(tcp) == "RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=0000ABCD"

    (udp,) = parse_transport_header("rtp/avp;unicast;client_port=5000-5001;mode=play")
    assert not udp.is_tcp
    assert udp.lower_transport is None
    assert udp.client_port == (5000, 5001)
    assert udp.mode == "PLAY"

    (mc,) = parse_transport_header("RTP/AVP;multicast;destination=239.1.2.3;ttl=16;port=5004")
    assert mc.is_multicast
    assert (mc.destination, mc.ttl, mc.port) == ("239.1.2.3", 16, (5004, 5004))

    (extra,) = parse_transport_header("RTP/AVP;unicast;client_port=1-2;x-foo=bar;append")
    assert extra.extra == ("x-foo=bar",)
    assert extra.append


def test_alternatives_keep_order() -> None:
    specs = parse_transport_header(
        "RTP/AVP/TCP;unicast;interleaved=0-1, RTP/AVP;unicast;client_port=4588-4589,"
        "RTP/AVP;multicast"
    )
    assert [s.is_tcp for s in specs] == [True, False, False]
    assert specs[2].is_multicast
    assert parse_transport_header(format_transport_header(specs)) == specs


def test_server_answer_from_offer() -> None:
    (offer,) = parse_transport_header("RTP/AVP;unicast;client_port=5000-5001")
    answer = offer.with_changes(server_port=(7000, 7001), ssrc=0x12345678)
    assert str(answer) == (
        "RTP/AVP;unicast;client_port=5000-5001;server_port=7000-7001;ssrc=12345678"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty Transport header"),
        ("RTP", "invalid transport specifier 'RTP'"),
        ("RAW/RAW/UDP;unicast", "unsupported transport protocol 'RAW'"),
        ("RTP/AVP/SCTP;unicast", "unsupported lower transport 'SCTP'"),
        ("RTP/AVP/TCP;interleaved=a-b", "interleaved='a-b' is not a number or a range"),
        ("RTP/AVP/TCP;interleaved=0-256", "interleaved=0-256 out of range 0-255"),
        ("RTP/AVP;client_port=70000-70001", "client_port=70000-70001 out of range 0-65535"),
        ("RTP/AVP;client_port=5001-5000", "client_port=5001-5000: end before start"),
        ("RTP/AVP;server_port=1-2;server_port=3-4", "server_port given twice"),
        ("RTP/AVP;ssrc=xyz", "ssrc='xyz' is not 1-8 hex digits"),
        ("RTP/AVP;ssrc=123456789", "is not 1-8 hex digits"),
        ("RTP/AVP;ttl=300", "ttl='300' must be an integer 0-255"),
        ("RTP/AVP;unicast;multicast", "both unicast and multicast"),
        ("RTP/AVP;mode=pl ay", "invalid Transport mode"),
        ("RTP/AVP;source=", "source has no value"),
        ("RTP/AVP;x-foo=", "malformed Transport parameter 'x-foo='"),
    ],
)
def test_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_transport_header(value)
