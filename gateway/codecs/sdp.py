"""SDP (RFC 8866) for RTSP DESCRIBE: the session description we serve, and a tolerant parser
for the ones cameras send us.

Served descriptions are aggregate-controlled (``a=control:*`` plus one control URL per
track) and use ``c=IN IP4 0.0.0.0`` / port 0 as RTSP expects (the transport is negotiated by
SETUP). Tracks are ``a=recvonly`` from the client's point of view, except an ONVIF audio back
channel, which is ``a=sendonly``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.codecs.base import Packetizer

MAX_SDP_SIZE = 64 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# Static payload types (RFC 3551 table 4 and 5): encoding, clock rate, channels.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    14: ("MPA", 90000, 1),
    26: ("JPEG", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _check_line_text(what: str, text: str) -> None:
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"SDP {what} must not contain CR, LF or NUL: {text!r}")


@dataclass(frozen=True)
class SdpTrack:
    """One media section we serve."""

    media: str  # "video" | "audio"
    payload_type: int
    attributes: tuple[str, ...]  # rtpmap/fmtp lines without "a="
    control: str  # e.g. "trackID=0"
    direction: str = "recvonly"
    port: int = 0  # 0 for RTSP unicast (SETUP negotiates); set for multicast or plain RTP

    @classmethod
    def for_packetizer(
        cls, packetizer: Packetizer, control: str, direction: str = "recvonly", port: int = 0
    ) -> SdpTrack:
        return cls(
            packetizer.params.media,
            packetizer.payload_type,
            tuple(packetizer.sdp_attributes()),
            control,
            direction,
            port,
        )


def session_sdp(
    tracks: Sequence[SdpTrack],
    session_name: str,
    origin_addr: str,
    session_id: int,
    session_version: int | None = None,
    connection_addr: str | None = None,
) -> str:
    """A complete session description with CRLF line endings.

    ``connection_addr`` (default: the unspecified address of the origin's family) is for
    multicast or plain-RTP descriptions, used with the tracks' ports.
    """
    try:
        address = ipaddress.ip_address(origin_addr)
    except ValueError:
        raise ValueError(f"SDP origin address must be an IP address, got {origin_addr!r}") from None
    family, unspecified = ("IP4", "0.0.0.0") if address.version == 4 else ("IP6", "::")
    if connection_addr is not None:
        _check_line_text("connection address", connection_addr)
        unspecified = connection_addr
    if not 0 <= session_id < 1 << 63:
        raise ValueError(f"SDP session id must be a non-negative 63-bit number, got {session_id}")
    version = session_id if session_version is None else session_version
    _check_line_text("session name", session_name)
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN {family} {address.compressed}",
        f"s={session_name or '-'}",
        f"c=IN {family} {unspecified}",
        "t=0 0",
        "a=tool:onvif-gateway",
        "a=control:*",
        "a=range:npt=now-",
    ]
    for track in tracks:
        if track.media not in ("video", "audio", "application"):
            raise ValueError(f"SDP media type must be video, audio or application: {track.media!r}")
        if not 0 <= track.payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, got {track.payload_type}")
        if track.direction not in DIRECTIONS:
            raise ValueError(f"SDP direction must be one of {DIRECTIONS}: {track.direction!r}")
        _check_line_text("control", track.control)
        if not 0 <= track.port <= 65535:
            raise ValueError(f"SDP media port must be 0..65535, got {track.port}")
        lines.append(f"m={track.media} {track.port} RTP/AVP {track.payload_type}")
        for attribute in track.attributes:
            _check_line_text("attribute", attribute)
            lines.append(f"a={attribute}")
        lines.append(f"a=control:{track.control}")
        lines.append(f"a={track.direction}")
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass
class MediaDescription:
    """One ``m=`` section; encoding/clock/fmtp are those of its first payload type."""

    media: str
    port: int
    protocol: str
    formats: list[str]
    control: str = ""
    direction: str = ""
    connection: str = ""
    attributes: list[tuple[str, str]] = field(default_factory=list)
    rtpmaps: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    fmtps: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def payload_type(self) -> int | None:
        if self.formats and _is_number(self.formats[0]):
            return int(self.formats[0])
        return None

    def _rtpmap(self) -> tuple[str, int, int]:
        pt = self.payload_type
        if pt is None:
            return ("", 0, 0)
        return self.rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt, ("", 0, 0))

    @property
    def encoding(self) -> str:
        """Encoding name in upper case ("H264", "MPEG4-GENERIC", ...), "" if unknown."""
        return self._rtpmap()[0]

    @property
    def clock_rate(self) -> int:
        return self._rtpmap()[1]

    @property
    def channels(self) -> int:
        return self._rtpmap()[2]

    @property
    def fmtp(self) -> dict[str, str]:
        pt = self.payload_type
        return self.fmtps.get(pt, {}) if pt is not None else {}

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value
        return None


@dataclass
class SessionDescription:
    version: int
    origin: str = ""
    session_name: str = ""
    connection: str = ""
    control: str = ""
    direction: str = ""
    attributes: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def first(self, media_type: str) -> MediaDescription | None:
        """The first media section of a type ("video", "audio"), if any."""
        return next((m for m in self.media if m.media == media_type), None)


def _parse_fmtp(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip()
    return params


def _parse_rtpmap(value: str, line_no: int) -> tuple[int, tuple[str, int, int]]:
    pt_text, _, encoding_text = value.strip().partition(" ")
    parts = encoding_text.strip().split("/")
    channels_text = parts[2] if len(parts) > 2 and parts[2] else "1"
    numbers = (pt_text, parts[1] if len(parts) > 1 else "", channels_text)
    if not all(_is_number(n) and len(n) <= 9 for n in numbers) or not parts[0]:
        raise ValueError(f"SDP line {line_no}: malformed rtpmap {value!r}")
    pt, clock, channels = (int(n) for n in numbers)
    if not 0 <= pt <= 127 or clock <= 0 or channels <= 0:
        raise ValueError(f"SDP line {line_no}: malformed rtpmap {value!r}")
    return pt, (parts[0].upper(), clock, channels)


def _parse_media_line(value: str, line_no: int) -> MediaDescription:
    fields = value.split()
    if len(fields) < 3:
        raise ValueError(f"SDP line {line_no}: malformed media line {value!r}")
    port_text = fields[1].partition("/")[0]
    if not _is_number(port_text) or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"SDP line {line_no}: malformed media port {fields[1]!r}")
    return MediaDescription(fields[0], int(port_text), fields[2], fields[3:])


def parse_sdp(text: str | bytes) -> SessionDescription:
    """Parse a session description; tolerant of LF line endings, unknown lines, case."""
    if isinstance(text, bytes):
        if len(text) > MAX_SDP_SIZE:
            raise ValueError(f"SDP larger than {MAX_SDP_SIZE} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"SDP is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if len(text) > MAX_SDP_SIZE:
        raise ValueError(f"SDP larger than {MAX_SDP_SIZE} bytes")
    session: SessionDescription | None = None
    media: MediaDescription | None = None
    for line_no, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise ValueError(f"SDP line {line_no} is not <type>=<value>: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if session is None:
            if kind != "v" or value.strip() != "0":
                raise ValueError(f"SDP must start with v=0, got {line[:40]!r}")
            session = SessionDescription(version=0)
            continue
        if kind == "m":
            media = _parse_media_line(value, line_no)
            session.media.append(media)
        elif kind == "o" and media is None:
            session.origin = value
        elif kind == "s" and media is None:
            session.session_name = value
        elif kind == "c":
            if media is None:
                session.connection = value
            else:
                media.connection = value
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            name = name.strip().lower()
            target = media if media is not None else session
            target.attributes.append((name, attr_value))
            if name == "control":
                target.control = attr_value.strip()
            elif name in DIRECTIONS:
                target.direction = name
            elif media is not None and name == "rtpmap":
                pt, rtpmap = _parse_rtpmap(attr_value, line_no)
                media.rtpmaps[pt] = rtpmap
            elif media is not None and name == "fmtp":
                pt_text, _, params = attr_value.strip().partition(" ")
                if not _is_number(pt_text) or len(pt_text) > 3:
                    raise ValueError(f"SDP line {line_no}: malformed fmtp {attr_value!r}")
                media.fmtps[int(pt_text)] = _parse_fmtp(params)
    if session is None:
        raise ValueError("SDP is empty")
    return session
