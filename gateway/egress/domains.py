"""The shipped list of vendor telemetry domains (``domains.json``) and name classification.

Each entry names a domain suffix, the vendor, a category (Hik-Connect/EZVIZ, Easy4IP/IMOU,
vendor DDNS, ...), example host names firmware is known to use, a confidence and the public
source it comes from. A name matches an entry when it equals the suffix or ends with
``"." + suffix``; the longest matching suffix wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class DomainEntry:
    suffix: str
    vendor: str
    category: str
    hosts: tuple[str, ...]
    confidence: str
    source: str


@dataclass(frozen=True)
class DomainList:
    categories: dict[str, str]
    entries: tuple[DomainEntry, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainList:
        categories = data.get("categories")
        domains = data.get("domains")
        if not isinstance(categories, dict) or not isinstance(domains, list):
            raise ValueError("domain list needs a 'categories' table and a 'domains' array")
        entries = []
        for i, item in enumerate(domains):
            try:
                entry = DomainEntry(
                    suffix=str(item["suffix"]).lower().strip("."),
                    vendor=str(item["vendor"]),
                    category=str(item["category"]),
                    hosts=tuple(str(h).lower() for h in item["hosts"]),
                    confidence=str(item["confidence"]),
                    source=str(item["source"]),
                )
            except (KeyError, TypeError) as exc:
                raise ValueError(f"domains[{i}]: missing or invalid field {exc}") from None
            if entry.category not in categories:
                raise ValueError(f"domains[{i}]: unknown category {entry.category!r}")
            if not entry.source:
                raise ValueError(f"domains[{i}]: every domain needs a source")
            entries.append(entry)
        return cls(
            categories={str(k): str(v) for k, v in categories.items()}, entries=tuple(entries)
        )

    def classify(self, name: str) -> DomainEntry | None:
        """The entry whose suffix matches ``name`` (case-insensitive), longest suffix first."""
        name = name.lower().rstrip(".")
        best: DomainEntry | None = None
        for entry in self.entries:
            if (name == entry.suffix or name.endswith("." + entry.suffix)) and (
                best is None or len(entry.suffix) > len(best.suffix)
            ):
                best = entry
        return best

    def category_of(self, name: str) -> str:
        entry = self.classify(name)
        return entry.category if entry else UNCLASSIFIED

    def hosts_for(self, vendor: str) -> list[str]:
        """Host names the given vendor's firmware is known to look up (plus vendor-neutral NTP)."""
        return [h for e in self.entries if e.vendor in (vendor, "") for h in e.hosts]


@lru_cache(maxsize=1)
def shipped() -> DomainList:
    text = resources.files("gateway.egress").joinpath("domains.json").read_text(encoding="utf-8")
    return DomainList.from_json(json.loads(text))
