"""WS-BaseNotification push delivery: the consumer a ``Subscribe`` names, and the Notify POSTs.

A push subscription shares everything with a pull point (the bounded message queue, topic
filter, termination time, Renew and Unsubscribe, the per-device subscription limit); only its
messages leave by HTTP POST to the consumer instead of waiting for PullMessages.

The consumer URL is where the gateway would send requests on a VMS's say-so, so it is held to
the VMS side: an ``http``/``https`` URL without credentials whose host (resolved once, at
Subscribe, and pinned) is the subscriber's own address or on the network of the interface
the Subscribe arrived on, and never the gateway's own address, a camera's address, nor
inside ``[camera_network]``'s subnets. Redirects are not followed; each batch is tried
``ATTEMPTS`` times, and a consumer that keeps failing ends its subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from gateway.cancellation import wait_for
from gateway.onvif import netinfo
from gateway.onvif.xml import Xml, el, envelope

log = logging.getLogger(__name__)

NOTIFY_ACTION = "http://docs.oasis-open.org/wsn/bw-2/NotificationConsumer/Notify"
ATTEMPTS = 3
RETRY_DELAY = 1.0  # seconds before the second attempt; doubled before each further one
TIMEOUT = 5.0
MAX_BATCH = 32
MAX_FAILED_BATCHES = 3  # consecutive batches not delivered: the subscription ends
MAX_URL = 1024


class ConsumerRefused(ValueError):
    """A consumer address outside what the gateway may send to (one-line reason)."""


@dataclass(frozen=True)
class Consumer:
    url: str  # as the subscriber gave it (the Host header and the TLS name come from it)
    address: str  # the resolved address every Notify goes to
    port: int
    host: str
    scheme: str
    path: str

    def target(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _in_any(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Iterable[str]) -> bool:
    for net in nets:
        with contextlib.suppress(ValueError):
            if ip in ipaddress.ip_network(net, strict=False):
                return True
    return False


def check_address(
    address: str,
    *,
    subscriber: str,
    local_ip: str,
    camera_hosts: Iterable[str],
    camera_subnets: Iterable[str],
) -> None:
    """Raise :class:`ConsumerRefused` unless ``address`` is on the VMS side (see module)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConsumerRefused(f"consumer address {address!r} is not an IP address") from None
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        raise ConsumerRefused(f"consumer address {address} is not a unicast host")
    if str(ip) in {str(h) for h in camera_hosts} or _in_any(ip, camera_subnets):
        raise ConsumerRefused(f"consumer address {address} is on the camera network")
    if str(ip) == subscriber:
        return
    if str(ip) == local_ip:
        # The gateway's own address (its admin API, other devices' ports) is no consumer.
        raise ConsumerRefused(f"consumer address {address} is the gateway itself")
    iface = netinfo.interface_for_address(local_ip)
    if iface is not None:
        network = ipaddress.ip_network(f"{local_ip}/{iface.prefix_length}", strict=False)
        if ip in network:
            return
    raise ConsumerRefused(
        f"consumer address {address} is neither the subscriber nor on the network it "
        "reached the gateway from"
    )


async def resolve_consumer(
    url: str,
    *,
    subscriber: str,
    local_ip: str,
    camera_hosts: Iterable[str],
    camera_subnets: Iterable[str],
) -> Consumer:
    """The consumer ``url`` names, resolved and checked; raises :class:`ConsumerRefused`."""
    if len(url) > MAX_URL:
        raise ConsumerRefused(f"consumer URL longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConsumerRefused("consumer address is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConsumerRefused("consumer address must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ConsumerRefused("consumer URL must not carry credentials")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), TIMEOUT)
        except (OSError, TimeoutError):
            raise ConsumerRefused(f"consumer host {host!r} does not resolve") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    # Every address the name has must be allowed: DNS must not be a way around the check.
    for address in addresses:
        check_address(
            address,
            subscriber=subscriber,
            local_ip=local_ip,
            camera_hosts=camera_hosts,
            camera_subnets=camera_subnets,
        )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Consumer(url, addresses[0], port, host, parts.scheme, path)


def notify_body(messages: list[Xml], subscription_url: str) -> bytes:
    refs = [
        Xml(
            message.replace(
                "<wsnt:NotificationMessage>",
                "<wsnt:NotificationMessage>"
                + el("wsnt:SubscriptionReference", el("wsa:Address", subscription_url)),
                1,
            )
        )
        for message in messages
    ]
    return envelope(el("wsnt:Notify", refs))


class Delivery:
    """Posts a push subscription's queued messages to its consumer, in order, batch by batch
    (:meth:`run`, one task per subscription)."""

    def __init__(self, consumer: Consumer, subscription_url: str) -> None:
        self.consumer = consumer
        self.subscription_url = subscription_url
        self.delivered = 0
        self.failed_batches = 0

    async def post(self, session: aiohttp.ClientSession, messages: list[Xml]) -> bool:
        """One batch, with retries; True once the consumer accepted it (2xx)."""
        body = notify_body(messages, self.subscription_url)
        headers = {
            "Content-Type": f'application/soap+xml; charset=utf-8; action="{NOTIFY_ACTION}"',
            "Host": self.consumer.host
            if self.consumer.port in (80, 443)
            else f"{self.consumer.host}:{self.consumer.port}",
        }
        delay = RETRY_DELAY
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                async with session.post(
                    self.consumer.target(),
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=self.consumer.host if self.consumer.scheme == "https" else None,
                ) as resp:
                    await resp.content.read(64 * 1024)
                    if 200 <= resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            log.info(
                "Notify to %s failed (attempt %d of %d): %s",
                self.consumer.url,
                attempt + 1,
                ATTEMPTS,
                reason,
            )
        return False

    async def run(
        self,
        queue: deque[Xml],
        wakeup: asyncio.Event,
        closed: Callable[[], bool],
        end: Callable[[], None],
    ) -> None:
        """Deliver from ``queue`` until ``closed()``; ``end()`` the subscription when the
        consumer failed ``MAX_FAILED_BATCHES`` batches in a row."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not closed():
                if not queue:
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                batch = [queue.popleft() for _ in range(min(MAX_BATCH, len(queue)))]
                if await self.post(session, batch):
                    self.failed_batches = 0
                    self.delivered += len(batch)
                    continue
                self.failed_batches += 1
                if self.failed_batches >= MAX_FAILED_BATCHES:
                    log.warning(
                        "Notify consumer %s failed %d times in a row; subscription ended",
                        self.consumer.url,
                        self.failed_batches,
                    )
                    end()
                    return
