"""Settings a model or firmware does not have: reported as such, never as a camera failure.

A vendor client that finds a settings table or document refused by the camera (Dahua
``Error Bad Request!`` for a table the model lacks, ISAPI ``notSupport``) puts the table's
name in the settings with :data:`NOT_AVAILABLE` as its value. The policy then reports each
setting it would have checked there as not available on this firmware, and skips it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REASON = "not available on this firmware"
NOT_AVAILABLE = f"({REASON})"  # the marker value: never a value a camera reports
_TABLE = re.compile(r"[A-Za-z0-9_\-]+")


def table_of(key: str) -> str:
    """The table (Dahua) or document (ISAPI) a flat setting key belongs to."""
    match = _TABLE.match(key)
    return match.group(0) if match else key


def table_missing(settings: Mapping[str, str], key: str) -> bool:
    """Whether the camera refused the table or document that holds ``key``."""
    return settings.get(table_of(key)) == NOT_AVAILABLE


def missing_tables(settings: Mapping[str, str]) -> list[str]:
    return sorted(k for k, v in settings.items() if v == NOT_AVAILABLE)
