"""Firmware version strings of both vendors, and model patterns with X wildcards.

Hikvision: ``V5.5.800 build 210628`` (deviceInfo firmwareVersion + firmwareReleasedDate; NVRs
``V4.21.000 build 190722``) or ``V5.7.23_241015`` (the form advisories print). Dahua:
``2.800.0000016.0.R,build:2020-06-05`` or ``2.622.0000000.18.R, Build Date: 2019-03-29``
(getSoftwareVersion, by firmware generation; RPC's ``{Version, BuildDate}`` is joined into
the first form) or ``V2.820.0000000.28.R.230314`` (file names, advisories).
A version orders by its numbers, then its build date; advisories that only give build dates
compare the date alone (:meth:`FirmwareVersion.build`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date

_HIK = re.compile(
    r"^[Vv]?(?P<nums>\d+(?:\.\d+){1,3})(?:\s*(?:[_\s]|build)\s*(?:build\s*)?(?P<build>\d{6}))?$",
    re.I,
)
_DAHUA = re.compile(
    r"^[Vv]?(?P<nums>\d+(?:\.\d+){2,4})(?:\.(?P<tag>[A-Z]+))?"
    r"(?:\.(?P<short>\d{6}))?"
    r"(?:\s*,?\s*build(?:\s*date)?\s*:?\s*(?P<build>\d{4}-?\d{2}-?\d{2}))?$",
    re.I,
)


def _yymmdd(text: str) -> date:
    return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))


def _ymd(text: str) -> date:
    digits = text.replace("-", "")
    return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))


@functools.total_ordering
@dataclass(frozen=True)
class FirmwareVersion:
    vendor: str
    numbers: tuple[int, ...]
    build: date | None
    raw: str

    @classmethod
    def parse(cls, vendor: str, text: str) -> FirmwareVersion:
        raw = " ".join(text.split())
        if vendor == "hikvision":
            match = _HIK.match(raw)
            if match is None:
                raise ValueError(
                    f"{text!r} is not a Hikvision firmware version"
                    " (expected e.g. 'V5.5.800 build 210628' or 'V5.7.23_241015')"
                )
            build_text = match.group("build")
            try:
                build = _yymmdd(build_text) if build_text else None
            except ValueError:
                raise ValueError(f"{text!r}: build {build_text} is not a YYMMDD date") from None
        elif vendor == "dahua":
            match = _DAHUA.match(raw)
            if match is None:
                raise ValueError(
                    f"{text!r} is not a Dahua firmware version (expected e.g."
                    " '2.800.0000016.0.R, build: 2020-06-05' or 'V2.820.0000000.28.R.230314')"
                )
            try:
                if match.group("build"):
                    build = _ymd(match.group("build"))
                elif match.group("short"):
                    build = _yymmdd(match.group("short"))
                else:
                    build = None
            except ValueError:
                raise ValueError(f"{text!r}: the build is not a valid date") from None
        else:
            raise ValueError(f"no firmware version format for vendor {vendor!r}")
        numbers = tuple(int(n) for n in match.group("nums").split("."))
        return cls(vendor, numbers, build, raw)

    def _key(self) -> tuple[tuple[int, ...], date]:
        return self.numbers, self.build or date.min

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, FirmwareVersion) or other.vendor != self.vendor:
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FirmwareVersion):
            return NotImplemented
        return self.vendor == other.vendor and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.vendor, self._key()))

    def __str__(self) -> str:
        return self.raw


def parse_date(text: str) -> date:
    """``2021-06-01``, ``20210601`` or a Hikvision ``210601``."""
    digits = text.strip().replace("-", "")
    if not digits.isdigit() or len(digits) not in (6, 8):
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)")
    try:
        return _yymmdd(digits) if len(digits) == 6 else _ymd(digits)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date") from None


@functools.lru_cache(maxsize=512)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for run in re.finditer(r"[Xx]+|\*|[^Xx*]+", pattern):
        token = run.group(0)
        if token == "*":
            parts.append(".*")
        elif token[0] in "Xx":
            # A run of n X stands for n digits/letters, or for a letter group such as the
            # Dahua form factor ("IPC-HX3XXX" covers IPC-HDW3441 and IPC-HFW3441).
            parts.append(f"(?:[A-Z0-9]{{{len(token)}}}|[A-Z]+)")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts), re.I)


def model_matches(pattern: str, model: str) -> bool:
    """Whether ``model`` belongs to ``pattern``: a prefix match (suffixes such as ``-I``,
    ``-IWS``, ``-ZAS`` are variants of the same series); ``X`` is a wildcard, ``*`` any text."""
    return _pattern_regex(pattern.strip()).match(model.strip()) is not None
