"""The admin HTTP application: JSON API (documented in ``openapi.yaml``), dashboard, live
view, snapshots and ``/metrics``: the resources and :data:`ROUTES`, each with the least role
that may use it (the same as ``x-role`` in ``openapi.yaml``).

Every route is authenticated except ``/healthz``, ``/readyz`` (they reveal nothing but "ok")
and the login form; :mod:`gateway.admin.access` does that, checks the role and records
sign-ins and every state-changing request in the audit trail (:mod:`gateway.admin.trail`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import config as cfgmod
from gateway.admin import metrics
from gateway.admin.access import (
    AUTH,
    IDENTITY,
    PUBLIC,
    ROLES,
    STATIC,
    TRAIL,
    Handler,
    audit,
    authenticate,
    error,
    json_response,
    login_form,
    logout,
    peer_of,
    security_headers,
)
from gateway.admin.auth import AdminAuth, Identity
from gateway.admin.live import LiveViewer
from gateway.admin.trail import AdminTrail
from gateway.limits import HttpLimits
from gateway.media.fmp4 import video_config
from gateway.media.hub import StreamHub
from gateway.onvif.core import iso_time, url_host
from gateway.rtsp.server import ClientInfo
from gateway.store import Store
from gateway.view import GatewayView

if TYPE_CHECKING:  # at run time the policy modules are imported where they are used
    from gateway.admin.siblings import Siblings
    from gateway.policy.audit import AuditReport
    from gateway.policy.db import PolicyStore
    from gateway.policy.inventory import InventoryResult

log = logging.getLogger("gateway.admin")

OPENAPI = Path(str(resources.files("gateway.admin") / "openapi.yaml"))
# Snapshot widths the dashboard asks for; any other width is refused so the cache (one
# decode per stream and width) stays small.
SNAPSHOT_WIDTHS = (160, 320, 480, 640, 960, 1280, 1920)
MAX_LOG_LIMIT = 10_000


class AdminContext:
    """Everything the handlers share."""

    def __init__(self, gateway: GatewayView, auth: AdminAuth, store: Store) -> None:
        self.gateway = gateway
        self.auth = auth
        self.store = store
        self.trail = AdminTrail(store)
        self._policy: PolicyStore | None = None
        self.viewers: set[LiveViewer] = set()
        self.policy_lock = asyncio.Lock()
        self.reload_lock = asyncio.Lock()
        self.config_loaded_at = time.time()
        # Worker 0's link to the other workers' admin APIs, when there are several
        # (gateway.admin.siblings); None otherwise.
        self.siblings: Siblings | None = None
        self.registry = metrics.build_registry(
            metrics.MetricSources(
                streams=self.gateway.stream_samples,
                client_kinds=self.client_kinds,
                findings=self.findings_summary,
                egress=self.egress,
                camera_count=lambda: len(self.gateway.site_config.cameras),
                config_loaded_at=lambda: self.config_loaded_at,
                refusals=lambda: dict(self.gateway.refusals.totals),
                auth_failures=self.auth_failures,
                ingest_fallbacks=lambda: dict(self.gateway.ingest_fallbacks),
            )
        )

    @property
    def policy(self) -> PolicyStore:
        if self._policy is None:
            from gateway.policy.db import PolicyStore

            self._policy = PolicyStore(self.store)
        return self._policy

    # ------------------------------------------------------------------ views of the state

    def rtsp_clients(self) -> list[tuple[str, str, ClientInfo]]:
        """Each RTSP client session with the camera and stream it watches (a session of a
        stream no longer running here, after a reload, is left out)."""
        rtsp = self.gateway.rtsp
        if rtsp is None:
            return []
        out = []
        for client in rtsp.clients():
            camera, _, stream = client.source.key.partition("/")
            if self.gateway.hub(camera, stream) is client.source:
                out.append((camera, stream, client))
        return out

    def clients(self) -> list[dict[str, Any]]:
        """Every client of every stream, as ``/api/v1/clients`` shows them."""
        out: list[dict[str, Any]] = [
            {
                "camera": camera,
                "stream": stream,
                "kind": "rtsp",
                "peer": client.peer,
                "transport": client.transport,
                "playing": client.playing,
                "connected_seconds": client.connected_seconds,
                "frames_sent": client.frames_sent,
                "bytes_sent": client.bytes_sent,
                "dropped_frames": client.dropped_frames,
            }
            for camera, stream, client in self.rtsp_clients()
        ]
        for viewer in list(self.viewers):
            out.append({"camera": viewer.camera, "stream": viewer.stream, **viewer.to_json()})
        return out

    def client_kinds(self) -> dict[tuple[str, str], dict[str, int]]:
        """Clients per (camera, stream), by kind: ``rtsp`` and ``live_view``."""
        kinds: dict[tuple[str, str], dict[str, int]] = {}
        watched = [(camera, stream, "rtsp") for camera, stream, _ in self.rtsp_clients()]
        watched += [(v.camera, v.stream, "live_view") for v in list(self.viewers)]
        for camera, stream, kind in watched:
            kinds.setdefault((camera, stream), {"rtsp": 0, "live_view": 0})[kind] += 1
        return kinds

    def stream_json(
        self, camera: str, stream: str, clients: list[dict[str, Any]]
    ) -> dict[str, Any]:
        status = self.gateway.stream_status(camera, stream)
        hub = self.gateway.hub(camera, stream)
        if status is None or hub is None:
            return disabled_stream_json(camera, stream)
        video = next((t for t in hub.tracks if t.is_video), None)
        mime = mse_mime(video.params.name, video.params.parameter_sets) if video else None
        viewers = [c for c in clients if c["camera"] == camera and c["stream"] == stream]
        live = status.state == "live"
        return {
            "stream": stream,
            "path": status.path,
            "state": status.state,
            "should_stream": status.should_stream,
            "connected": live,
            "down_since": iso_time(status.down_since) if status.down_since else None,
            "last_error": status.last_error or None,
            "codec": status.codec,
            "profile": status.profile or None,
            "width": status.width,
            "height": status.height,
            # Rates are measured over the last seconds of frames: only a live stream has
            # any (a down one would show its last figures as if they were current).
            "fps": status.fps if live else None,
            "bitrate": status.bitrate if live else None,
            "gop_seconds": status.gop_seconds if live else None,
            "audio_codec": status.audio_codec,
            "upstream_sessions": status.upstream_sessions,
            "reconnects": status.reconnects,
            "frames_in": status.frames_in,
            "bytes_in": status.bytes_in,
            "frames_out": hub.stats.frames_out,
            "bytes_out": hub.stats.bytes_out,
            "dropped_frames": status.dropped_frames,
            "slow_disconnects": status.slow_disconnects,
            "ingest": status.ingest or None,
            "ingest_fallback": ingest_fallback_json(
                status.ingest_fallback,
                status.ingest_fallback_detail,
                status.ingest_fallback_since,
            ),
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
        self, cam: cfgmod.CameraConfig, clients: list[dict[str, Any]], request_host: str = ""
    ) -> dict[str, Any]:
        """``request_host``: the host the admin API was asked by, named in the VMS-side
        URLs when the gateway listens on every address and advertises none."""
        if cam.enabled:
            streams = [self.stream_json(cam.name, s, clients) for s in cam.stream_names()]
        else:
            streams = [disabled_stream_json(cam.name, s) for s in cam.stream_names()]
        index = next(i for i, c in enumerate(self.gateway.config.cameras) if c.name == cam.name)
        server = self.gateway.config.server
        onvif_port = cam.onvif_port or server.onvif_base_port + index
        host = server.advertise_host or server.bind
        if host in ("0.0.0.0", "::") and request_host:
            host = request_host
        host = url_host(host)
        return {
            "name": cam.name,
            # The worker process that ingests and serves the camera ([server] workers).
            "worker": self.gateway.worker[0],
            "vendor": cam.vendor,
            "host": cam.host,
            "enabled": cam.enabled,
            "on_demand": cam.on_demand,
            "onvif_port": onvif_port,
            # What a VMS is given (never the camera's own addresses or credentials).
            "rtsp_urls": {
                s: f"rtsp://{host}:{server.rtsp_port}/{cam.name}/{s}" for s in cam.stream_names()
            },
            "onvif_url": f"http://{host}:{onvif_port}/onvif/device_service",
            # The main stream's: what the camera is said to be doing.
            "state": streams[0]["state"] if streams else "disabled",
            "connected": bool(streams) and streams[0]["connected"],
            "streams": streams,
        }

    def auth_failures(self) -> dict[str, int]:
        """Refused credentials per service (stale nonces are not refusals): RTSP's from
        the refusal counters (docs/security.md), the admin API's own."""
        refused = self.gateway.refusals.totals
        return {
            "rtsp": refused.get(("rtsp", "auth_failure"), 0),
            "admin": self.auth.failures_total,
        }

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

    # Findings and the egress report are site-wide (the policy loop and the egress services
    # run on worker 0 of several), read from the state database for every camera.
    def findings_summary(self) -> list[tuple[str, str, dict[str, int]]]:
        out = []
        for cam in self.gateway.site_config.cameras:
            status, findings = self.camera_findings(cam.name)
            by_severity: dict[str, int] = {}
            for f in findings:
                if f.get("status") == "open":
                    by_severity[f["severity"]] = by_severity.get(f["severity"], 0) + 1
            out.append((cam.name, status, by_severity))
        return out

    def egress(self) -> dict[str, Any]:
        from gateway.egress import egress_report

        return egress_report(self.gateway.site_config, self.store)


def ingest_fallback_json(
    reason: str | None, detail: str, since: float | None
) -> dict[str, Any] | None:
    """Why a stream runs PyAV under ingest = "auto" (None while it runs as configured)."""
    if reason is None:
        return None
    return {"reason": reason, "detail": detail, "since": iso_time(since) if since else None}


def disabled_stream_json(camera: str, stream: str) -> dict[str, Any]:
    """A stream of a camera with ``enabled = false``, in the form of ``stream_json``."""
    return {
        "stream": stream,
        "path": f"/{camera}/{stream}",
        "state": "disabled",
        "should_stream": False,
        "connected": False,
        "down_since": None,
        "last_error": None,
        "codec": None,
        "profile": None,
        "width": 0,
        "height": 0,
        "fps": None,
        "bitrate": None,
        "gop_seconds": None,
        "audio_codec": None,
        "upstream_sessions": 0,
        "reconnects": 0,
        "frames_in": 0,
        "bytes_in": 0,
        "frames_out": 0,
        "bytes_out": 0,
        "dropped_frames": 0,
        "slow_disconnects": 0,
        "ingest": None,
        "ingest_fallback": None,
        "clients": 0,
        "viewers": [],
        "picture": False,
        "snapshot_url": None,
        "live_url": None,
        "mse_mime": None,
    }


@functools.lru_cache(maxsize=256)
def mse_mime(codec: str, parameter_sets: tuple[bytes, ...]) -> str | None:
    """The MSE type of a stream, from its parameter sets; None when not derivable."""
    try:
        return video_config(codec, parameter_sets).mime_type
    except ValueError:
        return None


# --------------------------------------------------------------------------- helpers


def ctx_of(request: web.Request) -> AdminContext:
    return request.app[CTX]


CTX: web.AppKey[AdminContext] = web.AppKey("ctx", AdminContext)


# --------------------------------------------------------------------------- middlewares


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


# --------------------------------------------------------------------------- public


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rtsp = ctx_of(request).gateway.rtsp
    if rtsp is None or not rtsp.port:
        return json_response({"status": "starting"}, 503)
    return json_response({"status": "ok"})


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
    host = request.url.host or ""
    cameras = [ctx.camera_json(cam, clients, host) for cam in ctx.gateway.config.cameras]
    # This process's cameras; worker 0 adds the other workers' (gateway.admin.sitewide).
    index, count = ctx.gateway.worker
    return json_response(
        {"cameras": cameras, "worker": {"index": index, "count": count}, "unanswered": []}
    )


def _camera_config(ctx: AdminContext, name: str) -> cfgmod.CameraConfig:
    try:
        return ctx.gateway.config.camera(name)
    except KeyError:
        raise web.HTTPNotFound(reason=f"no camera named {name!r}") from None


async def get_camera(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cam = _camera_config(ctx, request.match_info["camera"])
    return json_response(ctx.camera_json(cam, ctx.clients(), request.url.host or ""))


async def list_clients(request: web.Request) -> web.Response:
    return json_response({"clients": ctx_of(request).clients(), "unanswered": []})


async def get_inventory(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cameras = []
    for cam in ctx.gateway.site_config.cameras:
        cameras.append(
            {"camera": cam.name, "vendor": cam.vendor, "inventory": ctx.policy.snapshot(cam.name)}
        )
    return json_response({"cameras": cameras})


async def get_findings(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cameras = []
    totals: dict[str, int] = dict.fromkeys(metrics.SEVERITIES, 0)
    for cam in ctx.gateway.site_config.cameras:
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


# Keys of the raw subsystem sections ([policy], [onvif], ...) whose values are not shown.
SECRET_KEY = re.compile(r"pass|secret|token|credential|psk|community", re.IGNORECASE)
REDACTED = "********"


def redacted(value: Any, key: str = "") -> Any:
    """``value`` as JSON with every secret replaced: :class:`~gateway.config.Secret` values
    (every password of the typed sections) and, in the raw subsystem sections, the values of
    keys that name a secret."""
    if isinstance(value, cfgmod.Secret):
        return REDACTED if value else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: redacted(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            str(k): REDACTED if SECRET_KEY.search(str(k)) and v else redacted(v, str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(v, key) for v in value]
    return value


async def get_config(request: web.Request) -> web.Response:
    config = ctx_of(request).gateway.site_config
    return json_response(
        {
            "source": config.source,
            "loaded_at": ctx_of(request).config_loaded_at,
            "config": redacted(config),
        }
    )


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
        audit(request, "reconnect", "refused: no such camera", target=name[:64])
        raise
    if not ctx.gateway.reconnect(name):
        audit(request, "reconnect", "refused: camera disabled", target=name)
        return error(409, f"camera {name!r} is disabled")
    audit(request, "reconnect", target=name)
    return json_response({"camera": name, "reconnecting": True}, 202)


async def _run_options(request: web.Request, action: str) -> tuple[bool, list[str] | None]:
    """``{"dry_run": bool, "cameras": [names]}`` from the body (all optional; an empty
    body runs on every camera); 400 for anything else."""
    # body_exists, not can_read_body: the body deadline (gateway.limits) has read it already.
    if not request.body_exists:
        return False, None
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="the body must be JSON") from None
    if not isinstance(body, dict) or set(body) - {"dry_run", "cameras"}:
        raise web.HTTPBadRequest(reason='the body may hold "dry_run" and "cameras" only')
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool) or (dry_run and action != "enforce"):
        raise web.HTTPBadRequest(reason="dry_run must be true or false (enforce only)")
    cameras = body.get("cameras")
    if cameras is None:
        return dry_run, None
    known = {c.name for c in ctx_of(request).gateway.site_config.cameras}
    if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
        raise web.HTTPBadRequest(reason="cameras must be a list of camera names")
    unknown = sorted(set(cameras) - known)
    if unknown:
        raise web.HTTPNotFound(reason=f"no camera named {unknown[0][:64]!r}")
    return dry_run, cameras


async def _policy_run(request: web.Request, action: str) -> web.Response:
    ctx = ctx_of(request)
    dry_run, cameras = (
        (False, None) if action == "inventory" else await _run_options(request, action)
    )
    scope: dict[str, Any] = {}
    if dry_run:
        scope["dry_run"] = True
    if cameras is not None:
        scope["cameras"] = ",".join(cameras)
    if ctx.policy_lock.locked():
        audit(request, action, "refused: another run in progress")
        return error(409, "another inventory, audit or enforce run is in progress")
    async with ctx.policy_lock:
        # The site's cameras: policy runs are site-wide (worker 0 of several runs them).
        config = ctx.gateway.site_config
        identity: Identity = request[IDENTITY]
        started = time.monotonic()
        try:
            result = await _run_policy_action(
                action, config, ctx.store, identity.username, dry_run=dry_run, cameras=cameras
            )
        except cfgmod.ConfigError as exc:
            audit(request, action, "refused: policy configuration invalid")
            return error(
                422,
                "the policy configuration is invalid",
                problems=[{"key": k, "message": m} for k, m in exc.problems],
            )
        seconds = round(time.monotonic() - started, 2)
        audit(request, action, seconds=seconds, **scope, **_summary(result))
        return json_response(result.to_json())


def _summary(result: InventoryResult | AuditReport) -> dict[str, Any]:
    """What a policy run found or changed, for the audit trail."""
    data = result.to_json()
    summary = data.get("summary")
    return {"summary": summary} if isinstance(summary, dict) else {}


async def _run_policy_action(
    action: str,
    config: cfgmod.Config,
    store: Store,
    user: str,
    *,
    dry_run: bool = False,
    cameras: list[str] | None = None,
) -> InventoryResult | AuditReport:
    from gateway.policy import audit, inventory

    if action == "inventory":
        return await inventory.run_inventory(config, store)
    if action == "audit":
        report = await audit.run_audit(config, store, cameras=cameras)
    else:
        report = await audit.run_enforce(
            config, store, actor=f"admin:{user}", cameras=cameras, dry_run=dry_run
        )
    if dry_run:
        return report  # nothing changed, nothing to log
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
    status, body, refusal = await reload_here(ctx)
    if status == 200 and ctx.siblings is not None:
        # Every other worker reloads the same file; one entry in the trail for all.
        changes: dict[str, list[str]] = body["changes"]
        for answer in await ctx.siblings.reload_all(request):
            if answer.error is not None:
                changes["failed"].append(f"worker {answer.worker}: {answer.error}")
                continue
            for key, names in answer.body["changes"].items():
                changes.setdefault(key, []).extend(names)
    if refusal is not None:
        audit(request, "reload", refusal)
    elif status == 200:
        audit(request, "reload", changes={k: v for k, v in body["changes"].items() if v})
    return json_response(body, status)


async def reload_here(ctx: AdminContext) -> tuple[int, dict[str, Any], str | None]:
    """Reload this process from its configuration file: the status and body to answer, and
    why it was refused (for the audit trail), else None."""
    source = ctx.gateway.config.source
    if not Path(source).is_file():
        return (
            409,
            {"error": f"the gateway was not started from a configuration file ({source})"},
            None,
        )
    async with ctx.reload_lock:
        try:
            config = cfgmod.load(source)
            ctx.gateway.validate(config)
        except cfgmod.ConfigError as exc:
            problems = [{"key": k, "message": m} for k, m in exc.problems]
            body = {"error": "configuration invalid; nothing changed", "problems": problems}
            return 422, body, "refused: configuration invalid"
        try:
            changes = await ctx.gateway.reload(config)
        except ValueError as exc:
            return 409, {"error": str(exc)}, f"refused: {exc}"
        return 200, {"changes": changes}, None


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
    ("GET", "/api/v1/config", get_config, "admin"),
    ("GET", "/api/v1/live/{camera}/{stream}", live_view, "viewer"),
]


Route = tuple[str, str, Handler, str]


def build_app(
    ctx: AdminContext,
    limits: HttpLimits,
    routes: list[Route] | None = None,
    door: Middleware | None = None,
) -> web.Application:
    """The admin app with ``routes`` (default :data:`ROUTES`), every request through
    ``door`` (default :func:`~gateway.admin.access.authenticate`; the other workers' internal
    app has its own, :func:`gateway.admin.siblings.internal_authenticate`)."""
    routes = ROUTES if routes is None else routes
    app = web.Application(
        middlewares=[security_headers, limits.body_deadline(), json_errors, door or authenticate],
        client_max_size=64 * 1024,
    )
    app[CTX] = ctx
    app[AUTH] = ctx.auth
    app[TRAIL] = ctx.trail
    app[ROLES] = {(method, path): role for method, path, _, role in routes}
    for method, path, handler, _ in routes:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method, path, handler)
    return app
