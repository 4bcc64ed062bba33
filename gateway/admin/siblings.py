"""The admin channel between worker processes (``[server] workers``, :mod:`gateway.workers`).

Worker 0 serves the admin API, dashboard and ``/metrics`` of the whole gateway on the
configured admin port. Every other worker serves the same app only to worker 0: on a Unix
socket in the workers' private directory (the directory 0700, the socket 0600), and only to
requests carrying the run's internal token (:func:`gateway.workers.internal_token`, derived
from the secret the supervisor hands its workers). A request is authenticated once, on worker
0 (sign-in, role, CSRF, rate limits: :mod:`gateway.admin.access`); worker 0 then passes the
identity it established and the client's address along, so the owner of a camera runs the
request and records it in the audit trail as if the client had asked it directly.

:class:`Siblings` is worker 0's side: it routes a request to one worker (bounded body,
timeout), asks all of them at once for list endpoints and ``/metrics`` (a worker that does
not answer within :data:`READ_TIMEOUT` is named in the answer instead of holding it up), and
relays a live view's WebSocket. :func:`internal_authenticate` is the other workers' side.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web

from gateway.admin.access import FORWARDED_PEER, IDENTITY, PUBLIC, error, peer_of, route_role
from gateway.admin.auth import Identity, role_allows
from gateway.cancellation import cancel_and_wait
from gateway.config import ADMIN_ROLES, Config
from gateway.workers import Shard, owner_of

log = logging.getLogger("gateway.admin")

TOKEN_HEADER = "X-Gateway-Internal"
USER_HEADER = "X-Gateway-User"
ROLE_HEADER = "X-Gateway-Role"
METHOD_HEADER = "X-Gateway-Auth-Method"
PEER_HEADER = "X-Gateway-Peer"
# Request headers worker 0 passes on as the client sent them (Host and Origin: the owner
# names URLs after the host the client asked, and checks a live view's Origin against it).
PASSED_REQUEST_HEADERS = ("Host", "Origin", "Accept", "Content-Type")
# Response headers passed back (worker 0 adds its own security headers).
PASSED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Retry-After", "Allow")

# How long worker 0 waits for another worker: reads and camera actions, then a snapshot (an
# idle on-demand stream waits up to 10 s for its first keyframe), a reload, and a live
# view's WebSocket handshake (the stream may take 10 s to become ready).
READ_TIMEOUT = 3.0
SNAPSHOT_TIMEOUT = 15.0
RELOAD_TIMEOUT = 60.0
LIVE_CONNECT_TIMEOUT = 15.0
# The largest answer relayed: a 1920-pixel JPEG or a long camera list fit many times over.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# The largest live view message relayed (one fMP4 segment: a 4K keyframe fits).
MAX_LIVE_MESSAGE = 16 * 1024 * 1024

INTERNAL_TOKEN: web.AppKey[str] = web.AppKey("internal_token", str)


@dataclass(frozen=True)
class Answer:
    """What one worker answered: ``body`` (JSON or text), or ``error`` saying why not."""

    worker: int
    body: Any = None
    error: str | None = None


class Siblings:
    """Worker 0's view of the other workers' admin APIs."""

    def __init__(self, shard: Shard, token: str, site: Callable[[], Config]) -> None:
        self.shard = shard
        self.token = token
        self._site = site
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    @property
    def others(self) -> range:
        return range(1, self.shard.count)

    def owner(self, camera: str) -> int | None:
        """The worker owning ``camera`` (the mapping :mod:`gateway.workers` shards by)."""
        return owner_of(self._site(), self.shard, camera)

    def cameras_of(self, worker: int) -> list[str]:
        return [
            c.name for k, c in enumerate(self._site().cameras) if k % self.shard.count == worker
        ]

    def _session(self, worker: int) -> aiohttp.ClientSession:
        session = self._sessions.get(worker)
        if session is None or session.closed:
            # A connection per request (cheap on a Unix socket): none is left pointing at a
            # worker the supervisor has since restarted.
            connector = aiohttp.UnixConnector(
                path=self.shard.admin_socket_path(worker), force_close=True
            )
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._sessions[worker] = session
        return session

    def _headers(self, request: web.Request) -> dict[str, str]:
        identity: Identity = request[IDENTITY]
        headers = {
            TOKEN_HEADER: self.token,
            USER_HEADER: quote(identity.username, safe=""),
            ROLE_HEADER: identity.role,
            METHOD_HEADER: identity.method,
            PEER_HEADER: peer_of(request),
        }
        for name in PASSED_REQUEST_HEADERS:
            if name in request.headers:
                headers[name] = request.headers[name]
        return headers

    async def forward(
        self, request: web.Request, worker: int, timeout: float = READ_TIMEOUT
    ) -> web.StreamResponse:
        """Run ``request`` on ``worker`` and answer what it answered (502/504 if it cannot)."""
        body = await request.read() if request.body_exists else None
        try:
            async with asyncio.timeout(timeout):
                async with self._session(worker).request(
                    request.method,
                    f"http://worker{request.rel_url}",
                    headers=self._headers(request),
                    data=body,
                    allow_redirects=False,
                ) as answer:
                    data = await _read_bounded(answer.content, answer.content_length)
                    response = web.Response(status=answer.status, body=data)
                    for name in PASSED_RESPONSE_HEADERS:
                        if name in answer.headers:
                            response.headers[name] = answer.headers[name]
                    return response
        except TimeoutError:
            return error(504, f"worker {worker} did not answer within {timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return error(502, f"worker {worker} did not answer: {_reason(exc)}")

    async def ask(
        self, request: web.Request, worker: int, path: str, *, text: bool = False
    ) -> Answer:
        """GET ``path`` from ``worker`` as the client of ``request``: JSON (or text)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                async with self._session(worker).get(
                    f"http://worker{path}", headers=self._headers(request)
                ) as answer:
                    data = await _read_bounded(answer.content, answer.content_length)
                    if answer.status != 200:
                        return Answer(worker, error=f"HTTP {answer.status}")
                    return Answer(worker, data.decode() if text else json.loads(data))
        except TimeoutError:
            return Answer(worker, error=f"no answer within {READ_TIMEOUT:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Answer(worker, error=_reason(exc))

    async def ask_all(self, request: web.Request, path: str, *, text: bool = False) -> list[Answer]:
        """``path`` from every other worker at once, in worker order."""
        return list(
            await asyncio.gather(*(self.ask(request, w, path, text=text) for w in self.others))
        )

    async def reload_all(self, request: web.Request) -> list[Answer]:
        """Every other worker reloads the configuration file (each from the file)."""

        async def one(worker: int) -> Answer:
            try:
                async with asyncio.timeout(RELOAD_TIMEOUT):
                    async with self._session(worker).post(
                        "http://worker/internal/reload", headers=self._headers(request)
                    ) as answer:
                        data = json.loads(
                            await _read_bounded(answer.content, answer.content_length)
                        )
                        if answer.status != 200:
                            return Answer(worker, error=str(data.get("error", answer.status)))
                        return Answer(worker, data)
            except TimeoutError:
                return Answer(worker, error=f"no answer within {RELOAD_TIMEOUT:g} s")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return Answer(worker, error=_reason(exc))

        return list(await asyncio.gather(*(one(w) for w in self.others)))

    async def live_view(self, request: web.Request, worker: int) -> web.StreamResponse:
        """Relay a live view's WebSocket to ``worker``. The owner's viewer keeps its send
        budget: worker 0 reads the next segment only once the browser took the last, so a
        slow browser backs up to the owner, which drops frames or disconnects it."""
        try:
            # Only the handshake is timed; the stream then runs as long as it is watched.
            async with asyncio.timeout(LIVE_CONNECT_TIMEOUT):
                upstream = await self._session(worker).ws_connect(
                    f"http://worker{request.rel_url}",
                    headers=self._headers(request),
                    max_msg_size=MAX_LIVE_MESSAGE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            return error(exc.status, f"live view refused by worker {worker}: {exc.message}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return error(502, f"worker {worker} did not answer: {_reason(exc)}")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        try:
            await ws.prepare(request)
            await _relay(upstream, ws)
        finally:
            await upstream.close()
        return ws

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def _relay(upstream: aiohttp.ClientWebSocketResponse, ws: web.WebSocketResponse) -> None:
    """Pass messages both ways until either side closes."""

    tasks = [asyncio.ensure_future(_pump(upstream, ws)), asyncio.ensure_future(_pump(ws, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)
        await ws.close()


WebSocket = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        else:
            break


async def _read_bounded(content: aiohttp.StreamReader, length: int | None) -> bytes:
    """The whole answer, refusing one above :data:`MAX_ANSWER_BYTES` (bounded memory)."""
    if length is not None and length > MAX_ANSWER_BYTES:
        raise ValueError(f"answer of {length} bytes is too large")
    data = bytearray()
    async for chunk in content.iter_any():
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError("answer too large")
    return bytes(data)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError | FileNotFoundError):
        return "not running (no admin channel)"
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- other workers


@web.middleware
async def internal_authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The internal app's only door: worker 0's token, then the identity it established."""
    token = request.app[INTERNAL_TOKEN]
    given = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.warning(
            "internal admin request refused: token missing or wrong",
            extra={"path": request.path[:128], "ratelimit": True},
        )
        return error(403, "internal admin channel: token missing or wrong")
    role = request.headers.get(ROLE_HEADER, "")
    username = unquote(request.headers.get(USER_HEADER, ""))
    if role not in ADMIN_ROLES or not username:
        return error(400, "internal admin channel: no identity")
    request[IDENTITY] = Identity(username, role, request.headers.get(METHOD_HEADER, "internal"))
    request[FORWARDED_PEER] = request.headers.get(PEER_HEADER, "?")[:80]
    needed = route_role(request)
    if needed not in (None, PUBLIC) and not role_allows(role, needed):
        return error(403, f"this needs the {needed} role; {username} is {role}")
    return await handler(request)
