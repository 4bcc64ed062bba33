"""HTTPS for the admin API: which certificate it serves, and how ``status`` reaches it.

With ``[admin] tls = true`` (the default) and no ``tls_cert``/``tls_key`` of the integrator's
own, the admin API serves the self-signed certificate :mod:`gateway.tls` generates in the
state directory (``admin-tls.crt``, ``admin-tls.key``) for the admin bind address;
``onvif-gateway init`` creates it and prints its SHA-256 fingerprint. Generation, renewal
and the live-reloading context (:class:`~gateway.tls.ServerTLS`) are the shared code of
:mod:`gateway.tls`, which the VMS side uses too.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from gateway import tls
from gateway.config import AdminConfig
from gateway.tls import (
    RENEW_BEFORE,
    VALIDITY,
    CertificateInfo,
    ServerTLS,
    client_context,
    describe,
    fingerprint,
    generate,
)

CERT_NAME = f"{tls.ADMIN.stem}.crt"
KEY_NAME = f"{tls.ADMIN.stem}.key"

__all__ = [
    "CERT_NAME",
    "KEY_NAME",
    "RENEW_BEFORE",
    "VALIDITY",
    "CertificateInfo",
    "ServerTLS",
    "client_context",
    "describe",
    "ensure_generated",
    "fingerprint",
    "generate",
    "generated_paths",
    "server_files",
    "status_client",
]


def generated_paths(state_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where the admin API's generated certificate and key live."""
    return tls.ADMIN.paths(state_dir)


def ensure_generated(
    state_dir: str | os.PathLike[str], bind: str, *, now: datetime.datetime | None = None
) -> CertificateInfo:
    """The admin API's generated certificate for ``bind`` (see
    :func:`gateway.tls.ensure_generated`)."""
    return tls.ensure_generated(state_dir, [bind], kind=tls.ADMIN, now=now)


def server_files(
    tls_cert: str | None, tls_key: str | None, state_dir: str, bind: str
) -> tuple[Path, Path]:
    """The certificate and key the admin API serves: the integrator's own, or the generated
    one (created or renewed first when needed)."""
    return tls.server_files(tls_cert, tls_key, state_dir, [bind], tls.ADMIN)


def status_client(
    admin: AdminConfig, state_dir: str
) -> tuple[str, str, str, ssl.SSLContext | bool]:
    """For ``onvif-gateway status``: the admin API's base URL, an account whose password the
    file holds (Digest never sends it), and the TLS context that trusts exactly the
    certificate the gateway serves (pinned: on the gateway's own box host names may not
    match). ValueError when no account has a password in the file."""
    account = next((a for a in admin.accounts() if a.password), None)
    if account is None or account.password is None:
        raise ValueError(
            "status needs an [admin] account whose password the file holds "
            "(username/password or an [[admin.user]] with password_file), not only a hash"
        )
    # A wildcard bind is reached through loopback from the same box.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.bind, admin.bind)
    host = f"[{host}]" if ":" in host else host
    if not admin.tls:
        return f"http://{host}:{admin.port}", account.name, account.password.reveal(), True
    cert = Path(admin.tls_cert) if admin.tls_cert else generated_paths(state_dir)[0]
    # Until the gateway has created its certificate, the system's trust store is used (the
    # request then fails with a certificate error that says what is wrong).
    context: ssl.SSLContext | bool = client_context(cert) if cert.is_file() else True
    return f"https://{host}:{admin.port}", account.name, account.password.reveal(), context
