"""Authentication and fault injection for the simulated cameras' HTTP faces.

``guard(request, device)`` is what every vendor handler calls first: it plays the device's
active faults (see :data:`gateway.sim.device.FAULTS`) and then checks Digest (or, when the
device allows it, Basic) credentials like the vendor's firmware, answering 401 with a
``WWW-Authenticate`` challenge in the device's realm. Call ``setup(app, device)`` from
``install``. The Digest machinery is the gateway's own (:mod:`gateway.digest`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time

from aiohttp import web

from gateway.digest import DigestAuthenticator, parse_auth_params, split_scheme
from gateway.sim.device import SimDevice

HANG_RELEASE = web.AppKey("sim_hang_release", asyncio.Event)
AUTHENTICATOR = web.AppKey("sim_http_authenticator", DigestAuthenticator)

GARBAGE = b"\x00\x17\xfe<<<not-xml\x01\x02 %%% ]]> \xff\xfe garbage from a confused camera\n"
HTML_ERROR = (
    b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>"
    b"<body><h1>Internal Server Error</h1><p>webs: request failed</p></body></html>\n"
)


def setup(app: web.Application, device: SimDevice, *, allow_basic: bool = False) -> None:
    """Idempotent: give ``app`` the device's authenticator and the hang-release event.

    The password is looked up at each request, so a test may change ``device.password``.
    """
    if AUTHENTICATOR not in app:
        app[AUTHENTICATOR] = DigestAuthenticator(
            device.realm(),
            lambda user: device.password if user == device.username else None,
            secret=os.urandom(32),
            allow_basic=allow_basic,
        )
    if HANG_RELEASE not in app:
        release = asyncio.Event()
        app[HANG_RELEASE] = release

        async def _release(_app: web.Application) -> None:
            release.set()

        app.on_shutdown.append(_release)


def vendor_form(device: SimDevice, value: str, stale: bool) -> str:
    """A Digest challenge written as the vendor's web server writes it.

    Hikvision: ``Digest qop="auth", realm="IP Camera(xxxxx)", nonce="...", stale="FALSE"``
    (stale always sent, quoted, upper case; no algorithm). Dahua: ``Digest realm="Login to
    <serial>", qop="auth", nonce="...", opaque="..."`` (an opaque clients must echo). Other
    values (Basic) are left as they are.
    """
    scheme, rest = split_scheme(value)
    if scheme != "digest" or device.vendor not in ("hikvision", "dahua"):
        return value
    params = parse_auth_params(rest)
    realm, nonce = params["realm"], params["nonce"]
    if device.vendor == "hikvision":
        flag = "TRUE" if stale else "FALSE"
        return f'Digest qop="auth", realm="{realm}", nonce="{nonce}", stale="{flag}"'
    opaque = hashlib.sha1(f"{device.serial}/{nonce}".encode()).hexdigest()
    form = f'Digest realm="{realm}", qop="auth", nonce="{nonce}", opaque="{opaque}"'
    return form + (", stale=TRUE" if stale else "")


def challenge(request: web.Request, device: SimDevice, *, stale: bool = False) -> web.Response:
    response = web.Response(
        status=401,
        body=b"<html><body><h1>401 - Unauthorized</h1></body></html>",
        content_type="text/html",
    )
    for value in request.app[AUTHENTICATOR].challenge(time.time(), stale=stale):
        response.headers.add("WWW-Authenticate", vendor_form(device, value, stale))
    return response


def reset_connection(request: web.Request) -> None:
    """Close the TCP connection with an RST (SO_LINGER 0), like a crashing web server."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def play_faults(request: web.Request, device: SimDevice) -> web.StreamResponse | None:
    """Answer as the active fault dictates, or None when no fault applies."""
    faults = device.faults
    if not faults:
        return None
    if "reset" in faults:
        reset_connection(request)
        raise ConnectionResetError("simulated connection reset")
    if "hang" in faults:
        # Accept and never answer; released only when the simulator shuts down.
        await request.app[HANG_RELEASE].wait()
        reset_connection(request)
        raise ConnectionResetError("simulator shutting down")
    if "unauthorized" in faults:
        return challenge(request, device)
    if "garbage" in faults:
        return web.Response(status=200, body=GARBAGE, content_type="application/xml")
    if "html" in faults:
        return web.Response(status=500, body=HTML_ERROR, content_type="text/html")
    return None


async def guard(request: web.Request, device: SimDevice) -> web.StreamResponse | None:
    """Faults, then authentication. None means: go on and serve the request."""
    faulted = await play_faults(request, device)
    if faulted is not None:
        return faulted
    result = request.app[AUTHENTICATOR].authenticate(
        request.method,
        request.headers.get("Authorization"),
        time.time(),
        uri=request.raw_path,
    )
    if result.username is not None:
        return None
    return challenge(request, device, stale=result.stale)


__all__ = [
    "challenge",
    "guard",
    "play_faults",
    "reset_connection",
    "setup",
]
