"""The TLS keys of the configuration: ``tls_cert``/``tls_key`` files of a table, and
``[server]``'s RTSPS and ONVIF-over-HTTPS settings checked against each other."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from gateway.config_reader import _port, _Reader

if TYPE_CHECKING:
    from gateway.config import ServerConfig


def _tls_files(r: _Reader) -> tuple[str | None, str | None]:
    """``tls_cert`` and ``tls_key`` of a table: both or neither, each a readable file
    (resolved against the configuration's directory)."""
    tls_cert = r.get("tls_cert", str, None)
    tls_key = r.get("tls_key", str, None)
    if (tls_cert is None) != (tls_key is None):
        r.error("tls_key" if tls_key is None else "tls_cert", "give both tls_cert and tls_key")
    for key, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if value is not None and not (r.base_dir / value).is_file():
            r.error(key, f"{r.base_dir / value} is not a readable file")
    return (
        str(r.base_dir / tls_cert) if tls_cert else None,
        str(r.base_dir / tls_key) if tls_key else None,
    )


def _server_tls(r: _Reader, server: ServerConfig) -> ServerConfig:
    """The VMS-side TLS keys of ``[server]`` (see :class:`ServerConfig`)."""
    rtsps_port = r.get("rtsps_port", int, None, _port)
    prefer_rtsps = r.get("prefer_rtsps", bool, False)
    offset = r.get(
        "onvif_https_offset",
        int,
        None,
        lambda v: None if 0 <= v <= 65534 else "must be between 0 and 65534",
    )
    onvif_http = r.get("onvif_http", bool, True)
    tls_cert, tls_key = _tls_files(r)
    if prefer_rtsps and rtsps_port is None:
        r.error("prefer_rtsps", "needs rtsps_port (the RTSPS listener)")
    if rtsps_port is not None and isinstance(server.workers, int) and server.workers > 1:
        # A TLS session lives in the process that accepted it; it cannot be handed to the
        # worker owning the camera as a plain connection is ("auto" then means one worker).
        r.error(
            "rtsps_port",
            'RTSPS needs workers = 1 or "auto" (TLS sessions cannot be handed between workers)',
        )
    if not onvif_http and offset is None:
        r.error("onvif_http", "false needs onvif_https_offset (else no ONVIF at all)")
    if offset == 0 and onvif_http:
        r.error("onvif_https_offset", "0 (HTTPS on the HTTP ports) needs onvif_http = false")
    if tls_cert and rtsps_port is None and offset is None:
        r.error("tls_cert", "is set but neither rtsps_port nor onvif_https_offset is")
    return dataclasses.replace(
        server,
        rtsps_port=rtsps_port,
        prefer_rtsps=bool(prefer_rtsps),
        onvif_https_offset=offset,
        onvif_http=bool(onvif_http),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
