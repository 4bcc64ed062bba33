"""The ``[policy]`` table: firmware site rules, accepted risks, telemetry desired state.

```toml
[policy]
drift_check_interval = 3600   # seconds between inventory + drift checks in `run`; 0 = never
auto_enforce = false          # re-apply the telemetry policy when drift is found
request_timeout = 10          # seconds per camera API call

[[policy.firmware.minimum]]   # older firmware on matching models is a finding
vendor = "hikvision"
model = "DS-2CD2xx2FWD"       # X wildcards, * any text
version = "V5.5.800 build 210628"

[[policy.firmware.blocked]]   # exactly this version is a finding
vendor = "dahua"
model = "*"
version = "2.800.0000016.0.R, build: 2020-06-05"
reason = "reboot loop seen on site"

[[policy.allow]]              # accepted risk, until a date
id = "CVE-2022-30563"         # a CVE id, firmware.minimum, or a setting key
cameras = ["lobby"]           # optional; default every camera
models = ["IPC-HFW2XXX"]      # optional model patterns
expires = 2026-12-31
reason = "camera replaced in Q4; ONVIF only reachable through the gateway"

[policy.telemetry]            # features default to "off" (ntp: "gateway", discovery: "allowed")
ntp_server = "192.168.50.1"   # default: camera_network.address
email = "allowed"
[policy.telemetry.vendor.dahua]
bonjour = "allowed"
[policy.telemetry.camera.lobby]
ftp = "allowed"
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from gateway.config import VENDORS, Config, ConfigError
from gateway.config_reader import _Reader
from gateway.policy.findings import AllowEntry
from gateway.policy.firmware import VersionRule
from gateway.policy.telemetry import DEFAULT_MODES, FEATURES, MODES, TelemetryPolicy
from gateway.policy.versions import FirmwareVersion


@dataclass(frozen=True)
class PolicyConfig:
    drift_check_interval: float = 3600.0
    auto_enforce: bool = False
    request_timeout: float = 10.0
    minimum: tuple[VersionRule, ...] = ()
    blocked: tuple[VersionRule, ...] = ()
    allow: tuple[AllowEntry, ...] = ()
    telemetry: TelemetryPolicy = field(default_factory=TelemetryPolicy)


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in allowed else f"must be {' or '.join(map(repr, allowed))}"

    return check


def _modes(reader: _Reader) -> dict[str, str]:
    modes: dict[str, str] = {}
    for feature in FEATURES:
        value = reader.get(feature, str, None, _one_of(MODES[feature]))
        if value is not None:
            modes[feature] = value
    return modes


def _sub_table(reader: _Reader, name: str) -> dict[str, Any]:
    value = reader.get(name, dict, {})
    return value if isinstance(value, dict) else {}


def _version_rules(reader: _Reader, name: str, model_default: Any) -> tuple[VersionRule, ...]:
    items = reader.get(name, list, [])
    rules: list[VersionRule] = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            reader.error(f"{name}[{i}]", "must be a table ([[...]])")
            continue
        r = _Reader(item, reader.key(f"{name}[{i}]"), reader.problems, reader.base_dir)
        vendor = r.get(
            "vendor",
            str,
            ...,
            lambda v: None if v in ("hikvision", "dahua") else "must be 'hikvision' or 'dahua'",
        )
        model = r.get("model", str, model_default, lambda v: None if v.strip() else "is empty")
        text = r.get("version", str, ...)
        reason = r.get("reason", str, "")
        r.finish()
        if vendor is None or model is None or text is None:
            continue
        try:
            version = FirmwareVersion.parse(vendor, text)
        except ValueError as exc:
            r.error("version", str(exc))
            continue
        rules.append(VersionRule(vendor, model, version, reason))
    return tuple(rules)


def _allow(reader: _Reader, cameras: set[str]) -> tuple[AllowEntry, ...]:
    items = reader.get("allow", list, [])
    entries: list[AllowEntry] = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            reader.error(f"allow[{i}]", "must be a table ([[policy.allow]])")
            continue
        r = _Reader(item, reader.key(f"allow[{i}]"), reader.problems, reader.base_dir)
        entry_id = r.get("id", str, ..., lambda v: None if v.strip() else "is empty")
        reason = r.get("reason", str, ..., lambda v: None if v.strip() else "must say why")
        expires = r.get("expires", date, ...)
        names = r.get("cameras", list, [])
        models = r.get("models", list, [])
        r.finish()
        for j, name in enumerate(names or []):
            if name not in cameras:
                r.error(f"cameras[{j}]", f"no camera named {name!r}")
        for j, model in enumerate(models or []):
            if not isinstance(model, str) or not model:
                r.error(f"models[{j}]", "must be a model pattern string")
        if entry_id is None or reason is None or expires is None:
            continue
        entries.append(
            AllowEntry(
                id=entry_id.strip(),
                reason=reason.strip(),
                expires=expires,
                cameras=tuple(str(n) for n in names or []),
                models=tuple(str(m) for m in models or []),
            )
        )
    return tuple(entries)


def _mode_tables(
    reader: _Reader, name: str, check_key: Callable[[str], str | None]
) -> dict[str, dict[str, str]]:
    """``[policy.telemetry.<name>.<key>]`` tables of feature modes, keys checked."""
    tables: dict[str, dict[str, str]] = {}
    for key, table in (reader.get(name, dict, {}) or {}).items():
        dotted = f"{name}.{key}"
        problem = check_key(key)
        if problem:
            reader.error(dotted, problem)
            continue
        if not isinstance(table, dict):
            reader.error(dotted, "must be a table")
            continue
        sub = _Reader(table, reader.key(dotted), reader.problems, reader.base_dir)
        tables[key] = _modes(sub)
        sub.finish()
    return tables


def parse_policy(config: Config) -> PolicyConfig:
    """Validate ``config.sections["policy"]``; ConfigError naming each bad key."""
    raw = config.sections.get("policy", {})
    problems: list[tuple[str, str]] = []
    base = Path(config.source).resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(config.source, [("policy", "must be a table ([policy])")])
    top = _Reader(raw, "policy", problems, base)
    non_negative = lambda v: None if v >= 0 else "must be zero (off) or more"  # noqa: E731
    interval = top.get("drift_check_interval", (int, float), 3600, non_negative)
    auto_enforce = top.get("auto_enforce", bool, False)
    timeout = top.get(
        "request_timeout", (int, float), 10, lambda v: None if 0 < v <= 300 else "must be 0..300"
    )
    # A fleet shard's file names every camera of the site (gateway.fleet).
    cameras = {c.name for c in config.cameras} | set(config.site_cameras)

    firmware = _Reader(_sub_table(top, "firmware"), "policy.firmware", problems, base)
    minimum = _version_rules(firmware, "minimum", ...)
    blocked = _version_rules(firmware, "blocked", "*")
    firmware.finish()
    allow = _allow(top, cameras)

    telemetry_raw = _sub_table(top, "telemetry")
    tr = _Reader(telemetry_raw, "policy.telemetry", problems, base)
    defaults = _modes(tr)
    ntp_server = tr.get(
        "ntp_server",
        str,
        None,
        lambda v: None if v.strip() and " " not in v else "must be an IP address or host name",
    )
    per_vendor = _mode_tables(
        tr,
        "vendor",
        lambda vendor: None if vendor in VENDORS else "must be hikvision, dahua or generic",
    )
    per_camera = _mode_tables(
        tr, "camera", lambda name: None if name in cameras else f"no camera named {name!r}"
    )
    tr.finish()
    top.finish()

    if ntp_server is None and config.camera_network is not None:
        ntp_server = config.camera_network.address
    if ntp_server is None:
        wants_gateway_ntp = any(
            {
                **DEFAULT_MODES,
                **defaults,
                **per_vendor.get(c.vendor, {}),
                **per_camera.get(c.name, {}),
            }.get("ntp")
            == "gateway"
            for c in config.cameras
        )
        if wants_gateway_ntp:
            problems.append(
                (
                    "policy.telemetry.ntp_server",
                    "is required when cameras must use the gateway's NTP server and "
                    '[camera_network] is not configured (or set ntp = "allowed")',
                )
            )

    if problems:
        raise ConfigError(config.source, problems)
    return PolicyConfig(
        drift_check_interval=float(interval),
        auto_enforce=bool(auto_enforce),
        request_timeout=float(timeout),
        minimum=minimum,
        blocked=blocked,
        allow=allow,
        telemetry=TelemetryPolicy(
            defaults=defaults, per_vendor=per_vendor, per_camera=per_camera, ntp_server=ntp_server
        ),
    )
