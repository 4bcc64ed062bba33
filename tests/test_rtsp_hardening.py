"""The RTSP server under hostile clients: request floods, slow and idle connections, too many
connections from one address, password guessing. A bare server (no streams) on loopback,
with limits small enough that each test takes about a second."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator

import pytest

from gateway.digest import DigestAuthenticator, digest_response, parse_auth_params, split_scheme
from gateway.rtsp.message import RtspConnectionParser, RtspRequest, RtspResponse
from gateway.rtsp.server import RtspServer, ServerLimits
from tests.test_rtsp_server import RawClient

PASSWORD = "correct horse battery"
LIMITS = ServerLimits(
    request_timeout=0.5,
    idle_timeout=30.0,
    write_timeout=1.0,
    preauth_rate=1000.0,
    preauth_burst=1000,
    global_preauth_rate=100000.0,
    max_connections=64,
    connections_per_address=8,
    auth_delay_base=0.2,
    auth_delay_max=0.8,
    auth_failures_to_close=3,
)


async def start_server(limits: ServerLimits = LIMITS) -> RtspServer:
    server = RtspServer(
        lambda path: None,
        authenticator=DigestAuthenticator("test", {"vms": PASSWORD}, b"s" * 32),
        limits=limits,
    )
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def server() -> AsyncIterator[RtspServer]:
    srv = await start_server()
    yield srv
    await srv.close()


def options(cseq: int) -> bytes:
    return bytes(RtspRequest("OPTIONS", "rtsp://127.0.0.1/x", {"CSeq": str(cseq)}))


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def connect_from(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def loop_lag_while(task: asyncio.Future[object], period: float = 0.005) -> float:
    """The longest a timer callback came late while ``task`` ran."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not task.done():
        due = loop.time() + period
        await asyncio.sleep(period)
        worst = max(worst, loop.time() - due)
    return worst


async def test_pipelined_requests_are_answered_one_at_a_time_in_order(server: RtspServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    count = 3000
    writer.write(b"".join(options(i) for i in range(1, count + 1)))

    async def read_all() -> list[int]:
        parser = RtspConnectionParser("client")
        seqs: list[int] = []
        while len(seqs) < count:
            parser.feed(await reader.read(65536))
            seqs += [e.cseq for e in parser.events() if isinstance(e, RtspResponse)]
        return seqs

    task = asyncio.ensure_future(asyncio.wait_for(read_all(), 20))
    lag = await loop_lag_while(task)
    assert await task == list(range(1, count + 1))
    # Between any two requests the loop ran other callbacks: no request burst held it.
    assert lag < 0.1
    writer.close()


async def test_a_client_that_never_reads_holds_bounded_memory_and_is_dropped() -> None:
    server = await start_server(
        dataclasses.replace(LIMITS, preauth_rate=1e6, preauth_burst=10**6, global_preauth_rate=1e6)
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    flood = b"".join(options(i) for i in range(1, 2001))  # ~100 KB
    sent = 0

    async def send_forever() -> None:
        nonlocal sent
        while True:
            await loop.sock_sendall(sock, flood)
            sent += len(flood)

    sender = asyncio.ensure_future(send_forever())
    try:
        async with asyncio.timeout(5):
            while not server.connections:
                await asyncio.sleep(0.01)
        (conn,) = server.connections
        assert conn.transport is not None
        # Small kernel buffers on the server's side too, so they fill within the test.
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        peak = 0
        async with asyncio.timeout(10):
            while server.connections:
                if conn.transport is not None:
                    held = conn.transport.get_write_buffer_size() + conn.parser.buffered
                    peak = max(peak, held)
                await asyncio.sleep(0.01)
        # The server stopped reading while its answers went unread, then dropped the client.
        assert peak < 1024 * 1024, peak
        assert sent < 16 * 1024 * 1024, sent
        assert server.refusals.total("rtsp", "write_timeout") == 1
    finally:
        sender.cancel()
        sock.close()
        await server.close()


async def test_requests_before_authentication_are_rate_limited() -> None:
    limits = dataclasses.replace(LIMITS, preauth_rate=40.0, preauth_burst=5)
    server = await start_server(limits)
    try:
        client = await RawClient.connect(server.port, None)
        start = time.monotonic()
        for _ in range(25):
            assert (await client.request("OPTIONS", "rtsp://127.0.0.1/x")).status == 200
        assert time.monotonic() - start >= (25 - 5) / 40 * 0.9
        assert server.refusals.total("rtsp", "rate_limited") > 0
        client.close()
        # After authenticating the connection is not throttled.
        authed = await RawClient.connect(server.port, PASSWORD)
        assert (await authed.request("DESCRIBE", "rtsp://127.0.0.1/x")).status == 404
        start = time.monotonic()
        for _ in range(25):
            assert (await authed.request("OPTIONS", "rtsp://127.0.0.1/x")).status == 200
        assert time.monotonic() - start < (25 - 5) / 40 * 0.9
        authed.close()
    finally:
        await server.close()


async def test_a_request_that_never_completes_times_out(server: RtspServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"OPTIONS rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: 1\r\n")  # no blank line
    start = time.monotonic()
    data = await read_until_closed(reader)
    assert data.startswith(b"RTSP/1.0 408")
    assert time.monotonic() - start < 3.0
    assert server.refusals.total("rtsp", "request_timeout") == 1
    writer.close()


async def test_an_idle_connection_is_closed_but_not_a_busy_one() -> None:
    server = await start_server(dataclasses.replace(LIMITS, idle_timeout=0.8))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        assert await read_until_closed(reader) == b""
        assert 0.8 <= time.monotonic() - start < 4.0
        writer.close()
        # A connection that keeps making requests stays.
        client = await RawClient.connect(server.port, None)
        for _ in range(4):
            await asyncio.sleep(0.4)
            assert (await client.request("OPTIONS", "rtsp://127.0.0.1/x")).status == 200
        client.close()
    finally:
        await server.close()


async def test_one_address_cannot_take_every_connection(server: RtspServer) -> None:
    held = [await connect_from(server.port, "127.0.0.1") for _ in range(8)]
    reader, writer = await connect_from(server.port, "127.0.0.1")
    assert (await read_until_closed(reader)).startswith(b"RTSP/1.0 503")
    writer.close()
    assert server.refusals.total("rtsp", "connection_cap") == 1
    # Another address still gets in.
    reader, writer = await connect_from(server.port, "127.0.0.2")
    writer.write(options(1))
    parser = RtspConnectionParser("client")
    parser.feed(await asyncio.wait_for(reader.read(65536), 5))
    assert [e.status for e in parser.events() if isinstance(e, RtspResponse)] == [200]
    writer.close()
    for _, w in held:
        w.close()


async def guess(port: int, source: str, password: str, attempts: int) -> tuple[list[float], bool]:
    """``attempts`` logins on one connection: each answer's delay, and whether the server
    closed the connection afterwards."""
    reader, writer = await connect_from(port, source)
    client = RawClient(reader, writer, password)
    start = time.monotonic()
    first = await client.request("DESCRIBE", "rtsp://127.0.0.1/x")  # challenge, then a guess
    assert first.status == 401
    delays = [time.monotonic() - start]
    closed = False
    for _ in range(attempts - 1):
        start = time.monotonic()
        try:
            response = await client.request("DESCRIBE", "rtsp://127.0.0.1/x")
        except ConnectionError:
            closed = True
            break
        delays.append(time.monotonic() - start)
        assert response.status == 401
    if not closed:
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
    writer.close()
    return delays, closed


async def test_password_guessing_is_slowed_per_address_and_cut_off(server: RtspServer) -> None:
    delays, closed = await guess(server.port, "127.0.0.1", "wrong", 3)
    assert delays[-1] >= LIMITS.auth_delay_base * 0.9  # the third failure waits
    assert closed  # after auth_failures_to_close failures
    assert server.refusals.total("rtsp", "auth_failure") == 3
    # The next connection from that address waits longer for each answer...
    again, _ = await guess(server.port, "127.0.0.1", "wrong", 2)
    assert again[0] >= LIMITS.auth_delay_base * 2 * 0.9
    assert again[1] >= LIMITS.auth_delay_max * 0.9
    # ...while another address, and the right password from the same one, are not slowed.
    other, _ = await guess(server.port, "127.0.0.2", "wrong", 1)
    assert other[0] < LIMITS.auth_delay_base
    client = await RawClient.connect(server.port, PASSWORD)
    start = time.monotonic()
    assert (await client.request("DESCRIBE", "rtsp://127.0.0.1/x")).status == 404
    assert time.monotonic() - start < LIMITS.auth_delay_base
    client.close()


async def test_a_stale_nonce_is_not_a_failed_login() -> None:
    server = RtspServer(
        lambda path: None,
        authenticator=DigestAuthenticator("test", {"vms": PASSWORD}, b"s" * 32, nonce_lifetime=0.0),
        limits=LIMITS,
    )
    await server.start("127.0.0.1", 0)
    try:
        client = await RawClient.connect(server.port, PASSWORD)
        for _ in range(5):
            # Every nonce is stale at once: each retry gets stale=true, never a delay.
            response = await client.request("DESCRIBE", "rtsp://127.0.0.1/x")
            assert response.status == 401
            assert "stale=true" in ",".join(response.headers.get_all("WWW-Authenticate")).lower()
        assert server.refusals.total("rtsp", "auth_failure") == 0
        client.close()
    finally:
        await server.close()


async def test_a_digest_answer_without_qop_works_only_on_its_connection(server: RtspServer) -> None:
    """Most RTSP clients answer without qop=auth; such an answer, captured, must not let
    another connection in (it is asked for a fresh nonce: stale, not a failed login)."""
    uri = "rtsp://127.0.0.1/x"
    client = await RawClient.connect(server.port, None)
    challenge = await client.request("DESCRIBE", uri)
    params = parse_auth_params(split_scheme(challenge.headers.get_all("WWW-Authenticate")[0])[1])
    answer = digest_response(
        "MD5", "vms", params["realm"], PASSWORD, "DESCRIBE", uri, params["nonce"]
    )
    header = (
        f'Digest username="vms", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{answer}"'
    )
    assert (await client.request("DESCRIBE", uri, {"Authorization": header})).status == 404
    client.close()
    replayed = await RawClient.connect(server.port, None)
    response = await replayed.request("DESCRIBE", uri, {"Authorization": header})
    assert response.status == 401
    assert "stale=true" in ",".join(response.headers.get_all("WWW-Authenticate")).lower()
    assert server.refusals.total("rtsp", "auth_failure") == 0
    replayed.close()


async def test_parallel_guessing_from_one_address_is_no_faster(server: RtspServer) -> None:
    answered: list[float] = []
    start = time.monotonic()

    async def one() -> None:
        reader, writer = await connect_from(server.port, "127.0.0.3")
        client = RawClient(reader, writer, "wrong")
        try:
            while (await client.request("DESCRIBE", "rtsp://127.0.0.1/x")).status == 401:
                answered.append(time.monotonic() - start)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(8))), 30)
    # One answer at a time, each after the address's delay: 8 connections do not make 8
    # guesses at once; those that would wait too long are closed unanswered.
    early = [t for t in answered if t < 1.0]
    assert len(early) <= 4, answered
    assert server.refusals.total("rtsp", "auth_queue_full") > 0
