"""RTSP messages and the connection parser: round trips, error statuses, framing, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rtp.interleaved import frame_offsets, interleave
from gateway.rtsp.headers import (
    NptRange,
    RtpInfo,
    SessionHeader,
    parse_cseq,
    parse_rtp_info,
    parse_token_list,
)
from gateway.rtsp.message import (
    NEED_DATA,
    Headers,
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspRequest,
    RtspResponse,
)
from gateway.rtsp.url import RtspUrl, request_path, resolve_control, strip_userinfo


def drain(parser: RtspConnectionParser) -> list[object]:
    return list(parser.events())


def test_request_round_trip_keeps_repeated_headers_and_body() -> None:
    req = RtspRequest(
        "ANNOUNCE",
        "rtsp://127.0.0.1/x",
        [("CSeq", "7"), ("Via", "a"), ("via", "b"), ("Content-Type", "application/sdp")],
        b"v=0\r\n",
    )
    data = bytes(req)
    assert data.startswith(b"ANNOUNCE rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: 7\r\n")
    assert b"Content-Length: 5\r\n\r\nv=0\r\n" in data
    parsed = RtspRequest.parse(data)
    assert parsed.method == "ANNOUNCE"
    assert parsed.headers.get_all("VIA") == ["a", "b"]
    assert parsed.headers.get("cseq") == "7"
    assert parsed.cseq == 7
    assert parsed.body == b"v=0\r\n"
    assert parsed == RtspRequest.parse(bytes(parsed))


def test_response_for_request_copies_cseq_and_session() -> None:
    req = RtspRequest("PLAY", "rtsp://h/s", {"CSeq": "4", "Session": "abc"})
    resp = RtspResponse.for_request(req, 200, {"Range": "npt=0-"})
    assert resp.reason == "OK"
    assert resp.headers.get("CSeq") == "4"
    assert resp.headers.get("session") == "abc"
    assert bytes(resp) == b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nSession: abc\r\nRange: npt=0-\r\n\r\n"
    # 454 means the session is unknown: echoing it back would be wrong.
    assert "Session" not in RtspResponse.for_request(req, 454).headers
    # An explicit Session (with timeout) wins over the echo.
    setup = RtspResponse.for_request(req, 200, {"Session": "abc;timeout=60"})
    assert setup.headers.get_all("Session") == ["abc;timeout=60"]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (200, "OK"),
        (401, "Unauthorized"),
        (404, "Not Found"),
        (451, "Parameter Not Understood"),
        (453, "Not Enough Bandwidth"),
        (454, "Session Not Found"),
        (455, "Method Not Valid in This State"),
        (457, "Invalid Range"),
        (459, "Aggregate Operation Not Allowed"),
        (461, "Unsupported Transport"),
        (505, "RTSP Version Not Supported"),
    ],
)
def test_standard_reason_phrases(status: int, reason: str) -> None:
    assert RtspResponse(status).reason == reason


def test_content_length_is_computed_not_trusted() -> None:
    resp = RtspResponse(200, headers={"Content-Length": "999"}, body=b"abc")
    assert bytes(resp).count(b"Content-Length") == 1
    assert RtspResponse.parse(bytes(resp)).body == b"abc"


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        Headers({"X": "a\r\nEvil: 1"})
    with pytest.raises(ValueError, match="invalid header name"):
        Headers({"Bad Name": "x"})
    with pytest.raises(ValueError, match="invalid request URI"):
        RtspRequest("OPTIONS", "rtsp://h/a b")


def test_interleave_helpers() -> None:
    assert interleave(1, b"abc") == b"$\x01\x00\x03abc"
    blob = interleave(2, b"a") + interleave(2, b"") + interleave(2, b"bc")
    assert frame_offsets(blob, 3) == [0, 5, 9]
    frame = InterleavedFrame.parse(b"$\x05\x00\x02hi")
    assert (frame.channel, frame.payload) == (5, b"hi")
    assert bytes(frame) == b"$\x05\x00\x02hi"
    with pytest.raises(ValueError, match="exceeds 65535"):
        interleave(0, bytes(65536))
    with pytest.raises(ValueError, match="declares 3 payload bytes, got 2"):
        InterleavedFrame.parse(b"$\x00\x00\x03hi")
    with pytest.raises(ValueError, match="must start with '\\$'"):
        InterleavedFrame.parse(b"#\x00\x00\x00")


PIPELINE = (
    b"\r\n"
    b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 5\r\n\r\nhello"
    b"$\x00\x00\x03abc"
    b"$\x01\x00\x00"
    b"RTSP/1.0 401 Unauthorized\nCSeq: 2\nWWW-Authenticate: Digest a=1\n"
    b"WWW-Authenticate: Basic realm=x\n\n"
    b"\r\n\r\n"
    b"GET_PARAMETER rtsp://h/s RTSP/1.0\r\nCSeq: 9\r\nX-Folded: one\r\n  two\r\n\r\n"
    b"$\x02\x00\x02zz"
)


def check_pipeline(events: list[object]) -> None:
    assert len(events) == 6
    first, frame0, frame1, second, server_req, frame2 = events
    assert isinstance(first, RtspResponse)
    assert (first.status, first.body) == (200, b"hello")
    assert frame0 == InterleavedFrame(0, b"abc")
    assert frame1 == InterleavedFrame(1, b"")
    assert isinstance(second, RtspResponse)
    assert second.status == 401
    assert second.headers.get_all("www-authenticate") == ["Digest a=1", "Basic realm=x"]
    assert isinstance(server_req, RtspRequest)
    assert server_req.method == "GET_PARAMETER"
    assert server_req.headers.get("x-folded") == "one two"
    assert frame2 == InterleavedFrame(2, b"zz")


def test_pipelined_messages_in_one_feed() -> None:
    parser = RtspConnectionParser("client")
    parser.feed(PIPELINE)
    check_pipeline(drain(parser))
    assert parser.buffered == 0
    assert parser.next_event() is NEED_DATA


def test_idle_only_between_units() -> None:
    """A response whose body has not arrived is not idle, even with nothing buffered: a
    reader's fast path must not take the body for interleaved frames."""
    parser = RtspConnectionParser("client")
    assert parser.idle
    parser.feed(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 6\r\n\r\n")
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0 and not parser.idle
    parser.feed(b"$\x00\x00\x02ab")
    (response,) = drain(parser)
    assert isinstance(response, RtspResponse) and response.body == b"$\x00\x00\x02ab"
    assert parser.idle


def test_byte_at_a_time() -> None:
    parser = RtspConnectionParser("client")
    events: list[object] = []
    for i in range(len(PIPELINE)):
        parser.feed(PIPELINE[i : i + 1])
        events.extend(drain(parser))
    check_pipeline(events)


@pytest.mark.parametrize("split", [1, 7, 30, 55, 61, 70, 100])
def test_two_chunks_at_every_boundary(split: int) -> None:
    parser = RtspConnectionParser("client")
    parser.feed(PIPELINE[:split])
    events = drain(parser)
    parser.feed(PIPELINE[split:])
    check_pipeline(events + drain(parser))


def test_header_search_is_not_rescanned_from_the_start() -> None:
    parser = RtspConnectionParser("server")
    parser.feed(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n")
    assert parser.next_event() is NEED_DATA
    scanned = parser._scanned
    assert scanned >= len(b"OPTIONS * RTSP/1.0\r\nCSeq: 1")
    parser.feed(b"User-Agent: t\r\n")
    assert parser.next_event() is NEED_DATA
    assert parser._scanned > scanned
    parser.feed(b"\r\n")
    event = parser.next_event()
    assert isinstance(event, RtspRequest)
    assert event.headers.get("user-agent") == "t"


def test_server_role_takes_rtcp_frames_and_requests() -> None:
    parser = RtspConnectionParser("server")
    parser.feed(b"$\x01\x00\x01x" + bytes(RtspRequest("TEARDOWN", "rtsp://h/s", {"CSeq": "5"})))
    frame, req = drain(parser)
    assert frame == InterleavedFrame(1, b"x")
    assert isinstance(req, RtspRequest)
    assert req.method == "TEARDOWN"


@pytest.mark.parametrize(
    ("role", "data", "status", "message"),
    [
        ("server", b"OPTIONS * RTSP/2.0\r\n\r\n", 505, "unsupported version RTSP/2.0"),
        ("server", b"GET / HTTP/1.1\r\n\r\n", 505, "unsupported version HTTP/1.1"),
        ("server", b"OPTIONS * FOO\r\n\r\n", 400, "malformed protocol version"),
        ("server", b"OPTIONS  * RTSP/1.0\r\n\r\n", 400, "malformed request line"),
        ("server", b"OPT(ONS * RTSP/1.0\r\n\r\n", 400, "invalid method"),
        ("server", b"RTSP/1.0 200 OK\r\n\r\n", 400, "expected a request"),
        ("server", b"OPTIONS * RTSP/1.0\r\nno colon\r\n\r\n", 400, "malformed header line"),
        ("server", b"OPTIONS * RTSP/1.0\r\n bad fold\r\n\r\n", 400, "continuation line"),
        ("server", b"OPTIONS * RTSP/1.0\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content"),
        ("server", b"OPTIONS * RTSP/1.0\r\nContent-Length: 1x\r\n\r\n", 400, "invalid Content"),
        (
            "server",
            b"OPTIONS * RTSP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "conflicting Content-Length",
        ),
        (
            "server",
            b"OPTIONS * RTSP/1.0\r\nContent-Length: 70000\r\n\r\n",
            413,
            "body of 70000 bytes exceeds 65536",
        ),
        ("client", b"RTSP/1.0 20 OK\r\n\r\n", 400, "malformed status line"),
        ("client", b"RTSP/1.0 099 Odd\r\n\r\n", 400, "invalid status code"),
        ("client", b"RTSP/2.0 200 OK\r\n\r\n", 505, "unsupported version RTSP/2.0"),
    ],
)
def test_protocol_errors_carry_status(role: str, data: bytes, status: int, message: str) -> None:
    parser = RtspConnectionParser(role)  # type: ignore[arg-type]
    parser.feed(data)
    with pytest.raises(RtspProtocolError, match=message) as info:
        parser.next_event()
    assert info.value.status == status
    # The parser stays failed: the connection is to be closed.
    with pytest.raises(RtspProtocolError):
        parser.next_event()


def test_oversized_header_section_and_too_many_headers() -> None:
    parser = RtspConnectionParser("server", max_header_bytes=1024)
    parser.feed(b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 2000)
    with pytest.raises(RtspProtocolError, match="header section exceeds 1024 bytes") as info:
        parser.next_event()
    assert info.value.status == 413

    parser = RtspConnectionParser("server", max_headers=3)
    parser.feed(b"OPTIONS * RTSP/1.0\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(4)) + b"\r\n")
    with pytest.raises(RtspProtocolError, match="more than 3 header fields") as info:
        parser.next_event()
    assert info.value.status == 400


def test_parse_single_message_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="incomplete RTSP message"):
        RtspRequest.parse(b"OPTIONS * RTSP/1.0\r\n")
    with pytest.raises(ValueError, match="3 bytes after the message"):
        RtspRequest.parse(b"OPTIONS * RTSP/1.0\r\n\r\nabc")
    with pytest.raises(ValueError, match="505"):
        RtspRequest.parse(b"OPTIONS * RTSP/3.0\r\n\r\n")


# Arbitrary bytes, including fragments of valid messages and frames, in arbitrary chunks.
_pieces = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"$",
            b"$\x00\xff\xff",
            b"RTSP/1.0 200 OK\r\n",
            b"OPTIONS * RTSP/1.0\r\n",
            b"Content-Length: 40000\r\n",
            b"Content-Length: 9\r\n",
            b"\r\n",
            b"\n",
            b"CSeq: 1\r\n",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(["server", "client"]),
    chunks=st.lists(st.lists(_pieces, max_size=8).map(b"".join), max_size=40),
)
def test_fuzz_only_protocol_errors_and_bounded_buffer(role: str, chunks: list[bytes]) -> None:
    limit_header, limit_body = 2048, 4096
    parser = RtspConnectionParser(
        role,  # type: ignore[arg-type]
        max_header_bytes=limit_header,
        max_headers=16,
        max_body=limit_body,
    )
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for event in parser.events():
                assert isinstance(event, RtspRequest | RtspResponse | InterleavedFrame)
            # Whatever is left is at most one incomplete unit plus this chunk.
            bound = max(limit_header + 4 + limit_body, 4 + 0xFFFF) + len(chunk)
            assert parser.buffered <= bound
    except RtspProtocolError as exc:
        assert 400 <= exc.status <= 505


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 255), st.binary(max_size=300)), min_size=1, max_size=20
    ),
    cut=st.integers(1, 50),
)
def test_fuzz_interleaved_stream_reassembles(frames: list[tuple[int, bytes]], cut: int) -> None:
    data = b"".join(interleave(ch, payload) for ch, payload in frames)
    parser = RtspConnectionParser("client")
    out: list[object] = []
    for i in range(0, len(data), cut):
        parser.feed(data[i : i + cut])
        out.extend(parser.events())
    assert out == [InterleavedFrame(ch, payload) for ch, payload in frames]


# --------------------------------------------------------------------------- header helpers


def test_session_header() -> None:
    assert SessionHeader.parse("12345678;timeout=60") == SessionHeader("12345678", 60)
    assert SessionHeader.parse(" AbC$-_.+ ") == SessionHeader("AbC$-_.+")
    assert str(SessionHeader("x1", 30)) == "x1;timeout=30"
    with pytest.raises(ValueError, match="invalid session timeout"):
        SessionHeader.parse("abc;timeout=soon")
    with pytest.raises(ValueError, match="invalid session id"):
        SessionHeader.parse(";timeout=5")


def test_range_header() -> None:
    assert NptRange.parse("npt=0-") == NptRange(0.0, None)
    assert NptRange.parse("npt=now-") == NptRange(None, None)
    assert NptRange.parse("npt=1:02:03.5-3730") == NptRange(3723.5, 3730.0)
    assert str(NptRange(0.0)) == "npt=0-"
    assert str(NptRange(1.25, 10.0)) == "npt=1.25-10"
    assert str(NptRange(None)) == "npt=now-"
    with pytest.raises(ValueError, match="only npt"):
        NptRange.parse("clock=19961108T142300Z-")
    with pytest.raises(ValueError, match=r"end 1\.0 before start 5\.0"):
        NptRange.parse("npt=5-1")
    with pytest.raises(ValueError, match="invalid npt time"):
        NptRange.parse("npt=abc-")


def test_rtp_info() -> None:
    value = (
        "url=rtsp://h/cam?ch=1,2/trackID=0;seq=100;rtptime=4000000000, "
        "url=rtsp://h/cam?ch=1,2/trackID=1;seq=7"
    )
    assert parse_rtp_info(value) == [
        RtpInfo("rtsp://h/cam?ch=1,2/trackID=0", 100, 4000000000),
        RtpInfo("rtsp://h/cam?ch=1,2/trackID=1", 7, None),
    ]
    assert str(RtpInfo("rtsp://h/a", 1, 2)) == "url=rtsp://h/a;seq=1;rtptime=2"
    with pytest.raises(ValueError, match="seq 70000 out of range"):
        parse_rtp_info("url=rtsp://h/a;seq=70000")
    with pytest.raises(ValueError, match="without url"):
        parse_rtp_info("seq=1")


def test_cseq_and_token_lists() -> None:
    assert parse_cseq(" 42 ") == 42
    with pytest.raises(ValueError, match="invalid CSeq"):
        parse_cseq("4a")
    assert parse_token_list("OPTIONS, DESCRIBE,SETUP ,, PLAY") == [
        "OPTIONS",
        "DESCRIBE",
        "SETUP",
        "PLAY",
    ]
    with pytest.raises(ValueError, match="invalid token"):
        parse_token_list("play.basic, bad token")


def test_url_helpers() -> None:
    url = RtspUrl.parse("rtsp://admin:p%40ss@[::1]:8554/cam/realmonitor?channel=1&subtype=0")
    assert (url.host, url.port, url.path) == ("::1", 8554, "/cam/realmonitor?channel=1&subtype=0")
    assert (url.username, url.password) == ("admin", "p@ss")
    assert url.without_credentials() == "rtsp://[::1]:8554/cam/realmonitor?channel=1&subtype=0"
    assert RtspUrl.parse("rtsp://10.0.0.5").port == 554
    assert RtspUrl.parse("rtsp://10.0.0.5").path == "/"
    with pytest.raises(ValueError, match="not an RTSP URL"):
        RtspUrl.parse("http://h/")
    with pytest.raises(ValueError, match="invalid RTSP URL"):
        RtspUrl.parse("rtsp://h:99999/")
    assert strip_userinfo("rtsp://u:p@h:554/x?y=1") == "rtsp://h:554/x?y=1"
    assert strip_userinfo("rtsp://h/x") == "rtsp://h/x"
    assert request_path("rtsp://h:1/a/b?c=d") == "/a/b?c=d"
    assert request_path("/a") == "/a"


@pytest.mark.parametrize(
    ("base", "control", "expected"),
    [
        ("rtsp://h/s/", "trackID=1", "rtsp://h/s/trackID=1"),
        ("rtsp://h/s", "trackID=1", "rtsp://h/s/trackID=1"),
        ("rtsp://h/cam?ch=1&sub=0", "trackID=0", "rtsp://h/cam?ch=1&sub=0/trackID=0"),
        ("rtsp://h/s/", "rtsp://h/s/track2", "rtsp://h/s/track2"),
        ("rtsp://h/s/", "*", "rtsp://h/s/"),
        ("rtsp://h/s/", "", "rtsp://h/s/"),
    ],
)
def test_resolve_control(base: str, control: str, expected: str) -> None:
    assert resolve_control(base, control) == expected
