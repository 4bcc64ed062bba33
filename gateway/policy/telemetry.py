"""Telemetry policy: which vendor settings must have which value, and the difference.

A *feature* (``cloud``, ``upnp``, ``ntp``, ...) is what the policy speaks of; each vendor
maps it to its own settings (Hikvision ``EZVIZ.enabled``, Dahua ``T2UServer.Enable``). The
desired mode of a feature is ``off`` or ``allowed`` (``ntp``: ``gateway`` or ``allowed``),
set for all cameras, per vendor and per camera. Pure: settings in, differences out.

Generic cameras are read through ONVIF, which shows only the clock (NTP) and WS-Discovery
settings; every other feature the policy wants off is reported as not checkable rather than
passed (:func:`unverifiable_findings`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.devices.optional import NOT_AVAILABLE, REASON, table_missing, table_of
from gateway.policy.findings import Finding

FEATURES = (
    "cloud",
    "upnp",
    "ddns",
    "ntp",
    "telnet",
    "ssh",
    "email",
    "ftp",
    "snmp",
    "bonjour",
    "multicast",
    "discovery",
)
MODES = {feature: ("off", "allowed") for feature in FEATURES} | {"ntp": ("gateway", "allowed")}
# WS-Discovery only answers on the camera network, which the gateway isolates: allowed unless
# a site says otherwise.
DEFAULT_MODES = {feature: "off" for feature in FEATURES} | {
    "ntp": "gateway",
    "discovery": "allowed",
}
# Vendors whose settings the gateway can change; the others (generic: ONVIF) are audit-only.
WRITABLE_VENDORS = ("hikvision", "dahua")

# (feature, setting key pattern, value when the feature is off)
_OFF_RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "hikvision": (
        ("cloud", r"EZVIZ\.enabled", "false"),
        ("cloud", r"Ehome\.enabled", "false"),
        ("upnp", r"UPnP\.enabled", "false"),
        ("upnp", r"UPnPPorts\.enabled", "false"),
        ("ddns", r"DDNS\.enabled", "false"),
        ("telnet", r"telnetd\.enabled", "false"),
        ("ssh", r"ssh\.enabled", "false"),
        ("email", r"mailing\.mailing\[\d+\]\.enabled", "false"),
        ("ftp", r"ftp\.FTPNotification\[\d+\]\.enabled", "false"),
    ),
    "dahua": (
        ("cloud", r"T2UServer\.Enable", "false"),
        ("cloud", r"VSP_PaaS\.Enable", "false"),
        ("upnp", r"UPnP\.Enable", "false"),
        ("ddns", r"DDNS\[\d+\]\.Enable", "false"),
        ("telnet", r"Telnet\.Enable", "false"),
        ("ssh", r"SSHD\.Enable", "false"),
        ("email", r"Email\.Enable", "false"),
        ("ftp", r"NAS\[\d+\]\.Enable", "false"),
        ("snmp", r"SNMP\.Enable", "false"),
        ("bonjour", r"Bonjour\.Enable", "false"),
        ("multicast", r"Multicast\.\w+\[\d+\]\.Enable", "false"),
    ),
    "generic": (("discovery", r"onvif\.Discovery\.Mode", "NonDiscoverable"),),
}
_COMPILED = {
    vendor: tuple((f, re.compile(p), v) for f, p, v in rules)
    for vendor, rules in _OFF_RULES.items()
}

FEATURE_INFO: dict[str, tuple[str, str]] = {
    # feature: (severity, what it means when on)
    "cloud": ("high", "Vendor cloud / P2P connection enabled"),
    "upnp": ("high", "UPnP enabled (opens router ports)"),
    "ddns": ("medium", "Dynamic DNS registration enabled"),
    "ntp": ("medium", "Time not taken from the gateway's NTP server"),
    "telnet": ("high", "Telnet enabled"),
    "ssh": ("medium", "SSH enabled"),
    "email": ("low", "E-mail push enabled"),
    "ftp": ("low", "FTP upload enabled"),
    "snmp": ("medium", "SNMP enabled"),
    "bonjour": ("low", "Bonjour/mDNS announcements enabled"),
    "multicast": ("low", "Multicast streaming enabled"),
    "discovery": ("low", "ONVIF WS-Discovery announcements enabled"),
}


# Desired settings some firmware does not have, harmlessly (the NTP port is 123 without it).
OPTIONAL_KEYS = frozenset({"ntpServer.portNo", "NTP.Port"})


def supported_features(vendor: str) -> tuple[str, ...]:
    features = {f for f, _, _ in _OFF_RULES.get(vendor, ())}
    if vendor in _OFF_RULES:
        features.add("ntp")
    return tuple(f for f in FEATURES if f in features)


def ntp_desired(
    vendor: str, address: str, settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Settings that point the camera's clock at ``address`` (IP or host name).

    Hikvision firmware whose NTPServer document has no ``ipAddress`` element (some NVRs)
    is given an IP address as its host name, the one form it has.
    """
    try:
        ipaddress.ip_address(address)
        is_ip = True
    except ValueError:
        is_ip = False
    if vendor == "hikvision":
        desired = {"time.timeMode": "NTP", "ntpServer.portNo": "123"}
        have = settings or {}
        host_only = "ntpServer.ipAddress" not in have and "ntpServer.hostName" in have
        if is_ip and not host_only:
            desired |= {
                "ntpServer.addressingFormatType": "ipaddress",
                "ntpServer.ipAddress": address,
            }
        else:
            desired |= {"ntpServer.addressingFormatType": "hostname", "ntpServer.hostName": address}
        return desired
    if vendor == "dahua":
        return {"NTP.Enable": "true", "NTP.Address": address, "NTP.Port": "123"}
    if vendor == "generic":
        # As ONVIF GetNTP reports it: servers set by hand, and only the gateway's.
        return {"onvif.NTP.FromDHCP": "false", "onvif.NTP.Manual": address}
    return {}


@dataclass(frozen=True)
class SettingDiff:
    key: str
    feature: str
    current: str | None  # None: the camera does not report this setting
    desired: str


@dataclass(frozen=True)
class TelemetryPolicy:
    defaults: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODES))
    per_vendor: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    per_camera: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    ntp_server: str | None = None

    def modes_for(self, camera: str, vendor: str) -> dict[str, str]:
        modes = dict(DEFAULT_MODES)
        modes.update(self.defaults)
        modes.update(self.per_vendor.get(vendor, {}))
        modes.update(self.per_camera.get(camera, {}))
        return modes

    def desired_for(
        self, camera: str, vendor: str, settings: Mapping[str, str]
    ) -> dict[str, tuple[str, str]]:
        """``{key: (feature, desired value)}`` for the settings this camera has."""
        modes = self.modes_for(camera, vendor)
        desired: dict[str, tuple[str, str]] = {}
        for feature, pattern, value in _COMPILED.get(vendor, ()):
            if modes.get(feature) != "off":
                continue
            for key in settings:
                if pattern.fullmatch(key):
                    desired[key] = (feature, value)
        if modes.get("ntp") == "gateway" and self.ntp_server:
            for key, value in ntp_desired(vendor, self.ntp_server, settings).items():
                desired[key] = ("ntp", value)
        return desired


@dataclass(frozen=True)
class NotAvailable:
    """A setting the policy would check or set that this camera's firmware does not have."""

    key: str  # a setting key, or a table/document name when the whole table is refused
    feature: str

    def to_json(self) -> dict[str, str]:
        return {"setting": self.key, "feature": self.feature, "reason": REASON}


def _absent(key: str, settings: Mapping[str, str]) -> bool:
    """Whether ``key`` cannot be checked or set here: its table is refused, or it is an
    optional key the firmware's table does not have."""
    if table_missing(settings, key):
        return True
    return key in OPTIONAL_KEYS and key not in settings


def not_available(
    policy: TelemetryPolicy, camera: str, vendor: str, settings: Mapping[str, str]
) -> list[NotAvailable]:
    """What the policy governs on ``vendor`` cameras that this camera does not have."""
    modes = policy.modes_for(camera, vendor)
    found: dict[str, NotAvailable] = {}
    for feature, pattern, _value in _COMPILED.get(vendor, ()):
        table = table_of(pattern.pattern)
        if modes.get(feature) == "off" and settings.get(table) == NOT_AVAILABLE:
            found.setdefault(table, NotAvailable(table, feature))
    if modes.get("ntp") == "gateway" and policy.ntp_server:
        for key in ntp_desired(vendor, policy.ntp_server, settings):
            if _absent(key, settings):
                where = table_of(key) if table_missing(settings, key) else key
                found.setdefault(where, NotAvailable(where, "ntp"))
    return sorted(found.values(), key=lambda n: n.key)


def _same(current: str | None, desired: str) -> bool:
    if current is None:
        return False
    if desired in ("true", "false"):
        return current.strip().lower() == desired
    return current.strip() == desired


def differences(
    policy: TelemetryPolicy, camera: str, vendor: str, settings: Mapping[str, str]
) -> list[SettingDiff]:
    diffs: list[SettingDiff] = []
    for key, (feature, value) in sorted(policy.desired_for(camera, vendor, settings).items()):
        if _absent(key, settings):
            continue  # reported by not_available()
        current = settings.get(key)
        if not _same(current, value):
            diffs.append(SettingDiff(key, feature, current, value))
    return diffs


def findings_for(
    diffs: list[SettingDiff], drifted: frozenset[str] = frozenset(), *, enforceable: bool = True
) -> list[Finding]:
    findings: list[Finding] = []
    how = (
        "onvif-gateway enforce does this"
        if enforceable
        else "in the camera's own configuration; the gateway only reads it through ONVIF"
    )
    for diff in diffs:
        severity, title = FEATURE_INFO[diff.feature]
        shown = diff.current if diff.current is not None else "(not set)"
        findings.append(
            Finding(
                id=diff.key,
                kind="telemetry",
                severity=severity,
                title=title,
                action=f"Set {diff.key} to {diff.desired} ({how}).",
                feature=diff.feature,
                current=shown,
                desired=diff.desired,
                drift=diff.key in drifted,
            )
        )
    return findings


def unverifiable_findings(policy: TelemetryPolicy, camera: str, vendor: str) -> list[Finding]:
    """Features the policy wants off that ``vendor``'s API cannot show: one finding each.

    Their id is ``<feature>.not_checkable``; once checked by hand, a site records that with a
    ``[[policy.allow]]`` entry (and an expiry) instead of the gateway assuming compliance.
    """
    visible = set(supported_features(vendor))
    findings: list[Finding] = []
    for feature, mode in policy.modes_for(camera, vendor).items():
        if mode != "off" or feature in visible:
            continue
        findings.append(
            Finding(
                id=f"{feature}.not_checkable",
                kind="telemetry",
                severity="info",
                title=f"{FEATURE_INFO[feature][1]}: not checkable through this camera's API",
                action=(
                    f"Check in the camera's own configuration that {feature} is off, then "
                    f"record it as an accepted item ([[policy.allow]] id = "
                    f'"{feature}.not_checkable") with a review date.'
                ),
                feature=feature,
                current="unknown",
                desired="off",
            )
        )
    return findings


def enabled_services(vendor: str, settings: Mapping[str, str]) -> list[str]:
    """Features switched on, for the inventory ("which services are on")."""
    on: set[str] = set()
    for feature, pattern, off_value in _COMPILED.get(vendor, ()):
        for key, value in settings.items():
            if pattern.fullmatch(key) and value.strip().lower() != off_value:
                on.add(feature)
    if vendor == "hikvision" and settings.get("time.timeMode") == "NTP":
        on.add("ntp")
    if vendor == "dahua" and settings.get("NTP.Enable", "").lower() == "true":
        on.add("ntp")
    if vendor == "generic" and (
        settings.get("onvif.NTP.Manual") or settings.get("onvif.NTP.FromDHCP") == "true"
    ):
        on.add("ntp")
    return [f for f in FEATURES if f in on]
