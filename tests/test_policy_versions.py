"""Version parsing/ordering for both vendors, model patterns, and the advisory database."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway.policy.firmware import AffectedRange, evaluate_firmware, load_advisories
from gateway.policy.versions import FirmwareVersion, model_matches


@pytest.mark.parametrize(
    ("vendor", "text", "numbers", "build"),
    [
        ("hikvision", "V5.5.800 build 210628", (5, 5, 800), date(2021, 6, 28)),
        ("hikvision", "V5.7.23_241015", (5, 7, 23), date(2024, 10, 15)),
        ("hikvision", "V5.4.0 Build 160530", (5, 4, 0), date(2016, 5, 30)),
        ("hikvision", "V5.4.41", (5, 4, 41), None),
        ("dahua", "2.800.0000016.0.R, build: 2020-06-05", (2, 800, 16, 0), date(2020, 6, 5)),
        ("dahua", "2.800.0000016.0.R,build:2020-06-05", (2, 800, 16, 0), date(2020, 6, 5)),
        ("dahua", "V2.820.0000000.28.R.230314", (2, 820, 0, 28), date(2023, 3, 14)),
        ("hikvision", "V4.21.000 build 190722", (4, 21, 0), date(2019, 7, 22)),
        ("dahua", "2.622.0000000.18.R, Build Date: 2019-03-29", (2, 622, 0, 18), date(2019, 3, 29)),
        ("dahua", "2.622.0000000.18.R, build:2019-03-29", (2, 622, 0, 18), date(2019, 3, 29)),
    ],
)
def test_parse_both_formats(vendor: str, text: str, numbers: tuple[int, ...], build: date) -> None:
    version = FirmwareVersion.parse(vendor, text)
    assert version.numbers == numbers
    assert version.build == build
    assert str(version) == text


def test_every_firmware_string_form_orders_with_the_others() -> None:
    """The forms firmware generations print, as the clients turn them into text, compare."""
    from gateway.devices.base import DeviceIdentity
    from gateway.devices.dahua import split_version

    hik = [
        DeviceIdentity("hikvision", "m", "s", "", *text.split(" ", 1)).firmware_text()
        for text in ("V4.21.000 build 190722", "V5.4.0 build 160530", "V5.5.800 build 210628")
    ]
    assert [FirmwareVersion.parse("hikvision", t) for t in hik] == sorted(
        FirmwareVersion.parse("hikvision", t) for t in hik
    )
    cgi_old = DeviceIdentity(
        "dahua", "m", "s", "", *split_version("2.622.0000000.18.R, Build Date: 2019-03-29")
    )
    cgi_new = DeviceIdentity(
        "dahua", "m", "s", "", *split_version("2.800.0000016.0.R,build:2020-06-05")
    )
    rpc = DeviceIdentity("dahua", "m", "s", "", "2.800.0000016.0.R", "2021-03-02")
    versions = [FirmwareVersion.parse("dahua", i.firmware_text()) for i in (cgi_old, cgi_new, rpc)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert versions[0].build == date(2019, 3, 29)
    # The same release read through CGI (either form) and RPC is one version.
    same = DeviceIdentity("dahua", "m", "s", "", "2.800.0000016.0.R", "2020-06-05")
    assert FirmwareVersion.parse("dahua", same.firmware_text()) == versions[1]
    raw = FirmwareVersion.parse("dahua", "2.800.0000016.0.R, Build Date: 2020-06-05")
    assert raw == versions[1]


def test_ordering_by_numbers_then_build() -> None:
    hik = [
        FirmwareVersion.parse("hikvision", t)
        for t in (
            "V5.4.0 build 160401",
            "V5.4.0 build 160530",
            "V5.4.41",
            "V5.5.800 build 210628",
            "V5.7.23_241015",
        )
    ]
    assert hik == sorted(hik)
    assert FirmwareVersion.parse("hikvision", "V5.5.800 build 210628") == FirmwareVersion.parse(
        "hikvision", "V5.5.800_210628"
    )
    a = FirmwareVersion.parse("dahua", "2.800.0000016.0.R, build: 2020-06-05")
    b = FirmwareVersion.parse("dahua", "V2.800.0000016.0.R.210601")
    assert a < b


@pytest.mark.parametrize(
    ("vendor", "text", "message"),
    [
        ("hikvision", "five point five", "is not a Hikvision firmware version"),
        ("hikvision", "V5.5.800 build 211399", "is not a YYMMDD date"),
        ("dahua", "2.800, build: today", "is not a Dahua firmware version"),
        ("dahua", "2.800.0000016.0.R, build: 2020-13-40", "the build is not a valid date"),
        ("axis", "10.12.1", "no firmware version format for vendor 'axis'"),
    ],
)
def test_bad_versions_give_clear_errors(vendor: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FirmwareVersion.parse(vendor, text)


@pytest.mark.parametrize(
    ("pattern", "model", "matches"),
    [
        ("IPC-HX3XXX", "IPC-HFW3441E-AS", True),
        ("IPC-HX3XXX", "IPC-HDW3441T-ZAS", True),
        ("IPC-HX3XXX", "IPC-HDBW3441R-ZS", True),
        ("IPC-HX3XXX", "IPC-HFW2431S-S-S2", False),
        ("DS-2CD2xx2F-I", "DS-2CD2132F-IWS", True),
        ("DS-2CD2xx2F-I", "DS-2CD2142FWD-I", False),
        ("DS-2CD2xx2FWD", "DS-2CD2142FWD-I", True),
        ("NVR4XXX", "NVR4108HS-8P-4KS2", True),
        ("NVR4XXX", "NVR5216-16P-4KS2E", False),
        ("SD*", "SD49225XA-HNR", True),
        ("DS-2CD*", "IPC-HFW2431S", False),
    ],
)
def test_model_patterns(pattern: str, model: str, matches: bool) -> None:
    assert model_matches(pattern, model) is matches


def _example_model(pattern: str) -> str:
    """A concrete model of ``pattern``: X -> a digit, * -> a plausible suffix."""
    return pattern.replace("x", "1").replace("X", "1").replace("*", "1234")


def _affected_and_fixed(vendor: str, rng: AffectedRange) -> tuple[str, str]:
    """An affected version inside ``rng`` and the fixed one the advisory names."""
    if vendor == "hikvision":

        def fmt(numbers: tuple[int, ...], build: date) -> str:
            return "V" + ".".join(map(str, numbers)) + f" build {build:%y%m%d}"
    else:

        def fmt(numbers: tuple[int, ...], build: date) -> str:
            return ".".join(map(str, numbers)) + f".R, build: {build:%Y-%m-%d}"

    bound = rng.version_to or rng.version_from
    numbers = bound.numbers if bound else ((5, 5, 0) if vendor == "hikvision" else (2, 800, 0, 0))
    if rng.version_from is not None and rng.version_to is None:
        numbers = rng.version_from.numbers
    if rng.build_before is not None:
        build = rng.build_before - timedelta(days=1)
    elif rng.build_to is not None:
        build = rng.build_to
    elif bound is not None and bound.build is not None:
        build = bound.build
    else:
        build = date(2019, 1, 1)
    affected = fmt(numbers, build)
    if rng.fixed is not None:
        fixed = rng.fixed.raw
    elif rng.fixed_build is not None:
        fixed = fmt(numbers, rng.fixed_build)
    else:
        # No named fix: the first build after the last affected one.
        assert rng.version_to is not None and rng.version_to.build is not None
        fixed = fmt(rng.version_to.numbers, rng.version_to.build + timedelta(days=1))
    return affected, fixed


ADVISORIES = load_advisories()
REQUIRED = {
    "CVE-2017-7921",
    "CVE-2017-7923",
    "CVE-2021-36260",
    "CVE-2025-66177",
    "CVE-2021-33044",
    "CVE-2021-33045",
    "CVE-2021-33046",
    "CVE-2022-30563",
    "CVE-2024-39950",
    "CVE-2025-31700",
    "CVE-2017-9315",
}


def test_database_has_the_required_entries_with_sources() -> None:
    assert {a.id for a in ADVISORIES} >= REQUIRED
    for advisory in ADVISORIES:
        assert advisory.sources and all(s.startswith("https://") for s in advisory.sources)
        assert advisory.cvss is not None and 0 < advisory.cvss <= 10
        assert advisory.affected
    kev = {a.id for a in ADVISORIES if a.kev}
    assert {"CVE-2021-36260", "CVE-2021-33044", "CVE-2021-33045"} <= kev


@pytest.mark.parametrize("advisory", ADVISORIES, ids=[a.id for a in ADVISORIES])
def test_every_entry_matches_an_affected_build_and_not_its_fix(advisory) -> None:
    for rng in advisory.affected:
        for pattern in rng.models:
            model = _example_model(pattern)
            affected, fixed = _affected_and_fixed(advisory.vendor, rng)
            hits = evaluate_firmware(advisory.vendor, model, affected, advisories=ADVISORIES)
            assert advisory.id in {f.id for f in hits}, (model, affected)
            hit = next(f for f in hits if f.id == advisory.id)
            assert hit.kev is advisory.kev and hit.sources == advisory.sources
            assert "never pushes firmware" in hit.action
            clean = evaluate_firmware(advisory.vendor, model, fixed, advisories=ADVISORIES)
            assert advisory.id not in {f.id for f in clean}, (model, fixed)


def test_vendor_and_unparsable_firmware() -> None:
    # A Dahua advisory never matches a Hikvision camera of a look-alike model.
    assert (
        evaluate_firmware(
            "hikvision", "IPC-HFW3441E", "V5.5.800 build 200101", advisories=ADVISORIES
        )
        == []
    )
    findings = evaluate_firmware("dahua", "IPC-HFW3441E", "garbage", advisories=ADVISORIES)
    assert [f.id for f in findings] == ["firmware.unparsed"]
