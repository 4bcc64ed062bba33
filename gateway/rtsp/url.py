"""RTSP URLs: taking ``rtsp://`` URLs apart, stripping credentials, and resolving a track's
SDP ``a=control`` against the base URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_RTSP_PORT: Final = 554


@dataclass(frozen=True)
class RtspUrl:
    """An rtsp:// URL taken apart; ``path`` includes the query (``/cam?channel=1``)."""

    scheme: str
    host: str
    port: int
    path: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RtspUrl:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid RTSP URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("rtsp", "rtsps", "rtspu"):
            raise ValueError(f"not an RTSP URL (scheme {parts.scheme!r})")
        if not parts.hostname:
            raise ValueError("RTSP URL has no host")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        default = 322 if scheme == "rtsps" else DEFAULT_RTSP_PORT
        return cls(scheme, parts.hostname, port or default, path, username, password)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def without_credentials(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (what goes on the wire and into logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def request_path(uri: str) -> str:
    """Path and query of a request URI, whether absolute (``rtsp://h/p``) or already a path."""
    if "://" in uri:
        parts = urlsplit(uri)
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path
    return uri


def resolve_control(base: str, control: str) -> str:
    """The URL a track's ``a=control`` names, relative to Content-Base (or the request URL).

    Real servers expect plain appending (``base/trackID=1`` even after a query string, as
    Dahua does), not RFC 3986 merging, so that is what clients such as FFmpeg do and we too.
    """
    control = control.strip()
    if not control or control == "*":
        return base
    if "://" in control and control.split("://", 1)[0].lower() in ("rtsp", "rtsps", "rtspu"):
        return control
    if base.endswith("/") or control.startswith("/"):
        return base.rstrip("/") + "/" + control.lstrip("/")
    return f"{base}/{control}"
