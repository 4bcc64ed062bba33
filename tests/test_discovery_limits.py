"""WS-Discovery against reflection: unicast probes answered only from the allowed networks,
at a bounded rate per source, with one datagram for all the devices."""

from __future__ import annotations

from gateway.onvif.discovery import (
    DiscoveryResponder,
    Endpoint,
    ProbeMatch,
    allowed_networks,
    probe_message,
)


class Responder(DiscoveryResponder):
    """Three devices, and what would be sent collected instead of sent."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__("10.0.0.1", [], allow=allow)
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(
                address=f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
                scopes=("onvif://www.onvif.org/name/cam",),
                xaddrs=(f"http://10.0.0.1:{8000 + i}/onvif/device_service",),
            )
            for i in range(3)
        ]

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def test_unicast_probes_from_elsewhere_get_nothing() -> None:
    responder = Responder(allow=("10.0.0.0/24",))
    responder.received(probe_message(), ("192.0.2.7", 3702), multicast=False)
    assert responder.sent == []
    assert responder.refusals.total("discovery", "not_allowed") == 1


def test_one_reply_datagram_for_all_devices_and_a_bounded_rate() -> None:
    responder = Responder(allow=("10.0.0.0/24",))
    for _ in range(100):
        responder.received(probe_message(), ("10.0.0.9", 3702), multicast=False)
    # The first probes are answered, one datagram each, holding every device...
    assert 1 <= len(responder.sent) <= 10
    data, addr = responder.sent[0]
    assert addr == ("10.0.0.9", 3702)
    assert len(ProbeMatch.parse_all(data)) == 3
    # ...the rest are dropped and counted.
    assert responder.refusals.total("discovery", "rate_limited") >= 90


def test_by_default_the_bind_address_subnet_may_probe() -> None:
    # Loopback: the interface holding 127.0.0.1 has a /8.
    assert [str(n) for n in allowed_networks("127.0.0.1", ())] == ["127.0.0.0/8"]
    assert [str(n) for n in allowed_networks("127.0.0.1", ("10.1.0.0/16",))] == ["10.1.0.0/16"]
