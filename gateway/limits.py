"""Limits against hostile load, shared by every listener (sans-IO but for the aiohttp helpers).

- :class:`TokenBucket` / :class:`KeyedBuckets`: request and reply rates (RTSP before
  authentication, WS-Discovery replies per source, state-changing ONVIF calls per device).
- :class:`FailureThrottle`: a growing delay per source address after failed logins.
- :class:`ConnectionCounter` and :func:`listener_caps`: connections per listener and per source
  address, derived from the process's open-file limit so one listener cannot take the
  descriptors the others need.
- :class:`CappedProtocol` and :func:`body_deadline`: the same cap and a body timeout for the
  aiohttp servers (ONVIF devices, admin API).

Time is always passed in (``now``), so the cores are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from gateway.cancellation import wait_for
from gateway.config import ServerConfig

log = logging.getLogger("gateway.limits")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate


class KeyedBuckets:
    """One :class:`TokenBucket` per key (a source address, a device), at most ``max_keys``
    of them: the least recently used go first, so memory stays bounded."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def take(self, key: str, now: float) -> bool:
        return self.bucket(key, now).take(now)


class FailureThrottle:
    """Per-address delay after repeated authentication failures.

    The first ``free`` failures within ``forget_after`` seconds cost nothing; each further
    one doubles the delay from ``base`` up to ``maximum``. At most ``max_addresses`` are
    tracked (the least recently failing are forgotten first), so memory stays bounded.
    """

    def __init__(
        self,
        *,
        free: int = 3,
        base: float = 0.25,
        maximum: float = 4.0,
        forget_after: float = 300.0,
        max_addresses: int = 4096,
    ) -> None:
        self.free = free
        self.base = base
        self.maximum = maximum
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failures(self, address: str, now: float) -> int:
        """Failures counted against ``address`` (0 once forgotten)."""
        entry = self._failures.get(address)
        if entry is None or now - entry[1] > self.forget_after:
            return 0
        return entry[0]

    def delay(self, address: str, now: float) -> float:
        count = self.failures(address, now)
        if count <= self.free:
            if count == 0:
                self._failures.pop(address, None)
            return 0.0
        return min(self.maximum, self.base * 2 ** (count - self.free - 1))

    def failure(self, address: str, now: float) -> None:
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        self._failures[address] = (count + 1, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def success(self, address: str) -> None:
        self._failures.pop(address, None)


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class ListenerCaps:
    """Most connections one listener holds, and most from one source address."""

    total: int
    per_address: int


# Shares of the open-file limit: RTSP (the VMS's streams) gets the most; what is left over
# is for camera sessions, the store, logs and the listeners themselves.
LISTENER_SHARES = {"rtsp": 0.5, "onvif": 0.2, "admin": 0.05}


def listener_caps(listener: str, nofile: int, per_address: int = 0) -> ListenerCaps:
    """The caps of ``listener`` ("rtsp", "onvif", "admin") under an open-file limit of
    ``nofile``; one address may hold half of them unless ``per_address`` says otherwise, so
    an address filling its share still leaves room for every other one."""
    total = max(16, min(65536, int(nofile * LISTENER_SHARES[listener])))
    share = per_address if per_address > 0 else max(4, total // 2)
    return ListenerCaps(total, min(share, total))


def open_file_limit() -> int:
    """The process's soft limit on open files (raised to the hard one at start-up)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Refusals:
    """What the listeners refused: counts by (listener, reason) for the metrics
    (``onvif_gateway_refusals_total``), and per source address for the log lines.

    One per gateway process, shared by its listeners; at most ``max_sources`` addresses are
    remembered (the least recently refused are forgotten first)."""

    def __init__(self, max_sources: int = 1024) -> None:
        self.max_sources = max_sources
        self.totals: dict[tuple[str, str], int] = {}
        self._by_source: OrderedDict[str, int] = OrderedDict()

    def count(self, listener: str, reason: str, source: str) -> int:
        """Count one refusal; returns how many ``source`` has had (of any kind)."""
        key = (listener, reason)
        self.totals[key] = self.totals.get(key, 0) + 1
        seen = self._by_source.pop(source, 0) + 1
        self._by_source[source] = seen
        while len(self._by_source) > self.max_sources:
            self._by_source.popitem(last=False)
        return seen

    def total(self, listener: str, reason: str) -> int:
        return self.totals.get((listener, reason), 0)

    def log(self, listener: str, reason: str, source: str, **fields: object) -> None:
        """Count and log one refusal: one line per source address every 30 s at most
        (gateway.log.RateLimiter), saying how many that address has had."""
        seen = self.count(listener, reason, source)
        log.warning(
            "refused",
            extra={
                "listener": listener,
                "reason": reason,
                "peer": source,
                "refusals": seen,
                "ratelimit": True,
                **fields,
            },
        )


class ConnectionCounter:
    """Open connections of one listener, in total and per source address."""

    def __init__(
        self, caps: ListenerCaps, listener: str = "", refusals: Refusals | None = None
    ) -> None:
        self.caps = caps
        self.listener = listener
        self.refusals = refusals if refusals is not None else Refusals()
        self.total = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; the reason it is refused, or None."""
        refused = None
        held = self._by_address.get(address, 0)
        if self.total >= self.caps.total:
            refused = f"listener full ({self.caps.total} connections)"
        elif held >= self.caps.per_address:
            refused = f"address holds {held} connections (cap {self.caps.per_address})"
        if refused is not None:
            self.refusals.log(self.listener, "connection_cap", address, detail=refused)
            return refused
        self.total += 1
        self._by_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held <= 0:
            return
        self.total -= 1
        if held == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = held - 1

    def held(self, address: str) -> int:
        return self._by_address.get(address, 0)


# --------------------------------------------------------------------------- aiohttp


class CappedProtocol(asyncio.Protocol):
    """Wraps one aiohttp request handler: a connection over the listener's caps is closed
    at once (never reaching aiohttp), any other is passed through, and must complete its
    first request's header section within ``header_timeout`` seconds of connecting.
    (aiohttp has no header timeout of its own; later requests on a kept-alive connection are
    bounded by its keep-alive timeout.)"""

    def __init__(
        self, inner: asyncio.Protocol, counter: ConnectionCounter, header_timeout: float
    ) -> None:
        self.inner = inner
        self.counter = counter
        self.header_timeout = header_timeout
        self.address: str | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a header end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        if self.counter.admit(address) is not None:
            cast(asyncio.Transport, transport).abort()
            return
        self.address = address
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.header_timeout, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.address is not None and self._transport is not None:
            self.counter.refusals.log(self.counter.listener, "request_timeout", self.address)
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.address is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.counter.release(self.address)
        self.address = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.address is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.address is not None else None

    def pause_writing(self) -> None:
        if self.address is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.address is not None:
            self.inner.resume_writing()


def capped_factory(
    factory: Callable[[], Any], counter: ConnectionCounter, header_timeout: float
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` that caps ``factory``'s connections."""
    return lambda: CappedProtocol(factory(), counter, header_timeout)


@dataclass
class HttpLimits:
    """What one aiohttp listener enforces: its connection caps (one counter may be shared by
    several sites, as the ONVIF devices' ports are), a deadline for a request's body, and
    the keep-alive timeout (aiohttp closes a connection waiting longer than that for a
    complete request, so it bounds slow headers as well as idle connections)."""

    name: str
    counter: ConnectionCounter
    request_timeout: float = 5.0
    idle_timeout: float = 30.0

    @classmethod
    def for_listener(
        cls, name: str, server: ServerConfig, refusals: Refusals | None = None
    ) -> HttpLimits:
        caps = listener_caps(name, open_file_limit(), server.connections_per_address)
        counter = ConnectionCounter(caps, name, refusals)
        return cls(name, counter, server.request_timeout, server.idle_timeout)

    def body_deadline(self) -> Any:
        """The :func:`body_deadline` middleware for this listener."""
        return body_deadline(self.request_timeout, self.name, self.counter.refusals)

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner``: the keep-alive timeout, and how long the
        rest of a body refused early is read and dropped before closing (aiohttp's
        lingering close; its default of 10 s would let a trickling client stay that long)."""
        return {"keepalive_timeout": self.idle_timeout, "lingering_time": self.request_timeout}


class CappedSite(web.TCPSite):
    """A ``TCPSite`` whose connections pass through :class:`CappedProtocol`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, limits: HttpLimits, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            capped_factory(server, self.limits.counter, self.limits.request_timeout),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


def body_deadline(seconds: float, listener: str, refusals: Refusals) -> Any:
    """aiohttp middleware: a request's body must arrive within ``seconds`` (read here, so
    handlers get it from memory); a client trickling it gets 408 and the connection closes."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        too_large = (request.content_length or 0) > request.client_max_size
        if request.can_read_body and not too_large:  # too large: the handler says so at once
            try:
                await wait_for(request.read(), seconds)
            except TimeoutError:
                refusals.log(listener, "request_timeout", request.remote or "", path=request.path)
                response = web.Response(status=408, text="request body too slow\n")
                response.force_close()
                return response
        return await handler(request)

    return middleware
