"""RTSP header values: CSeq, Session, Range (npt), RTP-Info and option-tag lists, parsed and
formatted, and the RFC 2326 ``token`` grammar they and the message parser share."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_cseq(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise ValueError(f"invalid CSeq {value[:20]!r}")
    return int(text)


@dataclass(frozen=True)
class SessionHeader:
    """``Session: id[;timeout=seconds]``."""

    session_id: str
    timeout: int | None = None

    @classmethod
    def parse(cls, value: str) -> SessionHeader:
        parts = [p.strip() for p in value.split(";")]
        session_id = parts[0]
        # RFC 2326 allows only [A-Za-z0-9$-_.+]; cameras use more, so accept visible ASCII.
        if not session_id or not re.fullmatch(r"[!-+\--~]+", session_id):
            raise ValueError(f"invalid session id {session_id[:40]!r}")
        timeout = None
        for param in parts[1:]:
            name, _, val = param.partition("=")
            if name.strip().lower() == "timeout":
                val = val.strip()
                if not val.isdigit() or not val.isascii() or len(val) > 9:
                    raise ValueError(f"invalid session timeout {val[:20]!r}")
                timeout = int(val)
        return cls(session_id, timeout)

    def __str__(self) -> str:
        if self.timeout is None:
            return self.session_id
        return f"{self.session_id};timeout={self.timeout}"


_NPT_TIME_RE = re.compile(r"^(?:(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)|(\d+(?:\.\d*)?))$")


def _parse_npt_time(text: str) -> float:
    match = _NPT_TIME_RE.match(text)
    if match is None:
        raise ValueError(f"invalid npt time {text[:30]!r}")
    hours, minutes, seconds, plain = match.groups()
    if plain is not None:
        return float(plain)
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _format_npt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True)
class NptRange:
    """``Range: npt=start-[end]``; ``start is None`` means ``now``, ``end is None`` open."""

    start: float | None
    end: float | None = None

    @classmethod
    def parse(cls, value: str) -> NptRange:
        spec = value.split(";", 1)[0].strip()
        unit, sep, rng = spec.partition("=")
        if not sep or unit.strip().lower() != "npt":
            raise ValueError(f"unsupported range {value[:40]!r} (only npt)")
        first, dash, last = rng.strip().partition("-")
        if not dash:
            raise ValueError(f"range {value[:40]!r} has no '-'")
        first, last = first.strip(), last.strip()
        if not first and not last:
            raise ValueError(f"range {value[:40]!r} has neither start nor end")
        start = None if first in ("now", "") else _parse_npt_time(first)
        end = _parse_npt_time(last) if last else None
        if start is not None and end is not None and end < start:
            raise ValueError(f"range end {end} before start {start}")
        return cls(start, end)

    def __str__(self) -> str:
        first = "now" if self.start is None else _format_npt(self.start)
        last = "" if self.end is None else _format_npt(self.end)
        return f"npt={first}-{last}"


@dataclass(frozen=True)
class RtpInfo:
    """One entry of ``RTP-Info: url=...;seq=...;rtptime=...``."""

    url: str
    seq: int | None = None
    rtptime: int | None = None

    def __str__(self) -> str:
        out = f"url={self.url}"
        if self.seq is not None:
            out += f";seq={self.seq}"
        if self.rtptime is not None:
            out += f";rtptime={self.rtptime}"
        return out


def parse_rtp_info(value: str) -> list[RtpInfo]:
    """Entries of an RTP-Info header. URLs may contain commas, so split only before ``url=``."""
    entries: list[RtpInfo] = []
    for chunk in re.split(r",\s*(?=url=)", value.strip()):
        if not chunk:
            continue
        url: str | None = None
        seq: int | None = None
        rtptime: int | None = None
        for param in chunk.split(";"):
            name, _, val = param.strip().partition("=")
            name = name.lower()
            if name == "url":
                url = val.strip().strip('"')
            elif name in ("seq", "rtptime"):
                val = val.strip()
                if not val.isdigit() or not val.isascii() or len(val) > 10:
                    raise ValueError(f"invalid RTP-Info {name} {val[:20]!r}")
                number = int(val)
                limit = 0xFFFF if name == "seq" else 0xFFFFFFFF
                if number > limit:
                    raise ValueError(f"RTP-Info {name} {number} out of range")
                if name == "seq":
                    seq = number
                else:
                    rtptime = number
        if not url:
            raise ValueError(f"RTP-Info entry without url: {chunk[:60]!r}")
        entries.append(RtpInfo(url, seq, rtptime))
    return entries


def format_rtp_info(entries: Iterable[RtpInfo]) -> str:
    return ",".join(str(e) for e in entries)


def parse_token_list(value: str) -> list[str]:
    """Comma-separated tokens (Public, Require, Proxy-Require, Unsupported, Supported)."""
    items = [item.strip() for item in value.split(",")]
    out = [item for item in items if item]
    for item in out:
        if not TOKEN_RE.match(item):
            raise ValueError(f"invalid token {item[:40]!r} in list")
    return out
