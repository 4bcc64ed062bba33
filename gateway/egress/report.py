"""The egress report: per camera, what it tried to reach and what the gateway did about it.

:func:`refresh` reads the live nftables counters and attempts sets and folds them into the
store (needs nft and root); :func:`egress_report` builds the report from the store alone, so
the admin API can serve it cheaply and it survives reboots and ruleset reloads.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from gateway.config import Config
from gateway.egress import nft as nftables
from gateway.egress.domains import UNCLASSIFIED, shipped
from gateway.egress.store import (
    CounterDelta,
    load_blocked,
    load_counters,
    load_dns,
    open_egress,
    save_blocked,
    save_counters,
)
from gateway.store import Store

# What a blocked destination port most likely is, for people reading the report.
KNOWN_PORTS: dict[tuple[str, int], str] = {
    ("udp", 53): "DNS to an outside resolver",
    ("tcp", 53): "DNS to an outside resolver",
    ("udp", 123): "NTP to an outside server",
    ("udp", 1900): "UPnP/SSDP discovery",
    ("udp", 5353): "mDNS",
    ("udp", 3702): "WS-Discovery",
    ("tcp", 8555): "EZVIZ / Hik-Connect device registration",
    ("tcp", 6800): "EZVIZ cloud",
    ("udp", 8800): "Dahua P2P (Easy4IP) rendezvous",
    ("udp", 8900): "Dahua P2P relay",
    ("udp", 37810): "Dahua device discovery",
    ("tcp", 80): "HTTP (vendor DDNS, firmware checks)",
    ("tcp", 443): "HTTPS (vendor cloud)",
    ("tcp", 25): "SMTP (e-mail alarms)",
    ("tcp", 21): "FTP upload",
}


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


@dataclass(frozen=True)
class Refresh:
    table_loaded: bool
    deltas: list[CounterDelta]


def refresh(config: Config, store: Store, nft: nftables.Nft | None = None) -> Refresh:
    """Read the live counters and attempts sets into the store. Raises NftError."""
    open_egress(store)
    runner = nft or nftables.Nft()
    state = nftables.read_counters(runner)
    if state is None:
        return Refresh(table_loaded=False, deltas=[])
    sources, _ = nftables.camera_sources(config)
    mapping = {s.counter: str(s.address) for s in sources}
    mapping[nftables.UNKNOWN_COUNTER] = ""
    now = time.time()
    deltas = save_counters(store, state, mapping, now)
    save_blocked(store, state.handle, nftables.read_attempts(runner), now)
    return Refresh(table_loaded=True, deltas=deltas)


def egress_report(config: Config, store: Store) -> dict[str, Any]:
    """Per camera: blocked connection attempts and DNS phone-home attempts, from the store."""
    open_egress(store)
    domains = shipped()
    counters = load_counters(store)
    blocked = load_blocked(store)
    dns = load_dns(store)

    hosts: dict[str, list[str]] = {}
    for camera in config.cameras:
        hosts.setdefault(_canonical(camera.host), []).append(camera.name)

    def blocked_for(source: str) -> list[dict[str, Any]]:
        items = []
        for row in blocked:
            if _canonical(str(row["source"])) != source:
                continue
            port = row["port"]
            service = (
                KNOWN_PORTS.get((str(row["protocol"]), int(port))) if port is not None else None
            )
            items.append({k: v for k, v in row.items() if k != "source"} | {"service": service})
        return items

    def dns_for(source: str) -> list[dict[str, Any]]:
        items = []
        for row in dns:
            if _canonical(str(row["source"])) != source:
                continue
            category = str(row["category"])
            entry = domains.classify(str(row["name"])) if category != UNCLASSIFIED else None
            items.append(
                {k: v for k, v in row.items() if k != "source"}
                | {
                    "category_label": domains.categories.get(category, category),
                    "vendor": entry.vendor if entry else None,
                    "source_of_classification": entry.source if entry else None,
                }
            )
        return items

    counter_by_source = {
        _canonical(str(c["source"])): c
        for c in counters
        if c["counter"] != nftables.UNKNOWN_COUNTER
    }
    cameras = []
    for camera in config.cameras:
        source = _canonical(camera.host)
        counter = counter_by_source.get(source)
        queries = dns_for(source)
        cameras.append(
            {
                "name": camera.name,
                "vendor": camera.vendor,
                "host": camera.host,
                "shares_host_with": [n for n in hosts.get(source, []) if n != camera.name],
                "blocked_packets": int(counter["packets"]) if counter else 0,
                "blocked_bytes": int(counter["bytes"]) if counter else 0,
                "counters_read_at": counter["updated"] if counter else None,
                "blocked_destinations": blocked_for(source),
                "dns_queries": sum(int(q["count"]) for q in queries),
                "dns_phone_home": sum(
                    int(q["count"]) for q in queries if q["category"] != UNCLASSIFIED
                ),
                "dns": queries,
            }
        )

    known = set(hosts)
    unknown_sources = sorted({_canonical(str(r["source"])) for r in blocked + dns} - known - {""})
    unknown_counter = next((c for c in counters if c["counter"] == nftables.UNKNOWN_COUNTER), None)
    return {
        "generated_at": time.time(),
        "categories": dict(domains.categories),
        "cameras": cameras,
        "unknown": {
            "blocked_packets": int(unknown_counter["packets"]) if unknown_counter else 0,
            "blocked_bytes": int(unknown_counter["bytes"]) if unknown_counter else 0,
            "sources": [
                {
                    "source": source,
                    "blocked_destinations": blocked_for(source),
                    "dns": dns_for(source),
                }
                for source in unknown_sources
            ],
        },
    }
