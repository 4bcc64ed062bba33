"""Who may do what on the admin app, and the record of it: the middlewares that authenticate
every request (:mod:`gateway.admin.auth` holds the accounts and the rules), check the route's
role and refuse cross-site state changes, add the security headers (HSTS over TLS); the
sign-in form; and the audit trail entries (:mod:`gateway.admin.trail`) for sign-ins and
actions. The routes and their roles are in :mod:`gateway.admin.api`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.admin.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    AdminAuth,
    Identity,
    cleartext_allowed,
    cross_site,
    role_allows,
)
from gateway.admin.trail import AdminTrail

log = logging.getLogger("gateway.admin")

STATIC = Path(str(resources.files("gateway.admin") / "static"))
PUBLIC = "public"
SAFE_METHODS = ("GET", "HEAD")
HSTS = "max-age=31536000"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUTH: web.AppKey[AdminAuth] = web.AppKey("auth", AdminAuth)
TRAIL: web.AppKey[AdminTrail] = web.AppKey("trail", AdminTrail)
# (method, route path) -> the least role that may use it; filled from api.ROUTES.
ROLES: web.AppKey[dict[tuple[str, str], str]] = web.AppKey("roles", dict)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":"), default=str),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
# The client's address as worker 0 saw it, on a request it passed to another worker
# (gateway.admin.siblings): what the audit trail and the clients list name.
FORWARDED_PEER: web.RequestKey[str] = web.RequestKey("forwarded_peer", str)


def peer_of(request: web.Request) -> str:
    forwarded = request.get(FORWARDED_PEER)
    if forwarded:
        return forwarded
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return "?"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "?"


def route_role(request: web.Request) -> str | None:
    """The least role the matched route needs; None for no route (404/405 follow)."""
    route = request.match_info.route
    method = "GET" if request.method == "HEAD" else request.method
    return request.app[ROLES].get((method, route.resource.canonical if route.resource else ""))


def _wants_html(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects (sign-in) and errors are responses too
        _harden(request, exc)
        raise
    _harden(request, response)
    return response


def _harden(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # same-origin rather than no-referrer: with no-referrer, browsers send "Origin: null"
    # on the sign-in form's POST, which cross_site() must treat as foreign.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = route_role(request)
    if needed == PUBLIC:
        return await handler(request)
    auth = request.app[AUTH]
    address = _address(request)
    identity: Identity | None = None
    session = auth.session(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        identity = Identity(session.username, session.role, "session", session)
    stale = False
    header = request.headers.get("Authorization")
    if identity is None and header:
        name = auth.claimed_name(header)
        method = header.split(None, 1)[0].lower()[:16]
        if auth.blocked(address, name):
            return error(429, "too many failed sign-ins for this account; try again later")
        if method == "basic" and not cleartext_allowed(request.secure, address):
            auth.failed(address, name)  # counted: bounds what a flood can write to the trail
            _record(request, "sign-in-failed", "refused: Basic over plain HTTP", name, method)
            return error(403, "Basic authentication over plain HTTP is refused; use HTTPS")
        identity, stale = await auth.check_header(request.method, header, request.raw_path)
        # Only passwords are counted: other schemes cannot guess one.
        if identity is None and not stale and method in ("basic", "digest"):
            _sign_in_failed(request, name, method)
        elif identity is not None:
            auth.succeeded(address, identity.username)
    if identity is None:
        if _wants_html(request) and not header:
            raise web.HTTPSeeOther(f"/login?next={request.path}")
        response = error(401, "authentication required")
        for value in auth.challenge(stale=stale):
            response.headers.add("WWW-Authenticate", value)
        return response
    request[IDENTITY] = identity
    if needed is None:  # no such route or method: 404/405 follow, nothing changes
        return await handler(request)
    changing = request.method not in SAFE_METHODS
    if not role_allows(identity.role, needed):
        if changing:
            audit(request, _action_name(request), f"refused: needs role {needed}")
        return error(403, f"this needs the {needed} role; {identity.username} is {identity.role}")
    if changing:
        if identity.session is not None:
            if not auth.csrf_ok(identity.session, request.headers.get(CSRF_HEADER)):
                audit(request, _action_name(request), "refused: CSRF token missing or wrong")
                return error(403, f"missing or wrong {CSRF_HEADER} header")
        elif cross_site(request.headers, request.scheme, request.host):
            audit(request, _action_name(request), "refused: cross-site request")
            return error(403, "cross-site request refused")
    return await handler(request)


def _action_name(request: web.Request) -> str:
    return request.path.rstrip("/").rsplit("/", 1)[-1] or request.path


def _sign_in_failed(request: web.Request, name: str, method: str) -> None:
    address = _address(request)
    locked = request.app[AUTH].failed(address, name)
    log.warning(
        "admin login failed" if method == "form" else "admin authentication failed",
        # Rate-limited per source address (gateway.log), not for every guess.
        extra={
            "peer": peer_of(request),
            "source": address,
            "path": request.path,
            "ratelimit": True,
        },
    )
    _record(request, "sign-in-failed", "refused: wrong credentials", name, method)
    if locked:
        log.warning("admin sign-ins locked out", extra={"peer": peer_of(request), "user": name})
        _record(request, "locked-out", "refused for the next 5 minutes", name, method)


def _record(
    request: web.Request,
    action: str,
    result: str,
    account: str,
    method: str,
    role: str | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    request.app[TRAIL].record(
        account=account or "?",
        role=role,
        method=method,
        source=peer_of(request),
        action=action,
        result=result,
        target=target,
        detail=detail,
    )


def audit(
    request: web.Request,
    action: str,
    result: str = "ok",
    target: str | None = None,
    **detail: Any,
) -> None:
    """Log an admin action and record it in the audit trail."""
    identity: Identity = request[IDENTITY]
    log.info(
        "admin action",
        extra={
            "action": action,
            "user": identity.username,
            "peer": peer_of(request),
            "result": result,
            **({"camera": target} if target else {}),
            **{k: v if isinstance(v, str | int | float) else str(v) for k, v in detail.items()},
        },
    )
    _record(
        request,
        action,
        result,
        identity.username,
        identity.method,
        identity.role,
        target,
        detail or None,
    )


LOGIN_PAGE = (STATIC / "login.html").read_text(encoding="utf-8") if STATIC.exists() else ""


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path or "/"


PLAIN_REFUSED = (
    "Signing in over plain HTTP from another computer is disabled: the password would cross "
    "the network in the clear. Ask the administrator to turn on HTTPS ([admin] tls = true)."
)


LOCKED_OUT = "Too many failed sign-ins for this account; try again in a few minutes."


def _login_page(
    request: web.Request, message: str, allowed: bool, status: int = 200
) -> web.Response:
    page = (
        LOGIN_PAGE.replace("{next}", html.escape(_safe_next(request.query.get("next")), quote=True))
        .replace("{failed}", " shown" if message else "")
        .replace("{message}", html.escape(message))
        .replace("{disabled}", "" if allowed else " disabled")
    )
    return web.Response(
        text=page,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            # The login page is self-contained: its style is inline, it has no script.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; form-action 'self'; frame-ancestors 'none'",
        },
    )


async def login_form(request: web.Request) -> web.StreamResponse:
    allowed = cleartext_allowed(request.secure, _address(request))
    if request.method == "GET":
        message = "Wrong user or password." if request.query.get("failed") else ""
        return _login_page(request, message if allowed else PLAIN_REFUSED, allowed)
    auth = request.app[AUTH]
    address = _address(request)
    if cross_site(request.headers, request.scheme, request.host):
        return error(403, "cross-site sign-in refused")
    form = await request.post()
    username = str(form.get("username", ""))[:256]
    password = str(form.get("password", ""))[:1024]
    target = _safe_next(str(form.get("next", "")) or request.query.get("next"))
    if not allowed:
        auth.failed(address, username)
        _record(request, "sign-in-failed", "refused: password over plain HTTP", username, "form")
        return error(403, PLAIN_REFUSED)
    if auth.blocked(address, username):
        return _login_page(request, LOCKED_OUT, allowed, 429)
    account = await auth.verify_password(username, password)
    if account is None:
        _sign_in_failed(request, username, "form")
        raise web.HTTPSeeOther(f"/login?failed=1&next={target}")
    auth.succeeded(address, username)
    token, _ = auth.open_session(account)
    log.info("admin login", extra={"user": username, "peer": peer_of(request)})
    _record(request, "sign-in", "ok", username, "form", account.role)
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[AUTH].close_session(request.cookies.get(SESSION_COOKIE))
    audit(request, "sign-out")
    response = json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
