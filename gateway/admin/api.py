"""The admin HTTP application: JSON API (documented in ``openapi.yaml``), dashboard, live
view, snapshots and ``/metrics``.

Every route is authenticated (see :mod:`gateway.admin.auth`) except ``/healthz``,
``/readyz`` (they reveal nothing but "ok") and the login form, and declares the least role
that may use it (:data:`ROUTES`; the same as ``x-role`` in ``openapi.yaml``). Sign-ins,
failed sign-ins and every state-changing request go to the audit trail
(:mod:`gateway.admin.trail`).
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway import config as cfgmod
from gateway.admin import metrics
from gateway.admin.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    AdminAuth,
    Identity,
    cleartext_allowed,
    cross_site,
    role_allows,
)
from gateway.admin.live import LiveViewer
from gateway.admin.trail import AdminTrail
from gateway.limits import HttpLimits
from gateway.media.fmp4 import video_config
from gateway.media.hub import StreamHub
from gateway.store import Store

log = logging.getLogger("gateway.admin")

STATIC = Path(str(resources.files("gateway.admin") / "static"))
OPENAPI = Path(str(resources.files("gateway.admin") / "openapi.yaml"))
# Snapshot widths the dashboard asks for; any other width is refused so the cache (one
# decode per stream and width) stays small.
SNAPSHOT_WIDTHS = (160, 320, 480, 640, 960, 1280, 1920)
PUBLIC = "public"
MAX_LOG_LIMIT = 10_000
SAFE_METHODS = ("GET", "HEAD")
HSTS = "max-age=31536000"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminContext:
    """Everything the handlers share."""

    def __init__(self, gateway: Any, auth: AdminAuth, store: Store) -> None:
        self.gateway = gateway
        self.auth = auth
        self.store = store
        self.trail = AdminTrail(store)
        self._policy: Any = None
        self.viewers: set[LiveViewer] = set()
        self.policy_lock = asyncio.Lock()
        self.reload_lock = asyncio.Lock()
        self.config_loaded_at = time.time()
        self.registry = metrics.build_registry(
            metrics.MetricSources(
                streams=self.metric_streams,
                findings=self.findings_summary,
                egress=self.egress,
                camera_count=lambda: len(self.gateway.config.cameras),
                config_loaded_at=lambda: self.config_loaded_at,
                refusals=lambda: dict(self.gateway.refusals.totals),
            )
        )

    @property
    def policy(self) -> Any:
        if self._policy is None:
            from gateway.policy.db import PolicyStore

            self._policy = PolicyStore(self.store)
        return self._policy

    # ------------------------------------------------------------------ views of the state

    def stream_location(self, hub: object) -> tuple[str, str] | None:
        for name, cam in self.gateway.cameras.items():
            for stream, candidate in cam.hubs.items():
                if candidate is hub:
                    return name, stream
        return None

    def clients(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        rtsp = self.gateway.rtsp
        if rtsp is not None:
            for client in rtsp.clients():
                where = self.stream_location(client.source)
                if where is None:
                    continue
                out.append(
                    {
                        "camera": where[0],
                        "stream": where[1],
                        "kind": "rtsp",
                        "peer": client.peer,
                        "transport": client.transport,
                        "playing": client.playing,
                        "connected_seconds": client.connected_seconds,
                        "frames_sent": client.frames_sent,
                        "bytes_sent": client.bytes_sent,
                        "dropped_frames": client.dropped_frames,
                    }
                )
        for viewer in list(self.viewers):
            out.append({"camera": viewer.camera, "stream": viewer.stream, **viewer.to_json()})
        return out

    def stream_json(
        self, camera: str, stream: str, clients: list[dict[str, Any]]
    ) -> dict[str, Any]:
        info = self.gateway.stream_info(camera, stream)
        hub: StreamHub = self.gateway.hub(camera, stream)
        video = next((t for t in hub.tracks if t.is_video), None)
        mime = mse_mime(video.params.name, video.params.parameter_sets) if video else None
        viewers = [c for c in clients if c["camera"] == camera and c["stream"] == stream]
        return {
            "stream": stream,
            "path": info["path"],
            "state": info["state"],
            "connected": info["state"] == "live",
            "last_error": info["last_error"] or None,
            "codec": info["codec"],
            "profile": info["profile"] or None,
            "width": info["width"],
            "height": info["height"],
            "fps": info["fps"],
            "bitrate": info["bitrate"],
            "gop_seconds": info["gop_seconds"],
            "audio_codec": info["audio_codec"],
            "upstream_sessions": info["upstream_sessions"],
            "reconnects": info["reconnects"],
            "frames_in": info["frames_in"],
            "bytes_in": info["bytes_in"],
            "frames_out": hub.stats.frames_out,
            "bytes_out": hub.stats.bytes_out,
            "dropped_frames": info["dropped_frames"],
            "slow_disconnects": info["slow_disconnects"],
            "clients": len(viewers),
            "viewers": [
                {k: v for k, v in c.items() if k not in ("camera", "stream")} for c in viewers
            ],
            "picture": hub.has_keyframe,
            "snapshot_url": f"/snapshot/{camera}/{stream}.jpg",
            "live_url": f"/api/v1/live/{camera}/{stream}",
            "mse_mime": mime,
        }

    def camera_json(
        self, cam: cfgmod.CameraConfig, clients: list[dict[str, Any]]
    ) -> dict[str, Any]:
        runtime = self.gateway.cameras.get(cam.name)
        streams = [self.stream_json(cam.name, s, clients) for s in runtime.hubs] if runtime else []
        index = next(i for i, c in enumerate(self.gateway.config.cameras) if c.name == cam.name)
        return {
            "name": cam.name,
            "vendor": cam.vendor,
            "host": cam.host,
            "enabled": cam.enabled,
            "on_demand": cam.on_demand,
            "onvif_port": cam.onvif_port or self.gateway.config.server.onvif_base_port + index,
            "connected": bool(streams) and streams[0]["connected"],
            "streams": streams,
        }

    def metric_streams(self) -> list[dict[str, Any]]:
        out = []
        kinds: dict[tuple[str, str], dict[str, int]] = {}
        for client in self.clients():
            key = (client["camera"], client["stream"])
            per = kinds.setdefault(key, {"rtsp": 0, "live_view": 0})
            per["rtsp" if client["kind"] == "rtsp" else "live_view"] += 1
        for name, cam in list(self.gateway.cameras.items()):
            for stream, hub in list(cam.hubs.items()):
                stats = hub.stats
                last = max(
                    (t.last_wallclock for t in hub.tracks if t.last_ts is not None), default=None
                )
                out.append(
                    {
                        "camera": name,
                        "stream": stream,
                        "state": hub.state,
                        "client_kinds": kinds.get((name, stream), {"rtsp": 0, "live_view": 0}),
                        "last_frame_age": max(hub.clock() - last, 0.0) if last else None,
                        "bytes_in": stats.bytes_in,
                        "frames_in": stats.frames_in,
                        "bytes_out": stats.bytes_out,
                        "frames_out": stats.frames_out,
                        "dropped_frames": stats.dropped_frames,
                        "slow_disconnects": stats.slow_disconnects,
                        "malformed": stats.malformed_frames,
                        "relayed": stats.relayed_frames,
                        "repacketized": stats.repacketized_frames,
                        "reconnects": stats.reconnects,
                        "upstream_sessions": hub.upstream_sessions,
                        "byte_rate": hub.bitrate / 8,
                        "fps": hub.fps,
                        "gop_seconds": stats.gop_seconds,
                    }
                )
        return out

    def camera_findings(self, camera: str) -> tuple[str, list[dict[str, Any]]]:
        snapshot = self.policy.snapshot(camera)
        findings = self.policy.findings(camera)
        if snapshot is None or snapshot.get("error"):
            status = "unknown"
        elif any(f.get("status") == "open" for f in findings):
            status = "non-compliant"
        else:
            status = "compliant"
        return status, findings

    def findings_summary(self) -> list[tuple[str, str, dict[str, int]]]:
        out = []
        for cam in self.gateway.config.cameras:
            status, findings = self.camera_findings(cam.name)
            by_severity: dict[str, int] = {}
            for f in findings:
                if f.get("status") == "open":
                    by_severity[f["severity"]] = by_severity.get(f["severity"], 0) + 1
            out.append((cam.name, status, by_severity))
        return out

    def egress(self) -> dict[str, Any]:
        from gateway.egress import egress_report

        return egress_report(self.gateway.config, self.store)


@functools.lru_cache(maxsize=256)
def mse_mime(codec: str, parameter_sets: tuple[bytes, ...]) -> str | None:
    """The MSE type of a stream, from its parameter sets; None when not derivable."""
    try:
        return video_config(codec, parameter_sets).mime_type
    except ValueError:
        return None


# --------------------------------------------------------------------------- helpers


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":"), default=str),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


def ctx_of(request: web.Request) -> AdminContext:
    return request.app[CTX]


CTX: web.AppKey[AdminContext] = web.AppKey("ctx", AdminContext)
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)


def _identity(request: web.Request) -> Identity | None:
    return request.get(IDENTITY)


def peer_of(request: web.Request) -> str:
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


# --------------------------------------------------------------------------- middlewares


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
    ctx = ctx_of(request)
    auth = ctx.auth
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
    changing = request.method not in SAFE_METHODS
    if needed is not None and not role_allows(identity.role, needed):
        if changing:
            _audit(request, _action_name(request), f"refused: needs role {needed}")
        return error(403, f"this needs the {needed} role; {identity.username} is {identity.role}")
    if changing:
        if identity.session is not None:
            if not auth.csrf_ok(identity.session, request.headers.get(CSRF_HEADER)):
                _audit(request, _action_name(request), "refused: CSRF token missing or wrong")
                return error(403, f"missing or wrong {CSRF_HEADER} header")
        elif cross_site(request.headers, request.scheme, request.host):
            _audit(request, _action_name(request), "refused: cross-site request")
            return error(403, "cross-site request refused")
    return await handler(request)


def _action_name(request: web.Request) -> str:
    return request.path.rstrip("/").rsplit("/", 1)[-1] or request.path


def _sign_in_failed(request: web.Request, name: str, method: str) -> None:
    ctx = ctx_of(request)
    address = _address(request)
    locked = ctx.auth.failed(address, name)
    log.warning(
        "admin login failed" if method == "form" else "admin authentication failed",
        extra={"peer": peer_of(request), "path": request.path, "ratelimit": True},
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
    ctx_of(request).trail.record(
        account=account or "?",
        role=role,
        method=method,
        source=peer_of(request),
        action=action,
        result=result,
        target=target,
        detail=detail,
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API paths answer errors as JSON ({"error": ...}) like every other response."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        response = error(exc.status, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def _audit(
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


# --------------------------------------------------------------------------- public


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rtsp = ctx_of(request).gateway.rtsp
    if rtsp is None or not rtsp.port:
        return json_response({"status": "starting"}, 503)
    return json_response({"status": "ok"})


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


async def login_form(request: web.Request) -> web.StreamResponse:
    allowed = cleartext_allowed(request.secure, _address(request))
    if request.method == "GET":
        failed = request.query.get("failed")
        message = "Wrong user or password." if failed else ""
        if not allowed:
            message = PLAIN_REFUSED
        page = (
            LOGIN_PAGE.replace(
                "{next}", html.escape(_safe_next(request.query.get("next")), quote=True)
            )
            .replace("{failed}", " shown" if message else "")
            .replace("{message}", html.escape(message))
            .replace("{disabled}", "" if allowed else " disabled")
        )
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                # The login page is self-contained: its style is inline, it has no script.
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "img-src data:; form-action 'self'; frame-ancestors 'none'",
            },
        )
    ctx = ctx_of(request)
    address = _address(request)
    if cross_site(request.headers, request.scheme, request.host):
        return error(403, "cross-site sign-in refused")
    form = await request.post()
    username = str(form.get("username", ""))[:256]
    password = str(form.get("password", ""))[:1024]
    target = _safe_next(str(form.get("next", "")) or request.query.get("next"))
    if not allowed:
        ctx.auth.failed(address, username)
        _record(request, "sign-in-failed", "refused: password over plain HTTP", username, "form")
        return error(403, PLAIN_REFUSED)
    if ctx.auth.blocked(address, username):
        return error(429, "too many failed sign-ins for this account; try again later")
    account = await ctx.auth.verify_password(username, password)
    if account is None:
        _sign_in_failed(request, username, "form")
        raise web.HTTPSeeOther(f"/login?failed=1&next={target}")
    ctx.auth.succeeded(address, username)
    token, _ = ctx.auth.open_session(account)
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
    ctx = ctx_of(request)
    ctx.auth.close_session(request.cookies.get(SESSION_COOKIE))
    _audit(request, "sign-out")
    response = json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# --------------------------------------------------------------------------- dashboard


def _static_file(name: str, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC / name, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )

    return handler


async def session_info(request: web.Request) -> web.Response:
    identity: Identity = request[IDENTITY]
    return json_response(
        {
            "username": identity.username,
            "role": identity.role,
            "method": identity.method,
            "csrf_token": identity.session.csrf_token if identity.session else None,
        }
    )


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


# --------------------------------------------------------------------------- reads


async def list_cameras(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    clients = ctx.clients()
    cameras = [ctx.camera_json(cam, clients) for cam in ctx.gateway.config.cameras]
    return json_response({"cameras": cameras})


def _camera_config(ctx: AdminContext, name: str) -> cfgmod.CameraConfig:
    try:
        return ctx.gateway.config.camera(name)
    except KeyError:
        raise web.HTTPNotFound(reason=f"no camera named {name!r}") from None


async def get_camera(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cam = _camera_config(ctx, request.match_info["camera"])
    return json_response(ctx.camera_json(cam, ctx.clients()))


async def list_clients(request: web.Request) -> web.Response:
    return json_response({"clients": ctx_of(request).clients()})


async def get_inventory(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cameras = []
    for cam in ctx.gateway.config.cameras:
        cameras.append(
            {"camera": cam.name, "vendor": cam.vendor, "inventory": ctx.policy.snapshot(cam.name)}
        )
    return json_response({"cameras": cameras})


async def get_findings(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cameras = []
    totals: dict[str, int] = dict.fromkeys(metrics.SEVERITIES, 0)
    for cam in ctx.gateway.config.cameras:
        status, findings = ctx.camera_findings(cam.name)
        for f in findings:
            if f.get("status") == "open" and f.get("severity") in totals:
                totals[f["severity"]] += 1
        cameras.append({"camera": cam.name, "status": status, "findings": findings})
    return json_response({"open_by_severity": totals, "cameras": cameras})


async def get_egress(request: web.Request) -> web.Response:
    return json_response(ctx_of(request).egress())


def _limit(request: web.Request) -> int:
    """The ``limit`` query parameter of the log endpoints; 400 when out of range."""
    try:
        limit = int(request.query.get("limit", "500"))
    except ValueError:
        raise web.HTTPBadRequest(reason="limit must be an integer") from None
    if not 1 <= limit <= MAX_LOG_LIMIT:
        raise web.HTTPBadRequest(reason=f"limit must be between 1 and {MAX_LOG_LIMIT}")
    return limit


async def get_audit_log(request: web.Request) -> web.Response:
    entries = ctx_of(request).policy.audit_log(request.query.get("camera") or None, _limit(request))
    return json_response({"entries": [e.to_json() for e in entries]})


async def get_admin_log(request: web.Request) -> web.Response:
    entries = ctx_of(request).trail.entries(_limit(request), request.query.get("account") or None)
    return json_response({"entries": [e.to_json() for e in entries]})


async def snapshot(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    camera = request.match_info["camera"]
    stream = request.match_info.get("stream", "main")
    width: int | None = None
    if "width" in request.query:
        try:
            width = int(request.query["width"])
        except ValueError:
            width = -1
        if width not in SNAPSHOT_WIDTHS:
            return error(400, f"width must be one of {', '.join(map(str, SNAPSHOT_WIDTHS))}")
    if ctx.gateway.hub(camera, stream) is None:
        return error(404, f"no stream {camera}/{stream}")
    try:
        jpeg = await ctx.gateway.snapshot(camera, stream, max_width=width)
    except LookupError as exc:
        response = error(503, str(exc))
        response.headers["Retry-After"] = "2"
        return response
    except ValueError as exc:
        return error(502, f"the camera's picture cannot be decoded: {exc}")
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition(ctx_of(request).registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# --------------------------------------------------------------------------- actions


async def reconnect(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["camera"]
    try:
        _camera_config(ctx, name)
    except web.HTTPNotFound:
        _audit(request, "reconnect", "refused: no such camera", target=name[:64])
        raise
    if not ctx.gateway.reconnect(name):
        _audit(request, "reconnect", "refused: camera disabled", target=name)
        return error(409, f"camera {name!r} is disabled")
    _audit(request, "reconnect", target=name)
    return json_response({"camera": name, "reconnecting": True}, 202)


async def _policy_run(request: web.Request, action: str) -> web.Response:
    ctx = ctx_of(request)
    if ctx.policy_lock.locked():
        _audit(request, action, "refused: another run in progress")
        return error(409, "another inventory, audit or enforce run is in progress")
    async with ctx.policy_lock:
        config = ctx.gateway.config
        identity: Identity = request[IDENTITY]
        started = time.monotonic()
        result: Any
        try:
            result = await _run_policy_action(action, config, ctx.store, identity.username)
        except cfgmod.ConfigError as exc:
            _audit(request, action, "refused: policy configuration invalid")
            return error(
                422,
                "the policy configuration is invalid",
                problems=[{"key": k, "message": m} for k, m in exc.problems],
            )
        _audit(request, action, seconds=round(time.monotonic() - started, 2), **_summary(result))
        return json_response(result.to_json())


def _summary(result: Any) -> dict[str, Any]:
    """What a policy run found or changed, for the audit trail."""
    data = result.to_json()
    summary = data.get("summary")
    return {"summary": summary} if isinstance(summary, dict) else {}


async def _run_policy_action(action: str, config: cfgmod.Config, store: Store, user: str) -> Any:
    from gateway.policy import audit, inventory

    if action == "inventory":
        return await inventory.run_inventory(config, store)
    if action == "audit":
        report = await audit.run_audit(config, store)
    else:
        report = await audit.run_enforce(config, store, actor=f"admin:{user}")
    # One log line per change, drift or failure, as the policy loop logs its rounds.
    for camera in report.cameras:
        audit.log_round(camera, auto_enforce=action == "enforce")
    return report


async def run_inventory(request: web.Request) -> web.Response:
    return await _policy_run(request, "inventory")


async def run_audit(request: web.Request) -> web.Response:
    return await _policy_run(request, "audit")


async def run_enforce(request: web.Request) -> web.Response:
    return await _policy_run(request, "enforce")


async def reload_config(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    source = ctx.gateway.config.source
    if not Path(source).is_file():
        return error(409, f"the gateway was not started from a configuration file ({source})")
    async with ctx.reload_lock:
        try:
            config = cfgmod.load(source)
            ctx.gateway.validate(config)
        except cfgmod.ConfigError as exc:
            _audit(request, "reload", "refused: configuration invalid")
            return error(
                422,
                "configuration invalid; nothing changed",
                problems=[{"key": k, "message": m} for k, m in exc.problems],
            )
        try:
            changes = await ctx.gateway.reload(config)
        except ValueError as exc:
            _audit(request, "reload", f"refused: {exc}")
            return error(409, str(exc))
        _audit(request, "reload", changes={k: v for k, v in changes.items() if v})
        return json_response({"changes": changes})


# --------------------------------------------------------------------------- live view


async def live_view(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    camera, stream = request.match_info["camera"], request.match_info["stream"]
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return error(403, "cross-origin WebSocket refused")
    hub: StreamHub | None = ctx.gateway.hub(camera, stream)
    if hub is None:
        return error(404, f"no stream {camera}/{stream}")
    if not await hub.wait_ready(10.0):
        return error(503, f"{camera}/{stream} is not streaming")
    video = next((t for t in hub.tracks if t.is_video), None)
    if video is None or video.params.name not in ("H264", "H265"):
        return error(415, f"{camera}/{stream} has no H.264 or H.265 video")
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
    await ws.prepare(request)
    server = ctx.gateway.config.server
    viewer = LiveViewer(
        hub,
        ws,
        peer=peer_of(request),
        camera=camera,
        stream=stream,
        budget=server.client_send_budget,
        stall_timeout=server.client_stall_timeout,
    )
    ctx.viewers.add(viewer)
    try:
        await viewer.run()
    finally:
        ctx.viewers.discard(viewer)
    return ws


# --------------------------------------------------------------------------- app


# Every route with the least role that may use it (viewer < operator < admin). The API's
# roles are also in openapi.yaml (x-role); tests/test_admin_roles.py checks both agree.
ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/healthz", healthz, PUBLIC),
    ("GET", "/readyz", readyz, PUBLIC),
    ("GET", "/login", login_form, PUBLIC),
    ("POST", "/login", login_form, PUBLIC),
    ("POST", "/logout", logout, "viewer"),
    ("GET", "/", _static_file("index.html", "text/html; charset=utf-8"), "viewer"),
    ("GET", "/static/app.js", _static_file("app.js", "text/javascript; charset=utf-8"), "viewer"),
    ("GET", "/static/style.css", _static_file("style.css", "text/css; charset=utf-8"), "viewer"),
    ("GET", "/metrics", metrics_handler, "viewer"),
    ("GET", "/snapshot/{camera}.jpg", snapshot, "viewer"),
    ("GET", "/snapshot/{camera}/{stream}.jpg", snapshot, "viewer"),
    ("GET", "/api/v1/openapi.yaml", openapi, "viewer"),
    ("GET", "/api/v1/session", session_info, "viewer"),
    ("GET", "/api/v1/cameras", list_cameras, "viewer"),
    ("GET", "/api/v1/cameras/{camera}", get_camera, "viewer"),
    ("POST", "/api/v1/cameras/{camera}/reconnect", reconnect, "operator"),
    ("GET", "/api/v1/clients", list_clients, "viewer"),
    ("GET", "/api/v1/inventory", get_inventory, "viewer"),
    ("POST", "/api/v1/inventory", run_inventory, "operator"),
    ("GET", "/api/v1/findings", get_findings, "viewer"),
    ("POST", "/api/v1/audit", run_audit, "operator"),
    ("POST", "/api/v1/enforce", run_enforce, "admin"),
    ("GET", "/api/v1/audit-log", get_audit_log, "viewer"),
    ("GET", "/api/v1/admin-log", get_admin_log, "operator"),
    ("GET", "/api/v1/egress", get_egress, "viewer"),
    ("POST", "/api/v1/reload", reload_config, "admin"),
    ("GET", "/api/v1/live/{camera}/{stream}", live_view, "viewer"),
]
ROLES: web.AppKey[dict[tuple[str, str], str]] = web.AppKey("roles", dict)


def build_app(ctx: AdminContext, limits: HttpLimits) -> web.Application:
    app = web.Application(
        middlewares=[security_headers, limits.body_deadline(), json_errors, authenticate],
        client_max_size=64 * 1024,
    )
    app[CTX] = ctx
    app[ROLES] = {(method, path): role for method, path, _, role in ROUTES}
    for method, path, handler, _ in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method, path, handler)
    return app
