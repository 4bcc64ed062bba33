"""The DNS sinkhole: sans-IO core (replies, records, malformed input, fuzz) and the asyncio
server over real UDP and TCP sockets on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from dnslib import CLASS, QTYPE, RCODE, DNSQuestion, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.egress.dns import MAX_QUERY_SIZE, DnsSinkholeServer, SinkholeResolver
from gateway.egress.domains import UNCLASSIFIED, DomainList, shipped
from gateway.egress.store import load_dns, open_egress, save_dns
from gateway.store import Store

CAMERA = "192.168.50.10"


def make_resolver(**kwargs: object) -> SinkholeResolver:
    return SinkholeResolver(
        local={"syslog.site.lan": "192.168.50.5", "v6.site.lan": "fd00::5"},
        cameras={CAMERA: "front"},
        **kwargs,  # type: ignore[arg-type]
    )


def ask(resolver: SinkholeResolver, name: str, qtype: str = "A", client: str = CAMERA) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    reply = resolver.handle(bytes(query.pack()), client, 1000.0)
    assert reply is not None
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == query.header.id
    assert parsed.header.qr == 1
    return parsed


def test_vendor_name_gets_nxdomain_and_is_recorded_with_its_category() -> None:
    resolver = make_resolver()
    reply = ask(resolver, "LiteDev.Hik-Connect.com")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.rr == []
    assert str(reply.q.qname).lower() == "litedev.hik-connect.com."
    ask(resolver, "litedev.hik-connect.com.")
    [attempt] = resolver.take_pending()
    assert attempt.camera == "front"
    assert attempt.name == "litedev.hik-connect.com"
    assert attempt.qtype == "A"
    assert attempt.category == "hik-connect"
    assert attempt.count == 2
    assert resolver.take_pending() == []


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("www.easy4ipcloud.com", "dahua-p2p"),
        ("abc123.quickddns.com", "vendor-ddns"),
        ("www.dahuaddns.com", "vendor-ddns"),
        ("0.amazon.pool.ntp.org", "ntp"),
        ("time.windows.com", "ntp"),
        ("example.org", UNCLASSIFIED),
        ("nothik-connect.com", UNCLASSIFIED),  # suffix must end on a label boundary
    ],
)
def test_classification(name: str, category: str) -> None:
    resolver = make_resolver()
    ask(resolver, name)
    [attempt] = resolver.take_pending()
    assert attempt.category == category


def test_every_shipped_domain_has_a_source_and_known_category() -> None:
    domains = shipped()
    assert len(domains.entries) >= 10
    for entry in domains.entries:
        assert entry.source.strip()
        assert entry.category in domains.categories
        for host in entry.hosts:
            assert domains.classify(host) is not None


def test_domain_list_rejects_an_entry_without_source() -> None:
    with pytest.raises(ValueError, match="needs a source"):
        DomainList.from_json(
            {
                "categories": {"x": "X"},
                "domains": [
                    {
                        "suffix": "a.com",
                        "vendor": "",
                        "category": "x",
                        "hosts": [],
                        "confidence": "low",
                        "source": "",
                    }
                ],
            }
        )


def test_local_names_answer_with_the_configured_address() -> None:
    resolver = make_resolver()
    reply = ask(resolver, "SYSLOG.site.lan")
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.aa == 1
    assert [str(rr.rdata) for rr in reply.rr] == ["192.168.50.5"]
    # Another type of a local name: NODATA, not NXDOMAIN.
    nodata = ask(resolver, "syslog.site.lan", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR
    assert nodata.rr == []
    six = ask(resolver, "v6.site.lan", "AAAA")
    assert [str(rr.rdata) for rr in six.rr] == ["fd00::5"]


def test_unknown_client_is_recorded_without_camera() -> None:
    resolver = make_resolver()
    ask(resolver, "www.hik-online.com", client="192.168.50.77")
    [attempt] = resolver.take_pending()
    assert attempt.camera is None
    assert attempt.client == "192.168.50.77"


def test_chaos_class_is_refused_but_recorded() -> None:
    resolver = make_resolver()
    query = DNSRecord(q=DNSQuestion("version.bind", QTYPE.TXT, CLASS.CH))
    reply = DNSRecord.parse(resolver.handle(bytes(query.pack()), CAMERA, 1.0) or b"")
    assert reply.header.rcode == RCODE.REFUSED
    assert resolver.take_pending()[0].name == "version.bind"


def test_malformed_and_hostile_packets() -> None:
    resolver = make_resolver()
    assert resolver.handle(b"", CAMERA, 1.0) is None
    assert resolver.handle(b"\x12\x34\x01", CAMERA, 1.0) is None
    # A response (QR set) is never answered: two resolvers could loop forever.
    response = DNSRecord.question("a.com").reply()
    assert resolver.handle(bytes(response.pack()), CAMERA, 1.0) is None
    # Header claims a question that is not there: FORMERR with the same id.
    truncated = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    reply = DNSRecord.parse(resolver.handle(truncated, CAMERA, 1.0) or b"")
    assert reply.header.id == 0xBEEF
    assert reply.header.rcode == RCODE.FORMERR
    # Oversized: FORMERR from the header alone, the rest is not parsed.
    big = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x00" * MAX_QUERY_SIZE
    reply_bytes = resolver.handle(big, CAMERA, 1.0)
    assert reply_bytes is not None and len(reply_bytes) == 12
    assert DNSRecord.parse(reply_bytes).header.rcode == RCODE.FORMERR
    # Two questions: FORMERR.
    two = DNSRecord.question("a.com")
    two.add_question(DNSQuestion("b.com"))
    assert DNSRecord.parse(resolver.handle(bytes(two.pack()), CAMERA, 1.0) or b"").header.rcode == (
        RCODE.FORMERR
    )
    # Not a standard query (opcode 2, STATUS): NOTIMP.
    status = struct.pack("!HHHHHH", 9, 2 << 11, 0, 0, 0, 0)
    assert DNSRecord.parse(resolver.handle(status, CAMERA, 1.0) or b"").header.rcode == RCODE.NOTIMP
    assert resolver.malformed == 5
    assert resolver.take_pending() == []


def test_pending_records_are_bounded() -> None:
    resolver = make_resolver(max_pending=3)
    for i in range(10):
        ask(resolver, f"n{i}.example.com")
    assert len(resolver.pending) == 3
    assert resolver.overflow == 7


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1500))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    reply = make_resolver().handle(data, CAMERA, 1.0)
    if reply is not None:
        parsed = DNSRecord.parse(reply)
        assert parsed.header.qr == 1
        assert parsed.header.id == struct.unpack_from("!H", data)[0]
        assert len(reply) <= 512


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=5),
    st.sampled_from(["A", "AAAA", "TXT", "SRV", "ANY", "PTR"]),
    st.integers(min_value=0, max_value=0xFFFF),
)
def test_fuzz_mutated_queries(labels: list[str], qtype: str, flip: int) -> None:
    query = bytearray(DNSRecord.question(".".join(labels), qtype).pack())
    position = flip % len(query)
    query[position] ^= (flip >> 8) or 1
    reply = make_resolver().handle(bytes(query), CAMERA, 1.0)
    if reply is not None:
        assert DNSRecord.parse(reply).header.qr == 1


def test_store_accumulates_across_flushes(tmp_path: object) -> None:
    store = open_egress(Store(":memory:"))
    resolver = make_resolver()
    ask(resolver, "www.easy4ipcloud.com")
    save_dns(store, resolver.take_pending())
    query = DNSRecord.question("www.easy4ipcloud.com")
    resolver.handle(bytes(query.pack()), CAMERA, 2000.0)
    resolver.handle(bytes(query.pack()), CAMERA, 2500.0)
    save_dns(store, resolver.take_pending())
    [row] = load_dns(store)
    assert row["source"] == CAMERA
    assert row["count"] == 3
    assert row["first_seen"] == 1000.0
    assert row["last_seen"] == 2500.0
    assert row["category"] == "dahua-p2p"


async def test_server_answers_over_udp_and_tcp_on_loopback() -> None:
    resolver = SinkholeResolver(local={"nvr.site.lan": "127.0.0.9"}, cameras={"127.0.0.1": "lo"})
    server = DnsSinkholeServer(resolver)
    await server.start("127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        # UDP
        query = DNSRecord.question("dev.ezviz7.com")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, bytes(query.pack()))
        reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
        sock.close()
        assert reply.header.rcode == RCODE.NXDOMAIN
        # TCP, two queries on one connection (RFC 7766 pipelining).
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for name in ("nvr.site.lan", "www.easy4ipcloud.com"):
            packed = bytes(DNSRecord.question(name).pack())
            writer.write(struct.pack("!H", len(packed)) + packed)
        answers = []
        for _ in range(2):
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            answers.append(DNSRecord.parse(await reader.readexactly(length)))
        assert [str(rr.rdata) for rr in answers[0].rr] == ["127.0.0.9"]
        assert answers[1].header.rcode == RCODE.NXDOMAIN
        # An oversized TCP message gets FORMERR and the connection is closed.
        writer.write(struct.pack("!HHHHHHH", 5000, 1, 0x0100, 1, 0, 0, 0))
        (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
        assert DNSRecord.parse(await reader.readexactly(length)).header.rcode == RCODE.FORMERR
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        pending = {(a.name, a.camera) for a in resolver.take_pending()}
        assert pending == {
            ("dev.ezviz7.com", "lo"),
            ("nvr.site.lan", "lo"),
            ("www.easy4ipcloud.com", "lo"),
        }
    finally:
        await server.close()


def test_recording_logs_with_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.egress.dns")
    ask(make_resolver(), "www.easy4ipcloud.com")
    [record] = [r for r in caplog.records if r.name == "gateway.egress.dns"]
    assert record.qname == "www.easy4ipcloud.com"  # type: ignore[attr-defined]
    assert record.camera == "front"  # type: ignore[attr-defined]
