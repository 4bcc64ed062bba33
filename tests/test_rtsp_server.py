"""The RTSP server's protocol behaviour and robustness, over real sockets."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.digest import DigestClient
from gateway.rtsp.client import RtspReader
from gateway.rtsp.message import RtspConnectionParser, RtspRequest, RtspResponse
from gateway.runtime import Gateway
from tests.conftest import stream_url


class RawClient:
    """One RTSP control connection driven request by request."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str | None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = RtspConnectionParser("client")
        self.auth = DigestClient("vms", password) if password else None
        self.cseq = 0
        self.session: str | None = None

    @classmethod
    async def connect(cls, port: int, password: str | None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, password)

    async def response(self) -> RtspResponse:
        while True:
            event = self.parser.next_event()
            if isinstance(event, RtspResponse):
                return event
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed")
            self.parser.feed(data)

    async def request(
        self, method: str, uri: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> RtspResponse:
        for _ in range(2):
            self.cseq += 1
            hdrs = {"CSeq": str(self.cseq), **(headers or {})}
            if self.session and "Session" not in hdrs:
                hdrs["Session"] = self.session
            if self.auth is not None and self.auth.ready:
                value = self.auth.authorization(method, uri)
                if value:
                    hdrs["Authorization"] = value
            self.writer.write(bytes(RtspRequest(method, uri, hdrs, body)))
            response = await self.response()
            if response.status == 401 and self.auth is not None and not self.auth.ready:
                self.auth.handle_challenge(response.headers.get_all("WWW-Authenticate"))
                continue
            return response
        return response

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def url_base(gateway: Gateway) -> str:
    assert gateway.rtsp is not None
    return f"rtsp://127.0.0.1:{gateway.rtsp.port}"


async def test_status_codes(gateway: Gateway, vms_password: str, url_base: str) -> None:
    assert gateway.rtsp is not None
    client = await RawClient.connect(gateway.rtsp.port, vms_password)
    try:
        options = await client.request("OPTIONS", f"{url_base}/hik1/main")
        assert options.status == 200
        assert "DESCRIBE" in (options.headers.get("Public") or "")
        assert (await client.request("DESCRIBE", f"{url_base}/nope/main")).status == 404
        assert (await client.request("RECORD", f"{url_base}/hik1/main")).status == 405
        assert (await client.request("FLY", f"{url_base}/hik1/main")).status == 501
        assert (
            await client.request("PLAY", f"{url_base}/hik1/main", {"Session": "deadbeef"})
        ).status == 454
        multicast = await client.request(
            "SETUP",
            f"{url_base}/hik1/main/trackID=0",
            {"Transport": "RTP/AVP;multicast;port=5000-5001"},
        )
        assert multicast.status == 461
        setup = await client.request(
            "SETUP",
            f"{url_base}/hik1/main/trackID=0",
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
        )
        assert setup.status == 200
        session_header = setup.headers.get("Session") or ""
        assert ";timeout=60" in session_header
        client.session = session_header.split(";")[0]
        other = await client.request(
            "SETUP",
            f"{url_base}/dahua1/main/trackID=0",
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=2-3"},
        )
        assert other.status == 459  # one session, one stream
        keepalive = await client.request("GET_PARAMETER", f"{url_base}/hik1/main")
        assert keepalive.status == 200
        assert (await client.request("TEARDOWN", f"{url_base}/hik1/main")).status == 200
        assert (await client.request("PLAY", f"{url_base}/hik1/main")).status == 454
        fresh = await RawClient.connect(gateway.rtsp.port, vms_password)
        try:
            await fresh.request("DESCRIBE", f"{url_base}/hik1/main")
            setup = await fresh.request(
                "SETUP",
                f"{url_base}/hik1/main/trackID=1",
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=2-3"},
            )
            assert setup.status == 200
            fresh.session = (setup.headers.get("Session") or "").split(";")[0]
            play = await fresh.request("PLAY", f"{url_base}/hik1/main")
            assert play.status == 200
            rtp_info = play.headers.get("RTP-Info") or ""
            assert "trackID=1;seq=" in rtp_info and "trackID=0" not in rtp_info
        finally:
            fresh.close()
    finally:
        client.close()


async def test_require_header_gets_551(gateway: Gateway, vms_password: str, url_base: str) -> None:
    assert gateway.rtsp is not None
    client = await RawClient.connect(gateway.rtsp.port, vms_password)
    try:
        response = await client.request(
            "DESCRIBE", f"{url_base}/hik1/main", {"Require": "com.example.magic"}
        )
        assert response.status == 551
        assert response.headers.get("Unsupported") == "com.example.magic"
    finally:
        client.close()


async def test_play_before_setup_is_455(gateway: Gateway, vms_password: str, url_base: str) -> None:
    assert gateway.rtsp is not None
    client = await RawClient.connect(gateway.rtsp.port, vms_password)
    try:
        setup = await client.request(
            "SETUP",
            f"{url_base}/hik1/main/trackID=0",
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
        )
        client.session = (setup.headers.get("Session") or "").split(";")[0]
        assert (await client.request("PAUSE", f"{url_base}/hik1/main")).status == 200
        assert (await client.request("PLAY", f"{url_base}/hik1/main")).status == 200
    finally:
        client.close()


# (bytes, status, whether the server closes the connection afterwards)
MALFORMED = [
    (b"DESCRIBE\r\n\r\n", 400, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 505, True),
    (b"DESCRIBE rtsp://x/ RTSP/1.0\r\nCSeq: 1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n", 413, True),
    (
        b"OPTIONS * RTSP/1.0\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(100)) + b"\r\n",
        400,
        True,
    ),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 99999999\r\n\r\n", 413, True),
    (b"\x00\xff\xfe garbage \r\n\r\n", 400, True),
    # A well-formed request with a bad CSeq is answered and the connection stays usable.
    (b"OPTIONS * RTSP/1.0\r\nCSeq: banana\r\n\r\n", 400, False),
]


async def test_malformed_input_is_refused_without_disturbing_others(
    gateway: Gateway, vms_password: str
) -> None:
    assert gateway.rtsp is not None
    healthy = RtspReader(stream_url(gateway, "hik1", "main", vms_password))
    await healthy.start()
    try:
        await healthy.wait_frames(5, timeout=15, media="video")
        for payload, status, closes in MALFORMED:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.rtsp.port)
            writer.write(payload)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"RTSP/1.0 %d " % status), head[:80]
            if closes:
                assert await asyncio.wait_for(reader.read(4096), 10) == b""
            else:
                writer.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n")
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert answer.startswith(b"RTSP/1.0 200 ")
            writer.close()
        before = healthy.tracks[0].frames
        await healthy.wait_frames(before + 10, timeout=10, media="video")
        assert healthy.tracks[0].lost == 0
    finally:
        await healthy.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=1, max_size=3000))
async def test_fuzzed_bytes_never_break_the_server(gateway: Gateway, data: bytes) -> None:
    assert gateway.rtsp is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.rtsp.port)
    writer.write(data)
    await writer.drain()
    writer.close()
    # The server still answers a well-formed request on a new connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.rtsp.port)
    writer.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert answer.startswith(b"RTSP/1.0 200 OK\r\n") and b"CSeq: 7" in answer
    writer.close()
