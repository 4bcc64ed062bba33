"""The gateway runtime's hook for the admin API: ``start(gateway)`` is listed in
``gateway.runtime.SERVICE_STARTERS``.

With no ``[admin]`` section nothing is started. Otherwise the admin app (API, dashboard,
live view, snapshots, ``/metrics``) listens on ``admin.bind:admin.port``, over HTTPS unless
``tls = false`` (:mod:`gateway.admin.tls`), and follows configuration reloads: new or changed
accounts apply at once (and end those accounts' dashboard sessions); a renewed certificate
(new files, or new ``tls_cert``/``tls_key`` paths) is loaded on reload and also noticed by a
check of the files every :data:`CERT_CHECK_INTERVAL` seconds. A new bind address or port,
or switching TLS on or off, needs a restart.

With several worker processes (``[server] workers``), worker 0 listens on the admin port for
the whole gateway (:mod:`gateway.admin.sitewide`); every other worker serves its admin app
only to worker 0, on a Unix socket (:mod:`gateway.admin.siblings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from aiohttp import web

from gateway.admin import sitewide, tls
from gateway.admin.api import AdminContext, build_app
from gateway.admin.auth import AdminAuth
from gateway.admin.siblings import INTERNAL_TOKEN, Siblings, internal_authenticate
from gateway.cancellation import cancel_and_wait
from gateway.config import AdminConfig, Config
from gateway.limits import CappedSite, HttpLimits
from gateway.store import Store
from gateway.view import GatewayView
from gateway.workers import Shard, internal_token

log = logging.getLogger("gateway.admin")
CERT_CHECK_INTERVAL = 60.0


class NoAdmin:
    """Returned when the configuration has no [admin] section."""

    port = 0

    async def close(self) -> None:
        return None


class AdminService:
    def __init__(
        self,
        ctx: AdminContext,
        runner: web.AppRunner,
        port: int,
        server_tls: tls.ServerTLS | None,
        *,
        internal: bool = False,
    ) -> None:
        self.ctx = ctx
        self.internal = internal
        self.runner = runner
        self.port = port
        self.tls = server_tls
        self._watch: asyncio.Task[None] | None = None
        if server_tls is not None:
            self._watch = asyncio.create_task(self._watch_certificate(), name="admin-cert-watch")

    async def reload(self, config: Config) -> None:
        admin = config.admin
        if admin is None:
            log.warning("[admin] removed from the configuration; it stays up until restart")
            return
        self.ctx.config_loaded_at = time.time()
        if self.ctx.auth.set_accounts(admin.accounts()):
            log.info("admin accounts changed; sessions of changed accounts ended")
        if self.internal:
            return  # no listener of its own: worker 0's TLS settings apply
        if self.tls is not None and admin.tls:
            try:
                cert, key = await asyncio.to_thread(_server_files, admin, config.state_dir)
            except (OSError, ValueError) as exc:
                log.error("admin certificate unavailable", extra={"error": str(exc)})
                return
            self.tls.refresh(cert, key)
        elif (self.tls is not None) != admin.tls:
            log.warning("[admin] tls changed; it applies after a restart")

    async def _watch_certificate(self) -> None:
        assert self.tls is not None
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            self.tls.refresh()

    async def close(self) -> None:
        if self._watch is not None:
            await cancel_and_wait(self._watch)
        for viewer in list(self.ctx.viewers):
            viewer.close_for("gateway shutting down")
        if self.ctx.siblings is not None:
            await self.ctx.siblings.close()
        await self.runner.cleanup()
        self.ctx.store.close()


def _server_files(admin: AdminConfig, state_dir: str) -> tuple[Path, Path]:
    return tls.server_files(admin.tls_cert, admin.tls_key, state_dir, admin.bind)


async def start(gateway: GatewayView) -> AdminService | NoAdmin:
    """Serve the admin app for ``gateway``; OSError names the address it could not bind."""
    config = gateway.config
    admin = config.admin
    if admin is None:
        return NoAdmin()
    shard = gateway.shard
    if shard is not None and shard.index:
        return await _start_internal(gateway, shard)
    auth = AdminAuth(admin.accounts())
    server_tls = None
    if admin.tls:
        try:
            cert, key = await asyncio.to_thread(_server_files, admin, config.state_dir)
            server_tls = tls.ServerTLS(cert, key, "admin")
        except (OSError, ValueError) as exc:
            raise OSError(f"admin: no usable TLS certificate: {exc}") from exc
    else:
        log.warning("admin API over plain HTTP (tls = false): passwords only from loopback")
    store = Store.in_state_dir(config.state_dir)
    ctx = AdminContext(gateway, auth, store)
    routes = None
    if shard is not None and shard.count > 1:
        ctx.siblings = Siblings(shard, internal_token(), lambda: gateway.site_config)
        routes = sitewide.public_routes()
    limits = HttpLimits.for_listener("admin", config.server, gateway.refusals)
    runner = web.AppRunner(
        build_app(ctx, limits, routes),
        access_log=None,
        handle_signals=False,
        **limits.runner_options(),
    )
    await runner.setup()
    site = CappedSite(
        runner,
        admin.bind,
        admin.port,
        limits,
        reuse_address=True,
        ssl_context=server_tls.context if server_tls else None,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        store.close()
        raise OSError(
            exc.errno,
            f"admin: cannot listen on {admin.bind}:{admin.port}: {exc.strerror or exc}",
        ) from exc
    port = int(runner.addresses[0][1]) if runner.addresses else admin.port
    service = AdminService(ctx, runner, port, server_tls)
    gateway.reload_hooks.append(service.reload)
    log.info(
        "admin API listening",
        extra={
            "address": admin.bind,
            "port": port,
            "scheme": "https" if server_tls else "http",
            **({"fingerprint": server_tls.fingerprint} if server_tls else {}),
        },
    )
    return service


async def _start_internal(gateway: GatewayView, shard: Shard) -> AdminService:
    """Serve this worker's admin app to worker 0 only (gateway.admin.siblings)."""
    config = gateway.config
    assert config.admin is not None
    store = Store.in_state_dir(config.state_dir)
    ctx = AdminContext(gateway, AdminAuth(config.admin.accounts()), store)
    limits = HttpLimits.for_listener("admin", config.server, gateway.refusals)
    app = build_app(ctx, limits, sitewide.internal_routes(), internal_authenticate)
    app[INTERNAL_TOKEN] = internal_token()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **limits.runner_options())
    await runner.setup()
    path = shard.admin_socket_path(shard.index)
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
    site = web.UnixSite(runner, path)
    try:
        await site.start()
        Path(path).chmod(0o600)
    except OSError as exc:
        await runner.cleanup()
        store.close()
        raise OSError(exc.errno, f"admin: cannot listen on {path}: {exc.strerror or exc}") from exc
    service = AdminService(ctx, runner, 0, None, internal=True)
    gateway.reload_hooks.append(service.reload)
    log.info("admin API served through worker 0", extra={"worker": shard.index, "path": path})
    return service
