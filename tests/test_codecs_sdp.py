"""SDP building and parsing, and the codec registry built on it."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import (
    SUPPORTED,
    codec_name,
    depacketizer_for,
    packetizer_for,
    params_from_sdp_media,
)
from gateway.codecs.aac import AacDepacketizer, AacPacketizer
from gateway.codecs.base import CodecParams
from gateway.codecs.g711 import G711Depacketizer, G711Packetizer
from gateway.codecs.h264 import H264Depacketizer, H264Packetizer
from gateway.codecs.h265 import H265Depacketizer, H265Packetizer
from gateway.codecs.sdp import SdpTrack, parse_sdp, session_sdp

# A real 320x240 High-profile SPS and its PPS (libx264).
SPS = base64.b64decode("Z2QADazZQUH6EAAAAwAQAAADAyDxQplg")
PPS = base64.b64decode("aOvjyyLA")
# A real 320x240 Main-profile VPS/SPS/PPS (libx265).
H265_SETS = tuple(
    base64.b64decode(s)
    for s in (
        "QAEMAf//AWAAAAMAkAAAAwAAAwA8koCQ",
        "QgEBAWAAAAMAkAAAAwAAAwA8oAoIDxZZKkkyuaAgAAADACAAAAMDIQ==",
        "RAHBcrRiQA==",
    )
)

# What a Hikvision camera answers to DESCRIBE (LF-only lines are tolerated too).
CAMERA_SDP = (
    "v=0\r\n"
    "o=- 1700000000000000 1700000000000000 IN IP4 192.168.1.64\r\n"
    "s=Media Presentation\r\n"
    "e=NONE\r\n"
    "b=AS:5050\r\n"
    "t=0 0\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/?transportmode=unicast\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "b=AS:5000\r\n"
    "a=recvonly\r\n"
    "a=x-dimensions:320,240\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=1?transportmode=unicast\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 profile-level-id=420029; packetization-mode=1; sprop-parameter-sets="
    f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}\r\n"
    "m=audio 0 RTP/AVP 8\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "b=AS:50\r\n"
    "a=recvonly\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=2?transportmode=unicast\r\n"
    "a=Media_header:MEDIAINFO=494D4B48010100000400010010710110401F000000FA000000000000000000;\n"
    "a=appversion:1.0\n"
)


def raises_exactly(message: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_session_sdp_exact_text() -> None:
    video = packetizer_for(CodecParams("H264", "video", 90000, parameter_sets=(SPS, PPS)))
    audio = packetizer_for(CodecParams("PCMA", "audio", 8000))
    backchannel = packetizer_for(CodecParams("PCMU", "audio", 8000))
    text = session_sdp(
        [
            SdpTrack.for_packetizer(video, "trackID=0"),
            SdpTrack.for_packetizer(audio, "trackID=1"),
            SdpTrack.for_packetizer(backchannel, "trackID=2", direction="sendonly"),
        ],
        "front door",
        "192.0.2.10",
        42,
    )
    assert text == (
        "v=0\r\n"
        "o=- 42 42 IN IP4 192.0.2.10\r\n"
        "s=front door\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "t=0 0\r\n"
        "a=tool:onvif-gateway\r\n"
        "a=control:*\r\n"
        "a=range:npt=now-\r\n"
        "m=video 0 RTP/AVP 96\r\n"
        "a=rtpmap:96 H264/90000\r\n"
        "a=fmtp:96 packetization-mode=1;profile-level-id=64000D;"
        "sprop-parameter-sets=Z2QADazZQUH6EAAAAwAQAAADAyDxQplg,aOvjyyLA\r\n"
        "a=control:trackID=0\r\n"
        "a=recvonly\r\n"
        "m=audio 0 RTP/AVP 8\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=control:trackID=1\r\n"
        "a=recvonly\r\n"
        "m=audio 0 RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=control:trackID=2\r\n"
        "a=sendonly\r\n"
    )


def test_session_sdp_ipv6_and_validation() -> None:
    track = SdpTrack("video", 96, ("rtpmap:96 H264/90000",), "trackID=0")
    text = session_sdp([track], "", "2001:db8::1", 7, session_version=8)
    assert "o=- 7 8 IN IP6 2001:db8::1\r\n" in text
    assert "c=IN IP6 ::\r\n" in text
    assert "s=-\r\n" in text
    with raises_exactly("SDP origin address must be an IP address, got 'camera.local'"):
        session_sdp([track], "x", "camera.local", 1)
    with raises_exactly("SDP session name must not contain CR, LF or NUL: 'a\\r\\na=evil'"):
        session_sdp([track], "a\r\na=evil", "192.0.2.1", 1)
    with raises_exactly("SDP control must not contain CR, LF or NUL: 'x\\ny'"):
        session_sdp([SdpTrack("video", 96, (), "x\ny")], "x", "192.0.2.1", 1)
    with raises_exactly(
        "SDP direction must be one of ('sendrecv', 'sendonly', 'recvonly', 'inactive'): 'both'"
    ):
        session_sdp([SdpTrack("video", 96, (), "t", "both")], "x", "192.0.2.1", 1)


def test_round_trip_through_our_parser() -> None:
    packetizers = [
        packetizer_for(CodecParams("H265", "video", 90000, parameter_sets=H265_SETS)),
        packetizer_for(CodecParams("AAC", "audio", 44100, 2)),
    ]
    tracks = [SdpTrack.for_packetizer(p, f"trackID={i}") for i, p in enumerate(packetizers)]
    session = parse_sdp(session_sdp(tracks, "cam", "192.0.2.1", 5))
    assert session.control == "*"
    assert [m.control for m in session.media] == ["trackID=0", "trackID=1"]
    assert [m.direction for m in session.media] == ["recvonly", "recvonly"]
    params = [params_from_sdp_media(m) for m in session.media]
    assert params[0].name == "H265"
    assert params[0].parameter_sets == H265_SETS
    assert (params[0].width, params[0].height) == (320, 240)
    assert (
        packetizers[0]
        .sdp_attributes()[1]
        .startswith("fmtp:96 profile-id=1;tier-flag=0;level-id=60;sprop-vps=")
    )
    assert (params[1].name, params[1].clock_rate, params[1].channels) == ("AAC", 44100, 2)
    assert params[1].config == bytes.fromhex("1210")
    assert isinstance(depacketizer_for(params[1]), AacDepacketizer)


def test_parse_camera_sdp() -> None:
    session = parse_sdp(CAMERA_SDP.encode())
    assert session.session_name == "Media Presentation"
    assert session.control.endswith("/Streaming/Channels/101/?transportmode=unicast")
    video = session.first("video")
    audio = session.first("audio")
    assert video is not None and audio is not None
    assert (video.encoding, video.clock_rate, video.payload_type) == ("H264", 90000, 96)
    assert video.fmtp["packetization-mode"] == "1"
    assert video.control.endswith("/trackID=1?transportmode=unicast")
    assert video.attribute("x-dimensions") == "320,240"
    # PT 8 has no rtpmap: the static table of RFC 3551 applies.
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("PCMA", 8000, 1)
    params = params_from_sdp_media(video)
    assert params.parameter_sets == (SPS, PPS)
    assert (params.width, params.height) == (320, 240)
    assert params_from_sdp_media(audio) == CodecParams("PCMA", "audio", 8000, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "SDP is empty"),
        ("o=- 1 1 IN IP4 1.2.3.4\r\n", "SDP must start with v=0, got 'o=- 1 1 IN IP4 1.2.3.4'"),
        ("v=0\r\ns=x\r\nhello\r\n", "SDP line 3 is not <type>=<value>: 'hello'"),
        ("v=0\nm=video\n", "SDP line 2: malformed media line 'video'"),
        ("v=0\nm=video x RTP/AVP 96\n", "SDP line 2: malformed media port 'x'"),
        ("v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264\n", "SDP line 3: malformed rtpmap '96 H264'"),
        (
            "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:300 H264/90000\n",
            "SDP line 3: malformed rtpmap '300 H264/90000'",
        ),
        ("v=0\nm=video 0 RTP/AVP 96\na=fmtp:x a=b\n", "SDP line 3: malformed fmtp 'x a=b'"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with raises_exactly(message):
        parse_sdp(text)


def test_parse_limits_and_encoding() -> None:
    with raises_exactly("SDP larger than 65536 bytes"):
        parse_sdp("v=0\n" + "a=x\n" * 20000)
    with raises_exactly("SDP is not UTF-8: invalid start byte at byte 4"):
        parse_sdp(b"v=0\n\xff")


def test_registry() -> None:
    assert SUPPORTED == ("H264", "H265", "AAC", "PCMU", "PCMA")
    expected = {
        "H264": (H264Packetizer, H264Depacketizer, 96),
        "H265": (H265Packetizer, H265Depacketizer, 96),
        "AAC": (AacPacketizer, AacDepacketizer, 97),
        "PCMU": (G711Packetizer, G711Depacketizer, 0),
        "PCMA": (G711Packetizer, G711Depacketizer, 8),
    }
    for name, (packetizer_class, depacketizer_class, pt) in expected.items():
        params = CodecParams(name, "audio", 8000)
        packetizer = packetizer_for(params)
        assert type(packetizer) is packetizer_class
        assert packetizer.payload_type == pt
        assert packetizer_for(params, 101).payload_type == 101
        assert type(depacketizer_for(name)) is depacketizer_class
        assert type(depacketizer_for(params)) is depacketizer_class
    assert codec_name("hevc") == codec_name("H265") == "H265"
    assert codec_name("mpeg4-generic") == "AAC"
    with raises_exactly("unsupported codec 'VP8'; supported: H264, H265, AAC, PCMU, PCMA"):
        packetizer_for(CodecParams("VP8", "video", 90000))
    with raises_exactly("bad AAC fmtp: unsupported AU header layout: sizelength=0, indexlength=3"):
        depacketizer_for(CodecParams("AAC", "audio", 8000, extra={"sizelength": "0"}))


def test_params_from_sdp_media_errors() -> None:
    bad_sprop = (
        "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 sprop-parameter-sets=Z2Q*\n"
    )
    with raises_exactly("SDP sprop-parameter-sets is not valid base64: 'Z2Q*'"):
        params_from_sdp_media(parse_sdp(bad_sprop).media[0])
    bad_config = (
        "v=0\nm=audio 0 RTP/AVP 97\na=rtpmap:97 mpeg4-generic/16000\n"
        "a=fmtp:97 mode=AAC-hbr; config=XYZ\n"
    )
    with raises_exactly("SDP AAC config is not hex: 'XYZ'"):
        params_from_sdp_media(parse_sdp(bad_config).media[0])
    unknown = "v=0\nm=video 0 RTP/AVP 26\n"
    with raises_exactly("unsupported codec 'JPEG'; supported: H264, H265, AAC, PCMU, PCMA"):
        params_from_sdp_media(parse_sdp(unknown).media[0])
    # An SPS we cannot parse leaves the size unknown instead of failing the stream.
    odd = "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 sprop-parameter-sets=Z2Q=\n"
    params = params_from_sdp_media(parse_sdp(odd).media[0])
    assert (params.width, params.height, params.parameter_sets) == (0, 0, (b"gd",))


SDP_LINES = st.sampled_from(
    [
        "v=0",
        "m=video 0 RTP/AVP 96",
        "m=audio 5000/2 RTP/AVP 97 8",
        "a=rtpmap:96 H264/90000",
        "a=rtpmap:97 MPEG4-GENERIC/44100/2",
        "a=fmtp:96 sprop-parameter-sets=Z2Q=,aOs=",
        "a=fmtp:97 config=1210;sizelength=13",
        "a=fmtp:96 sprop-vps=QAE=",
        "a=control:*",
        "a=recvonly",
        "c=IN IP4 0.0.0.0",
        "s=x",
        "a=rtpmap:8 PCMA/8000",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.one_of(SDP_LINES, st.text(max_size=30)), max_size=12),
    raw=st.binary(max_size=60),
)
def test_parser_fuzz_raises_only_value_error(lines: list[str], raw: bytes) -> None:
    for text in ("\n".join(lines), "v=0\n" + "\r\n".join(lines), raw):
        try:
            session = parse_sdp(text)
        except ValueError:
            continue
        for media in session.media:
            try:
                params = params_from_sdp_media(media)
                depacketizer_for(params)
            except ValueError:
                continue
