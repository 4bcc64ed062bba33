"""Persistence of egress observations in the shared SQLite store (component "egress").

Three tables, all keyed by the camera-side source address (mapped to camera names when
reported, so renaming a camera in the config does not orphan its history):

- ``egress_dns``: DNS queries the sinkhole answered, per source, name and type.
- ``egress_counter``: per-counter totals accumulated from nftables readings. nft counters
  restart at zero when the table is reloaded; the table handle changes then, so a reading
  with a new handle is added whole instead of as a difference.
- ``egress_blocked``: blocked destinations (protocol, address, port) per source, from the
  attempts sets, accumulated the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.egress.dns import DnsAttempt
from gateway.egress.nft import BlockedDestination, TableState
from gateway.store import Store

COMPONENT = "egress"
MIGRATIONS = [
    """
    CREATE TABLE egress_dns (
        source TEXT NOT NULL,
        name TEXT NOT NULL,
        qtype TEXT NOT NULL,
        category TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (source, name, qtype)
    );
    CREATE TABLE egress_counter (
        counter TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        table_handle INTEGER NOT NULL,
        raw_packets INTEGER NOT NULL,
        raw_bytes INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE egress_blocked (
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        protocol TEXT NOT NULL,
        port INTEGER NOT NULL,
        table_handle INTEGER NOT NULL,
        raw_packets INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (source, destination, protocol, port)
    )
    """,
]


def open_egress(store: Store) -> Store:
    store.migrate(COMPONENT, MIGRATIONS)
    return store


def save_dns(store: Store, attempts: Iterable[DnsAttempt]) -> int:
    rows = [
        (a.client, a.name, a.qtype, a.category, a.count, a.first_seen, a.last_seen)
        for a in attempts
    ]
    if rows:
        store.executemany(
            "INSERT INTO egress_dns(source, name, qtype, category, count, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(source, name, qtype) DO UPDATE SET"
            " count = count + excluded.count,"
            " category = excluded.category,"
            " first_seen = MIN(first_seen, excluded.first_seen),"
            " last_seen = MAX(last_seen, excluded.last_seen)",
            rows,
        )
    return len(rows)


def _delta(raw: int, previous_raw: int | None, same_table: bool) -> int:
    if previous_raw is None or not same_table or raw < previous_raw:
        return raw
    return raw - previous_raw


@dataclass(frozen=True)
class CounterDelta:
    counter: str
    source: str
    packets: int  # new since the previous reading
    total_packets: int


def save_counters(
    store: Store, state: TableState, sources: dict[str, str], now: float
) -> list[CounterDelta]:
    """Fold one nft reading into the totals; ``sources`` maps counter name -> address."""
    deltas: list[CounterDelta] = []
    with store.transaction() as conn:
        for name, (raw_packets, raw_bytes) in sorted(state.counters.items()):
            row = conn.execute(
                "SELECT table_handle, raw_packets, raw_bytes, packets, bytes"
                " FROM egress_counter WHERE counter = ?",
                (name,),
            ).fetchone()
            same = row is not None and row["table_handle"] == state.handle
            d_packets = _delta(raw_packets, row["raw_packets"] if row else None, same)
            d_bytes = _delta(raw_bytes, row["raw_bytes"] if row else None, same)
            total_packets = (row["packets"] if row else 0) + d_packets
            total_bytes = (row["bytes"] if row else 0) + d_bytes
            conn.execute(
                "INSERT INTO egress_counter(counter, source, table_handle, raw_packets,"
                " raw_bytes, packets, bytes, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(counter) DO UPDATE SET source = excluded.source,"
                " table_handle = excluded.table_handle, raw_packets = excluded.raw_packets,"
                " raw_bytes = excluded.raw_bytes, packets = excluded.packets,"
                " bytes = excluded.bytes, updated = excluded.updated",
                (
                    name,
                    sources.get(name, ""),
                    state.handle,
                    raw_packets,
                    raw_bytes,
                    total_packets,
                    total_bytes,
                    now,
                ),
            )
            deltas.append(CounterDelta(name, sources.get(name, ""), d_packets, total_packets))
    return deltas


def save_blocked(
    store: Store, handle: int, destinations: Iterable[BlockedDestination], now: float
) -> None:
    with store.transaction() as conn:
        for d in destinations:
            port = -1 if d.port is None else d.port
            key = (d.source, d.destination, d.protocol, port)
            row = conn.execute(
                "SELECT table_handle, raw_packets, packets FROM egress_blocked"
                " WHERE source = ? AND destination = ? AND protocol = ? AND port = ?",
                key,
            ).fetchone()
            same = row is not None and row["table_handle"] == handle
            delta = _delta(d.packets, row["raw_packets"] if row else None, same)
            if row is None:
                conn.execute(
                    "INSERT INTO egress_blocked(source, destination, protocol, port,"
                    " table_handle, raw_packets, packets, first_seen, last_seen)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, handle, d.packets, d.packets, now, now),
                )
            else:
                conn.execute(
                    "UPDATE egress_blocked SET table_handle = ?, raw_packets = ?,"
                    " packets = packets + ?, last_seen = CASE WHEN ? > 0 THEN ? ELSE last_seen"
                    " END WHERE source = ? AND destination = ? AND protocol = ? AND port = ?",
                    (handle, d.packets, delta, delta, now, *key),
                )


def load_dns(store: Store) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in store.query(
            "SELECT source, name, qtype, category, count, first_seen, last_seen FROM egress_dns"
            " ORDER BY source, last_seen DESC, name"
        )
    ]


def load_counters(store: Store) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in store.query(
            "SELECT counter, source, packets, bytes, updated FROM egress_counter ORDER BY counter"
        )
    ]


def load_blocked(store: Store) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT source, destination, protocol, port, packets, first_seen, last_seen"
        " FROM egress_blocked ORDER BY source, packets DESC, destination"
    )
    result = []
    for row in rows:
        item = dict(row)
        if item["port"] == -1:
            item["port"] = None
        result.append(item)
    return result
