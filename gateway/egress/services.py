"""The egress services the gateway runs: DNS sinkhole and NTP server on the camera-side
address, and a poller that folds the nftables counters into the store."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.cancellation import cancel_and_wait
from gateway.config import Config
from gateway.egress import nft as nftables
from gateway.egress.dns import DnsSinkholeServer, SinkholeResolver
from gateway.egress.ntp import NTP_PORT, NtpServer
from gateway.egress.report import refresh
from gateway.egress.store import open_egress, save_dns
from gateway.store import Store

log = logging.getLogger("gateway.egress")


class EgressServices:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        dns: DnsSinkholeServer | None,
        ntp: NtpServer | None,
        flush_interval: float,
        poll_interval: float,
        nft: nftables.Nft,
    ) -> None:
        self.config = config
        self.store = store
        self.dns = dns
        self.ntp = ntp
        self.nft = nft
        self.flush_interval = flush_interval
        self.poll_interval = poll_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_failed = False

    def _start_loops(self) -> None:
        if self.dns is not None and self.flush_interval > 0:
            self._tasks.append(asyncio.create_task(self._every(self.flush_interval, self.flush)))
        if self.poll_interval > 0:
            self._tasks.append(asyncio.create_task(self._every(self.poll_interval, self.poll)))

    async def _every(self, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:
                log.exception("egress background job failed")

    def update_config(self, config: Config) -> None:
        """Follow a configuration reload: camera names and local DNS answers change at once;
        a changed camera-side address or service switch needs a restart."""
        self.config = config
        if self.dns is not None and config.camera_network is not None:
            self.dns.resolver.update(
                local=config.camera_network.dns_local, cameras=_camera_addresses(config)
            )

    async def flush(self) -> int:
        """Write the DNS attempts recorded since the last flush to the store."""
        if self.dns is None:
            return 0
        resolver = self.dns.resolver
        attempts = resolver.take_pending()
        if resolver.overflow:
            log.warning(
                "dns sinkhole saw more distinct queries than it keeps between flushes",
                extra={"dropped": resolver.overflow},
            )
            resolver.overflow = 0
        return await asyncio.to_thread(save_dns, self.store, attempts)

    async def poll(self) -> None:
        """Fold the live nftables counters into the store (quietly skipped without nft)."""
        try:
            await asyncio.to_thread(refresh, self.config, self.store, self.nft)
            self._poll_failed = False
        except nftables.NftError as exc:
            if not self._poll_failed:
                log.warning("cannot read the egress counters", extra={"error": str(exc)})
            self._poll_failed = True

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        if self.dns is not None:
            await self.dns.close()
            await self.flush()
        if self.ntp is not None:
            await self.ntp.close()


async def start_egress_services(
    config: Config,
    store: Store,
    *,
    upstream_stratum: int = 2,
    ntp_upstream: str | None = None,
    dns_port: int = 53,
    ntp_port: int = NTP_PORT,
    flush_interval: float = 5.0,
    poll_interval: float = 60.0,
    nft: nftables.Nft | None = None,
) -> EgressServices:
    """Start the DNS sinkhole and the NTP server on ``camera_network.address`` when the
    config turns them on, and the counter poller (``poll_interval`` 0 turns it off).

    ``upstream_stratum`` is the stratum of the gateway's own time source (the NTP server
    answers one more); ``ntp_upstream`` its address, for the reference ID.
    """
    open_egress(store)
    network = config.camera_network
    dns: DnsSinkholeServer | None = None
    ntp: NtpServer | None = None
    if network is not None:
        if network.dns_sinkhole:
            resolver = SinkholeResolver(local=network.dns_local, cameras=_camera_addresses(config))
            dns = DnsSinkholeServer(resolver, clock=time.time)
            await dns.start(network.address, dns_port)
            log.info("dns sinkhole listening", extra={"address": network.address, "port": dns.port})
        if network.ntp_server:
            ntp = NtpServer(upstream_stratum=upstream_stratum, upstream=ntp_upstream)
            try:
                await ntp.start(network.address, ntp_port)
            except OSError:
                if dns is not None:
                    await dns.close()
                raise
            log.info("ntp server listening", extra={"address": network.address, "port": ntp.port})
    if network is not None and poll_interval > 0 and nft is None and not nftables.may_read():
        # The systemd unit keeps CAP_NET_ADMIN out of the long-running process; its
        # onvif-gateway-egress-counters.timer reads the counters into the store instead.
        log.info("egress counters are not read by this process (no CAP_NET_ADMIN)")
        poll_interval = 0.0
    services = EgressServices(
        config,
        store,
        dns=dns,
        ntp=ntp,
        flush_interval=flush_interval,
        poll_interval=poll_interval if network is not None else 0.0,
        nft=nft or nftables.Nft(),
    )
    services._start_loops()
    return services


def _camera_addresses(config: Config) -> dict[str, str]:
    """Camera-side address -> camera name, for cameras configured by IP address."""
    addresses: dict[str, str] = {}
    for camera in config.cameras:
        try:
            ipaddress.ip_address(camera.host)
        except ValueError:
            continue
        addresses.setdefault(camera.host, camera.name)
    return addresses
