"""The gateway runtime's hook for the admin API: ``start(gateway)`` is listed in
``gateway.runtime.SERVICE_STARTERS``.

With no ``[admin]`` section nothing is started. Otherwise the admin app (API, dashboard,
live view, snapshots, ``/metrics``) listens on ``admin.bind:admin.port`` and follows
configuration reloads: new credentials apply at once (and end dashboard sessions); a new
bind address or port needs a restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway.admin.api import AdminContext, build_app
from gateway.admin.auth import AdminAuth
from gateway.config import Config
from gateway.store import Store

log = logging.getLogger("gateway.admin")


class NoAdmin:
    """Returned when the configuration has no [admin] section."""

    port = 0

    async def close(self) -> None:
        return None


class AdminService:
    def __init__(self, ctx: AdminContext, runner: web.AppRunner, port: int) -> None:
        self.ctx = ctx
        self.runner = runner
        self.port = port

    async def reload(self, config: Config) -> None:
        admin = config.admin
        if admin is None:
            log.warning("[admin] removed from the configuration; it stays up until restart")
            return
        self.ctx.config_loaded_at = time.time()
        auth = self.ctx.auth
        if admin.username != auth.username or not auth.password_matches(
            admin.username, admin.password.reveal()
        ):
            auth.set_credentials(admin.username, admin.password.reveal())
            log.info("admin credentials changed; dashboard sessions ended")

    async def close(self) -> None:
        for viewer in list(self.ctx.viewers):
            viewer.close_for("gateway shutting down")
        await self.runner.cleanup()
        self.ctx.store.close()


async def start(gateway: Any) -> AdminService | NoAdmin:
    """Serve the admin app for ``gateway``; OSError names the address it could not bind."""
    config: Config = gateway.config
    admin = config.admin
    if admin is None:
        return NoAdmin()
    auth = AdminAuth(admin.username, admin.password.reveal())
    store = Store.in_state_dir(config.state_dir)
    ctx = AdminContext(gateway, auth, store)
    runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, admin.bind, admin.port, reuse_address=True)
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
    service = AdminService(ctx, runner, port)
    gateway.reload_hooks.append(service.reload)
    log.info("admin API listening", extra={"address": admin.bind, "port": port})
    return service
