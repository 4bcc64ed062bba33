"""One admin address for a gateway of several worker processes (``[server] workers``).

Worker 0's admin app (:func:`public_routes`) is :data:`gateway.admin.api.ROUTES` with the
handlers that depend on which process runs a camera replaced:

- a camera's own routes (its JSON, reconnect, snapshots, live view) run on the camera's
  owner, passed there through :class:`~gateway.admin.siblings.Siblings`;
- the lists (cameras, clients) and ``/metrics`` are every worker's, merged; a worker that
  does not answer in time is named under ``unanswered`` (and ``onvif_gateway_worker_up``
  is 0 for it) while the others' answer is given;
- reload runs on every worker (:func:`gateway.admin.api.reload_config`); policy runs,
  inventory, findings, egress and the audit logs are site-wide and stay on worker 0.

The other workers' internal app (:func:`internal_routes`) is ROUTES as they are (each
answers for its own cameras), plus the reload a worker runs when worker 0 asks.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin import api, metrics
from gateway.admin.access import Handler, json_response
from gateway.admin.siblings import SNAPSHOT_TIMEOUT, Answer, Siblings


def _siblings(request: web.Request) -> Siblings:
    siblings = api.ctx_of(request).siblings
    assert siblings is not None
    return siblings


def _unanswered(siblings: Siblings, answers: list[Answer]) -> list[dict[str, Any]]:
    return [
        {"worker": a.worker, "error": a.error, "cameras": siblings.cameras_of(a.worker)}
        for a in answers
        if a.error is not None
    ]


def routed(handler: Handler, timeout: float | None = None) -> Handler:
    """``handler`` on the worker owning the route's camera (here when it is worker 0's, or
    no worker's: the handler then says there is no such camera)."""

    async def route(request: web.Request) -> web.StreamResponse:
        siblings = _siblings(request)
        owner = siblings.owner(request.match_info["camera"])
        if not owner:
            return await handler(request)
        if handler is api.live_view:
            return await siblings.live_view(request, owner)
        if timeout is None:
            return await siblings.forward(request, owner)
        return await siblings.forward(request, owner, timeout)

    return route


async def list_cameras(request: web.Request) -> web.Response:
    siblings = _siblings(request)
    ctx = api.ctx_of(request)
    answers = await siblings.ask_all(request, "/api/v1/cameras")
    clients = ctx.clients()
    host = request.url.host or ""
    cameras = [ctx.camera_json(cam, clients, host) for cam in ctx.gateway.config.cameras]
    for answer in answers:
        if answer.error is None:
            cameras += answer.body["cameras"]
    order = {cam.name: k for k, cam in enumerate(ctx.gateway.site_config.cameras)}
    cameras.sort(key=lambda cam: order.get(cam["name"], len(order)))
    return json_response(
        {
            "cameras": cameras,
            "worker": {"index": 0, "count": siblings.shard.count},
            "unanswered": _unanswered(siblings, answers),
        }
    )


async def list_clients(request: web.Request) -> web.Response:
    siblings = _siblings(request)
    answers = await siblings.ask_all(request, "/api/v1/clients")
    clients = api.ctx_of(request).clients()
    for answer in answers:
        if answer.error is None:
            clients += answer.body["clients"]
    return json_response({"clients": clients, "unanswered": _unanswered(siblings, answers)})


async def metrics_handler(request: web.Request) -> web.Response:
    siblings = _siblings(request)
    answers = await siblings.ask_all(request, "/metrics", text=True)
    own, content_type = metrics.exposition(api.ctx_of(request).registry)
    texts: dict[int, str | None] = {0: own.decode()}
    texts.update({a.worker: a.body if a.error is None else None for a in answers})
    response = web.Response(body=metrics.merge_workers(texts))
    response.headers["Content-Type"] = content_type
    return response


# Worker 0's replacements for handlers of api.ROUTES.
PUBLIC_HANDLERS: dict[Handler, Handler] = {
    api.list_cameras: list_cameras,
    api.list_clients: list_clients,
    api.metrics_handler: metrics_handler,
    api.get_camera: routed(api.get_camera),
    api.reconnect: routed(api.reconnect),
    api.snapshot: routed(api.snapshot, SNAPSHOT_TIMEOUT),
    api.live_view: routed(api.live_view),
}


def public_routes() -> list[api.Route]:
    """Worker 0's routes when there are several workers."""
    return [(m, p, PUBLIC_HANDLERS.get(h, h), role) for m, p, h, role in api.ROUTES]


async def internal_reload(request: web.Request) -> web.Response:
    """Reload this worker (worker 0 asked; it records the reload in the audit trail)."""
    status, body, _ = await api.reload_here(api.ctx_of(request))
    return json_response(body, status)


def internal_routes() -> list[api.Route]:
    """The app another worker serves to worker 0."""
    return [*api.ROUTES, ("POST", "/internal/reload", internal_reload, "admin")]
