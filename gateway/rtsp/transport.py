"""The RTSP ``Transport`` header (RFC 2326 section 12.39).

A request may offer several alternatives separated by commas; the response names exactly one.
Parameters we do not model are kept (in order) in ``extra`` so a value survives a round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

PortRange = tuple[int, int]

_TRANSPORT_RE = re.compile(r"^([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)(?:/([A-Za-z0-9_-]+))?$")
_RANGE_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def _parse_range(name: str, value: str, maximum: int) -> PortRange:
    match = _RANGE_RE.match(value.strip())
    if match is None:
        raise ValueError(f"Transport {name}={value[:30]!r} is not a number or a range a-b")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if first > maximum or last > maximum:
        raise ValueError(f"Transport {name}={value} out of range 0-{maximum}")
    if last < first:
        raise ValueError(f"Transport {name}={value}: end before start")
    return first, last


def _format_range(values: PortRange) -> str:
    first, last = values
    return str(first) if first == last else f"{first}-{last}"


def _parse_int(name: str, value: str, maximum: int) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or int(text) > maximum:
        raise ValueError(f"Transport {name}={value[:30]!r} must be an integer 0-{maximum}")
    return int(text)


@dataclass(frozen=True)
class TransportSpec:
    """One transport alternative, e.g. ``RTP/AVP/TCP;unicast;interleaved=0-1``.

    Port and channel ranges are ``(first, last)``; a single number ``n`` is ``(n, n)``.
    """

    protocol: str = "RTP"
    profile: str = "AVP"
    lower_transport: str | None = None  # "UDP" | "TCP" | None (= UDP, left implicit)
    multicast: bool | None = None  # None: neither "unicast" nor "multicast" was given
    interleaved: PortRange | None = None
    client_port: PortRange | None = None
    server_port: PortRange | None = None
    port: PortRange | None = None  # multicast RTP/RTCP ports
    ssrc: int | None = None
    mode: str | None = None  # upper case, unquoted: "PLAY", "RECORD"
    ttl: int | None = None
    destination: str | None = None
    source: str | None = None
    append: bool = False
    extra: tuple[str, ...] = field(default=())

    @property
    def is_tcp(self) -> bool:
        return (self.lower_transport or "UDP").upper() == "TCP"

    @property
    def is_multicast(self) -> bool:
        return bool(self.multicast)

    @classmethod
    def parse(cls, value: str) -> TransportSpec:
        params = [p.strip() for p in value.strip().split(";")]
        match = _TRANSPORT_RE.match(params[0])
        if match is None:
            raise ValueError(f"invalid transport specifier {params[0][:40]!r}")
        protocol, profile, lower = match.group(1), match.group(2), match.group(3)
        if protocol.upper() != "RTP":
            raise ValueError(f"unsupported transport protocol {protocol!r}")
        if lower is not None and lower.upper() not in ("UDP", "TCP"):
            raise ValueError(f"unsupported lower transport {lower!r}")
        fields: dict[str, object] = {
            "protocol": protocol.upper(),
            "profile": profile.upper(),
            "lower_transport": lower.upper() if lower else None,
        }
        extra: list[str] = []
        for param in params[1:]:
            if not param:
                continue
            name, sep, val = param.partition("=")
            key = name.strip().lower()
            if key in ("unicast", "multicast") and not sep:
                if fields.get("multicast") is not None:
                    raise ValueError("Transport gives both unicast and multicast")
                fields["multicast"] = key == "multicast"
            elif key == "append" and not sep:
                fields["append"] = True
            elif key in ("interleaved", "client_port", "server_port", "port"):
                if key in fields:
                    raise ValueError(f"Transport parameter {key} given twice")
                fields[key] = _parse_range(key, val, 255 if key == "interleaved" else 65535)
            elif key == "ssrc":
                text = val.strip()
                if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", text):
                    raise ValueError(f"Transport ssrc={text[:20]!r} is not 1-8 hex digits")
                fields["ssrc"] = int(text, 16)
            elif key == "mode":
                mode = val.strip().strip('"').upper()
                if not re.fullmatch(r"[A-Z_]+", mode):
                    raise ValueError(f"invalid Transport mode {val[:20]!r}")
                fields["mode"] = mode
            elif key == "ttl":
                fields["ttl"] = _parse_int("ttl", val, 255)
            elif key == "destination":
                # RFC 2326 allows a bare "destination" (= the address the request came from).
                fields[key] = val.strip()
            elif key == "source":
                if not val.strip():
                    raise ValueError("Transport source has no value")
                fields[key] = val.strip()
            elif not name.strip() or (sep and not val.strip()):
                raise ValueError(f"malformed Transport parameter {param[:40]!r}")
            else:
                extra.append(param)
        fields["extra"] = tuple(extra)
        return cls(**fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        head = f"{self.protocol}/{self.profile}"
        if self.lower_transport:
            head += f"/{self.lower_transport}"
        parts = [head]
        if self.multicast is not None:
            parts.append("multicast" if self.multicast else "unicast")
        if self.destination is not None:
            parts.append(f"destination={self.destination}" if self.destination else "destination")
        if self.source is not None:
            parts.append(f"source={self.source}")
        if self.interleaved is not None:
            parts.append(f"interleaved={_format_range(self.interleaved)}")
        if self.append:
            parts.append("append")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.port is not None:
            parts.append(f"port={_format_range(self.port)}")
        if self.client_port is not None:
            parts.append(f"client_port={_format_range(self.client_port)}")
        if self.server_port is not None:
            parts.append(f"server_port={_format_range(self.server_port)}")
        if self.ssrc is not None:
            parts.append(f"ssrc={self.ssrc:08X}")
        if self.mode is not None:
            parts.append(f'mode="{self.mode}"')
        parts.extend(self.extra)
        return ";".join(parts)

    def __bytes__(self) -> bytes:
        return str(self).encode()

    def with_changes(self, **changes: object) -> TransportSpec:
        """A copy with some fields replaced (how a server builds its answer from the offer)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def parse_transport_header(value: str) -> list[TransportSpec]:
    """Every alternative of a Transport header, in the client's order of preference."""
    specs = [TransportSpec.parse(part) for part in value.split(",") if part.strip()]
    if not specs:
        raise ValueError("empty Transport header")
    return specs


def format_transport_header(specs: list[TransportSpec]) -> str:
    return ",".join(str(spec) for spec in specs)
