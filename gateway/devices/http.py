"""One camera's HTTP API: aiohttp with Digest (or Basic) auth, timeouts and size limits.

The gateway's one HTTP client towards cameras: vendor APIs and motion event streams.

Every request is bounded by ``timeout`` seconds (connect, send and the whole body), every
body by ``max_body`` bytes. Failures become :mod:`gateway.devices.errors` exceptions naming
the camera and the request path; nothing here ever puts the password in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from gateway.devices.errors import (
    DeviceAuthError,
    DeviceConnectionError,
    DeviceProtocolError,
    DeviceTimeoutError,
)
from gateway.digest import DigestClient, parse_auth_params, split_scheme

DEFAULT_TIMEOUT = 10.0
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class CameraHttp:
    """HTTP access to one camera; reuses the last Digest challenge to save round trips."""

    def __init__(
        self,
        camera: str,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_body: int = MAX_BODY,
        scheme: str = "http",
    ) -> None:
        self.camera = camera
        host_part = f"[{host}]" if ":" in host else host
        self.base_url = f"{scheme}://{host_part}:{port}"
        self.timeout = timeout
        self.max_body = max_body
        # Basic only when a camera offers nothing else (some old Hikvision firmware).
        self._auth = DigestClient(username, password, allow_basic=True)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CameraHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cookie jar and no environment proxies: cameras are talked to directly.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                connector=aiohttp.TCPConnector(limit=4),
            )
        return self._session

    def _learn(self, headers: CIMultiDictProxy[str], path: str, answered: bool) -> bool:
        """Take a 401's challenge; False when the credentials themselves were refused."""
        offers = headers.getall("WWW-Authenticate", [])
        stale = False
        for offer in offers:
            scheme, rest = split_scheme(offer)
            if scheme == "digest":
                # A malformed challenge is reported by handle_challenge below.
                with contextlib.suppress(ValueError):
                    stale = parse_auth_params(rest).get("stale", "").lower() == "true"
        if answered and not stale:
            return False
        try:
            self._auth.handle_challenge(offers)
        except ValueError as exc:
            raise DeviceProtocolError(
                self.camera, f"{path}: cannot answer the authentication challenge: {exc}"
            ) from None
        return True

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        raw_query: str | None = None,
    ) -> HttpResponse:
        """Send one request, authenticating as needed; any status is returned, except 401.

        ``raw_query`` is sent verbatim (Dahua CGI keys contain ``[``/``]`` that some firmware
        wants unescaped); otherwise ``params`` are URL-encoded.
        """
        if raw_query is not None:
            uri = f"{path}?{raw_query}"
        elif params:
            query = "&".join(
                f"{query_escape(k, key=True)}={query_escape(v)}" for k, v in params.items()
            )
            uri = f"{path}?{query}"
        else:
            uri = path
        try:
            async with asyncio.timeout(self.timeout):
                for _attempt in range(3):
                    answered = self._auth.ready
                    response = await self._send(method, uri, body, content_type)
                    if response.status != 401:
                        return response
                    if not self._learn(response.headers, path, answered):
                        break
        except TimeoutError:
            raise DeviceTimeoutError(
                self.camera, f"{method} {path}: no answer within {self.timeout:g} s"
            ) from None
        raise DeviceAuthError(self.camera, f"{method} {path}: credentials refused (HTTP 401)")

    async def open(
        self,
        method: str,
        uri: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float,
    ) -> aiohttp.ClientResponse:
        """A long-lived answer (event streams, long polls), authenticating as needed.

        The response is returned unread with any status (a 401 when the credentials are
        refused); the caller reads it, handling aiohttp's errors, and releases it.
        ``read_timeout`` bounds each wait for data; ``timeout`` only the connect.
        """
        path = uri.split("?", 1)[0]
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=read_timeout)
        for attempt in range(3):
            answered = self._auth.ready
            response = await self._client().request(
                method,
                yarl.URL(self.base_url + uri, encoded=True),
                data=body,
                headers=self._headers(method, uri, headers),
                allow_redirects=False,
                timeout=timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            last = attempt == 2
            if response.status != 401 or last or not self._learn(response.headers, path, answered):
                return response
            response.release()
        raise AssertionError("unreachable")

    def _headers(
        self, method: str, uri: str, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        headers = {"Accept": "*/*", **(extra or {})}
        authorization = self._auth.authorization(method, uri)
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def _send(
        self, method: str, uri: str, body: bytes | None, content_type: str | None
    ) -> HttpResponse:
        headers = self._headers(method, uri)
        if content_type:
            headers["Content-Type"] = content_type
        path = uri.split("?", 1)[0]
        try:
            async with self._client().request(
                method,
                yarl.URL(self.base_url + uri, encoded=True),
                data=body,
                headers=headers,
                allow_redirects=False,
                # The URI is already encoded (Digest signs it byte for byte).
                skip_auto_headers=("User-Agent",),
            ) as resp:
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > self.max_body:
                        raise DeviceProtocolError(
                            self.camera, f"{path}: answer larger than {self.max_body} bytes"
                        )
                return HttpResponse(resp.status, resp.headers, bytes(data))
        except aiohttp.ServerDisconnectedError:
            raise DeviceConnectionError(
                self.camera, f"{path}: the camera closed the connection without answering"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise DeviceConnectionError(self.camera, f"cannot connect: {reason}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            what = "connection reset" if "reset" in str(exc).lower() else type(exc).__name__
            raise DeviceConnectionError(self.camera, f"{path}: {what}") from None
        except aiohttp.ClientResponseError as exc:
            raise DeviceProtocolError(
                self.camera, f"{path}: malformed HTTP answer ({exc.message})"
            ) from None


def query_escape(text: str, *, key: bool = False) -> str:
    """Percent-encode for a query string; Dahua keys keep their ``[i]`` unescaped."""
    return quote(text, safe="[]._-" if key else "._-")
