"""The gateway runtime's hook for egress: ``start(gateway)`` is listed in
``gateway.runtime.SERVICE_STARTERS`` and runs the DNS sinkhole, NTP server and counter
poller for as long as the gateway runs, following configuration reloads."""

from __future__ import annotations

from gateway.config import Config
from gateway.egress.services import EgressServices, start_egress_services
from gateway.store import Store
from gateway.view import GatewayView


class RuntimeEgress:
    def __init__(self, services: EgressServices, store: Store) -> None:
        self.services = services
        self.store = store

    async def reload(self, config: Config) -> None:
        self.services.update_config(config)

    async def close(self) -> None:
        await self.services.close()
        self.store.close()


async def start(gateway: GatewayView) -> RuntimeEgress:
    """Start the egress services for the whole site (``gateway.site_config``); OSError (e.g.
    port 53 taken) names the address and port that could not be bound."""
    config: Config = gateway.site_config
    store = Store.in_state_dir(config.state_dir)
    try:
        services = await start_egress_services(config, store)
    except OSError as exc:
        store.close()
        address = config.camera_network.address if config.camera_network else "?"
        raise OSError(
            exc.errno, f"egress: cannot serve DNS/NTP on {address}: {exc.strerror or exc}"
        ) from exc
    runtime = RuntimeEgress(services, store)
    gateway.site_reload_hooks.append(runtime.reload)
    return runtime
