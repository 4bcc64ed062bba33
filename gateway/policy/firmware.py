"""Firmware policy: the shipped advisory database and the site's own firmware rules.

Pure functions: identity in, findings out. The gateway never pushes firmware; every finding
recommends an upgrade the integrator performs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Any

from gateway.policy.findings import Finding, severity_from_cvss
from gateway.policy.versions import FirmwareVersion, model_matches, parse_date


@dataclass(frozen=True)
class AffectedRange:
    models: tuple[str, ...]
    vendor: str
    version_from: FirmwareVersion | None = None
    version_to: FirmwareVersion | None = None
    version_before: FirmwareVersion | None = None
    build_from: date | None = None
    build_to: date | None = None
    build_before: date | None = None
    fixed: FirmwareVersion | None = None
    fixed_build: date | None = None
    fixed_note: str = ""

    def specificity(self, model: str) -> tuple[int, int]:
        """How precisely this range names ``model``: literal characters of the best pattern,
        then the length of its literal prefix; (-1, -1) when it does not cover the model."""
        best = (-1, -1)
        for pattern in self.models:
            if model_matches(pattern, model):
                literal = sum(c not in "Xx*" for c in pattern)
                prefix = next((i for i, c in enumerate(pattern) if c in "Xx*"), len(pattern))
                best = max(best, (literal, prefix))
        return best

    def needs_build(self) -> bool:
        return any(b is not None for b in (self.build_from, self.build_to, self.build_before))

    def matches(self, model: str, version: FirmwareVersion) -> bool:
        if not any(model_matches(p, model) for p in self.models):
            return False
        return self.covers_version(version)

    def covers_version(self, version: FirmwareVersion) -> bool:
        if self.version_from is not None and version < self.version_from:
            return False
        if self.version_to is not None and version > self.version_to:
            return False
        if self.version_before is not None and version >= self.version_before:
            return False
        if self.needs_build():
            build = version.build
            if build is None:
                return False
            if self.build_from is not None and build < self.build_from:
                return False
            if self.build_to is not None and build > self.build_to:
                return False
            if self.build_before is not None and build >= self.build_before:
                return False
        return True

    def fixed_text(self) -> str:
        if self.fixed is not None:
            return f"{self.fixed} or later"
        if self.fixed_build is not None:
            return f"a build dated {self.fixed_build.isoformat()} or later"
        return self.fixed_note or "a fixed release from the vendor"


@dataclass(frozen=True)
class Advisory:
    id: str
    vendor: str
    title: str
    cvss: float | None
    kev: bool
    kev_added: str | None
    sources: tuple[str, ...]
    affected: tuple[AffectedRange, ...]

    @property
    def severity(self) -> str:
        return severity_from_cvss(self.cvss)

    def match(self, vendor: str, model: str, version: FirmwareVersion) -> AffectedRange | None:
        """The range that applies to ``model`` if ``version`` is affected.

        When several ranges cover a model (DS-2CD29xxG0 is also a DS-2CD2xx1G0), the most
        specific pattern decides, since vendors list such sub-series with their own fixes.
        """
        if vendor != self.vendor:
            return None
        ranked = [(r.specificity(model), r) for r in self.affected]
        best = max((score for score, _ in ranked), default=(-1, -1))
        if best[0] < 0:
            return None
        for score, affected in ranked:
            if score == best and affected.covers_version(version):
                return affected
        return None


def _version(vendor: str, text: Any, where: str) -> FirmwareVersion | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: must be a version string")
    try:
        return FirmwareVersion.parse(vendor, text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _date(text: Any, where: str) -> date | None:
    if text is None:
        return None
    try:
        return parse_date(str(text))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


RANGE_KEYS = {
    "models",
    "from",
    "to",
    "before",
    "build_from",
    "build_to",
    "build_before",
    "fixed",
    "fixed_build",
    "fixed_note",
}


def parse_advisories(data: Any) -> tuple[Advisory, ...]:
    """Validate the advisory document; ValueError naming the entry and field on problems."""
    if not isinstance(data, dict) or not isinstance(data.get("advisories"), list):
        raise ValueError("advisory file must be an object with an 'advisories' list")
    result: list[Advisory] = []
    for i, entry in enumerate(data["advisories"]):
        where = f"advisories[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object")
        for key in ("id", "vendor", "title", "sources", "affected"):
            if key not in entry:
                raise ValueError(f"{where}: missing {key!r}")
        vendor = entry["vendor"]
        if vendor not in ("hikvision", "dahua"):
            raise ValueError(f"{where}.vendor: unknown vendor {vendor!r}")
        sources = entry["sources"]
        if not sources or not all(isinstance(s, str) and s.startswith("https://") for s in sources):
            raise ValueError(f"{where}.sources: needs at least one https:// source")
        ranges: list[AffectedRange] = []
        for j, rng in enumerate(entry["affected"]):
            rwhere = f"{where}.affected[{j}]"
            unknown = set(rng) - RANGE_KEYS
            if unknown:
                raise ValueError(f"{rwhere}: unknown keys {sorted(unknown)}")
            models = rng.get("models")
            if not models or not all(isinstance(m, str) and m for m in models):
                raise ValueError(f"{rwhere}.models: needs at least one model pattern")
            ranges.append(
                AffectedRange(
                    models=tuple(models),
                    vendor=vendor,
                    version_from=_version(vendor, rng.get("from"), f"{rwhere}.from"),
                    version_to=_version(vendor, rng.get("to"), f"{rwhere}.to"),
                    version_before=_version(vendor, rng.get("before"), f"{rwhere}.before"),
                    build_from=_date(rng.get("build_from"), f"{rwhere}.build_from"),
                    build_to=_date(rng.get("build_to"), f"{rwhere}.build_to"),
                    build_before=_date(rng.get("build_before"), f"{rwhere}.build_before"),
                    fixed=_version(vendor, rng.get("fixed"), f"{rwhere}.fixed"),
                    fixed_build=_date(rng.get("fixed_build"), f"{rwhere}.fixed_build"),
                    fixed_note=str(rng.get("fixed_note", "")),
                )
            )
        cvss = entry.get("cvss")
        result.append(
            Advisory(
                id=str(entry["id"]),
                vendor=vendor,
                title=str(entry["title"]),
                cvss=float(cvss) if cvss is not None else None,
                kev=bool(entry.get("kev", False)),
                kev_added=entry.get("kev_added"),
                sources=tuple(sources),
                affected=tuple(ranges),
            )
        )
    return tuple(result)


@functools.lru_cache(maxsize=1)
def load_advisories() -> tuple[Advisory, ...]:
    """The advisory database shipped in the package (gateway/policy/advisories.json)."""
    text = resources.files("gateway.policy").joinpath("advisories.json").read_text("utf-8")
    return parse_advisories(json.loads(text))


@dataclass(frozen=True)
class VersionRule:
    """A site rule: ``minimum`` (older is a finding) or ``blocked`` (exactly this version)."""

    vendor: str
    model: str
    version: FirmwareVersion
    reason: str = ""


def evaluate_firmware(
    vendor: str,
    model: str,
    firmware_text: str,
    *,
    advisories: tuple[Advisory, ...],
    minimum: tuple[VersionRule, ...] = (),
    blocked: tuple[VersionRule, ...] = (),
) -> list[Finding]:
    """Findings for one camera's firmware: matched advisories, then site rules."""
    try:
        version = FirmwareVersion.parse(vendor, firmware_text)
    except ValueError as exc:
        return [
            Finding(
                id="firmware.unparsed",
                kind="firmware",
                severity="medium",
                title="Firmware version not understood; advisories could not be checked",
                action="Check the firmware version by hand against the vendor's advisories.",
                current=firmware_text,
                notes=(str(exc),),
            )
        ]
    findings: list[Finding] = []
    for advisory in advisories:
        affected = advisory.match(vendor, model, version)
        if affected is None:
            continue
        kev = " It is in CISA's Known Exploited Vulnerabilities catalog." if advisory.kev else ""
        findings.append(
            Finding(
                id=advisory.id,
                kind="vulnerability",
                severity=advisory.severity,
                title=advisory.title,
                action=(
                    f"Upgrade the firmware to {affected.fixed_text()} (the gateway never pushes "
                    f"firmware); until then keep the camera reachable only through the gateway."
                    f"{kev}"
                ),
                current=str(version),
                desired=affected.fixed_text(),
                cvss=advisory.cvss,
                kev=advisory.kev,
                sources=advisory.sources,
            )
        )
    for rule in minimum:
        if rule.vendor == vendor and model_matches(rule.model, model) and version < rule.version:
            findings.append(
                Finding(
                    id="firmware.minimum",
                    kind="firmware",
                    severity="high",
                    title=f"Firmware older than the site minimum for {rule.model}",
                    action=f"Upgrade the firmware to {rule.version} or later.",
                    current=str(version),
                    desired=f"{rule.version} or later",
                    notes=(rule.reason,) if rule.reason else (),
                )
            )
    for rule in blocked:
        if rule.vendor == vendor and model_matches(rule.model, model) and version == rule.version:
            findings.append(
                Finding(
                    id="firmware.blocked",
                    kind="firmware",
                    severity="high",
                    title="Firmware version blocked by site policy",
                    action="Install a different firmware version"
                    + (f" ({rule.reason})" if rule.reason else "."),
                    current=str(version),
                    notes=(rule.reason,) if rule.reason else (),
                )
            )
    return findings
