"""gateway.limits: the rate and connection limits, and the aiohttp listeners' timeouts and caps
(the ONVIF devices and the admin API use these), on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config import ServerConfig
from gateway.limits import (
    CappedSite,
    ConnectionCounter,
    FailureThrottle,
    HttpLimits,
    ListenerCaps,
    Refusals,
    TokenBucket,
    listener_caps,
)
from tests.test_rtsp_hardening import read_until_closed


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_failure_throttle_grows_and_forgets() -> None:
    throttle = FailureThrottle(free=1, base=0.5, maximum=2.0, forget_after=60.0)
    delays = []
    for _ in range(5):
        delays.append(throttle.delay("a", 0.0))
        throttle.failure("a", 0.0)
    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0]
    assert throttle.delay("b", 0.0) == 0.0
    assert throttle.delay("a", 61.0) == 0.0


def test_listener_caps_leave_room_for_the_others() -> None:
    caps = {name: listener_caps(name, 1024) for name in ("rtsp", "onvif", "admin")}
    assert sum(c.total for c in caps.values()) < 1024
    assert all(c.per_address < c.total for c in caps.values())
    assert listener_caps("rtsp", 1024, per_address=10).per_address == 10
    counter = ConnectionCounter(ListenerCaps(total=3, per_address=2), "x", Refusals())
    assert counter.admit("a") is None and counter.admit("a") is None
    assert counter.admit("a") is not None  # its share is used up
    assert counter.admit("b") is None
    assert counter.admit("c") is not None  # the listener is full
    counter.release("a")
    assert counter.admit("c") is None
    assert counter.refusals.total("x", "connection_cap") == 2


@pytest.fixture
async def site() -> AsyncIterator[tuple[int, HttpLimits]]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    server = ServerConfig(request_timeout=0.5, idle_timeout=3.0, connections_per_address=3)
    limits = HttpLimits.for_listener("admin", server, Refusals())
    app = web.Application(middlewares=[limits.body_deadline()])
    app.router.add_route("*", "/", echo)
    runner = web.AppRunner(app, access_log=None, **limits.runner_options())
    await runner.setup()
    capped = CappedSite(runner, "127.0.0.1", 0, limits)
    await capped.start()
    port = int(runner.addresses[0][1])
    yield port, limits
    await runner.cleanup()


async def test_a_slow_body_gets_408(site: tuple[int, HttpLimits]) -> None:
    port, limits = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    start = time.monotonic()
    reply = await read_until_closed(reader)
    assert reply.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - start < 3.0
    assert limits.counter.refusals.total("admin", "request_timeout") == 1
    writer.close()


async def test_slow_headers_and_idle_connections_are_closed(site: tuple[int, HttpLimits]) -> None:
    port, limits = site
    idle = await asyncio.open_connection("127.0.0.1", port)
    slow = await asyncio.open_connection("127.0.0.1", port)
    slow[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the header section never ends
    start = time.monotonic()
    for reader, _ in (idle, slow):
        assert await read_until_closed(reader) == b""
    # Within request_timeout (0.5 s), long before the keep-alive timeout (3 s).
    assert time.monotonic() - start < 2.0
    assert limits.counter.refusals.total("admin", "request_timeout") == 2
    for _, writer in (idle, slow):
        writer.close()
    # A kept-alive connection idles until the keep-alive timeout, then is closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    await read_until_closed(reader, 10)
    assert 2.0 < time.monotonic() - start < 8.0
    writer.close()


async def test_one_address_cannot_take_the_listener(site: tuple[int, HttpLimits]) -> None:
    port, limits = site
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(ConnectionError):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        if not await read_until_closed(reader):
            raise ConnectionResetError
    writer.close()
    assert limits.counter.refusals.total("admin", "connection_cap") == 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    for _, w in held:
        w.close()
