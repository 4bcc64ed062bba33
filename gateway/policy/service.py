"""The gateway runtime's hook for fleet management: the scheduled policy loop inside ``run``.

``start(gateway)`` is listed in ``gateway.runtime.SERVICE_STARTERS``. With a ``[policy]``
section in the configuration it runs :func:`gateway.policy.audit.policy_loop` (inventory
refresh, drift check, re-enforce when ``auto_enforce``) in a task until the gateway stops;
without one the gateway never talks to the cameras' management APIs. A configuration reload
restarts the loop with the new configuration. Camera failures are per-camera results of a
round and a failed round is logged: nothing here can stop the streams.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.cancellation import cancel_and_wait, wait_for
from gateway.config import Config, ConfigError
from gateway.policy.audit import policy_loop
from gateway.policy.config import parse_policy
from gateway.store import Store
from gateway.view import GatewayView, ReloadHook

log = logging.getLogger(__name__)


class PolicyService:
    """The running policy loop; ``store`` holds its inventory, findings and audit log."""

    def __init__(self, config: Config, reload_hooks: list[ReloadHook] | None = None) -> None:
        self.config = config
        self._reload_hooks = reload_hooks
        self.store = Store.in_state_dir(config.state_dir)
        # Held during each round; the admin API may take it for its own runs.
        self.lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def refresh(self) -> bool:
        """Start the next inventory + drift check now; False when no loop is running."""
        if not self.running:
            return False
        self._wake.set()
        return True

    def launch(self, config: Config) -> None:
        if "policy" not in config.sections:
            log.info("fleet policy loop off (no [policy] section)")
            return
        try:
            policy = parse_policy(config)
        except ConfigError as exc:
            # `check` reports this before start; at run time it must not take streams down.
            log.error(f"fleet policy loop not started: {exc}")
            return
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(
            policy_loop(config, self.store, self._stop, wake=self._wake, lock=self.lock),
            name="policy-loop",
        )
        self._task.add_done_callback(_report_end)
        log.info(
            "fleet policy loop started",
            extra={
                "interval": policy.drift_check_interval,
                "auto_enforce": policy.auto_enforce,
            },
        )

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            # A round in progress finishes (its writes are verified and logged) unless it
            # takes far longer than one camera request may.
            await wait_for(asyncio.shield(task), 30.0)
        except TimeoutError:
            await cancel_and_wait(task)

    async def reload(self, config: Config) -> None:
        await self._halt()
        if Path(config.state_dir) != Path(self.config.state_dir):
            self.store.close()
            self.store = Store.in_state_dir(config.state_dir)
        self.config = config
        self.launch(config)

    async def close(self) -> None:
        if self._reload_hooks is not None and self.reload in self._reload_hooks:
            self._reload_hooks.remove(self.reload)
        await self._halt()
        self.store.close()


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("fleet policy loop ended unexpectedly", exc_info=error)


async def start(gateway: GatewayView) -> PolicyService:
    """Start the policy loop for the whole site (``gateway.site_config``: every camera, also
    those other worker processes stream) and follow its reloads."""
    service = PolicyService(gateway.site_config)
    service.launch(gateway.site_config)
    gateway.site_reload_hooks.append(service.reload)
    return service
