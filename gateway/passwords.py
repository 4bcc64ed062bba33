"""Salted password hashes for admin accounts (``[[admin.user]] password_hash``).

Format (PHC string format, the one ``passlib`` and ``hashlib.scrypt`` users know)::

    $scrypt$ln=15,r=8,p=1$<salt, base64 without padding>$<key, base64 without padding>

scrypt with N = 2**ln, block size r, parallelism p; a 16-byte random salt and a 32-byte key.
``onvif-gateway passwd NAME`` prints one. Only verifying a password against the hash is
possible, so an account given only by its hash signs in with the form or with HTTP Basic
over TLS, never with HTTP Digest (Digest needs MD5(user:realm:password), which is as good as
the password to an attacker; storing it would undo the salted hash).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.config import PASSWORD_HASH_RE

DEFAULT_LN, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32


@dataclass(frozen=True)
class PasswordHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def matches(self, password: str) -> bool:
        derived = _scrypt(password, self.salt, self.ln, self.r, self.p, len(self.key))
        return hmac.compare_digest(derived, self.key)

    def encode(self) -> str:
        return f"$scrypt$ln={self.ln},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def parse(text: str) -> PasswordHash:
    """The hash in ``text`` (format and bounds: ``gateway.config.PASSWORD_HASH_RE``);
    ValueError with a one-line reason when it is not one."""
    match = PASSWORD_HASH_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("is not a password hash from 'onvif-gateway passwd' ($scrypt$ln=...)")
    ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, key = _unb64(match.group(4)), _unb64(match.group(5))
    return PasswordHash(ln, r, p, salt, key)


def hash_password(password: str, *, ln: int = DEFAULT_LN) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, ln, DEFAULT_R, DEFAULT_P, KEY_BYTES)
    return PasswordHash(ln, DEFAULT_R, DEFAULT_P, salt, key).encode()


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=length,
        maxmem=128 * r * n * p + 1024 * 1024 + 128 * r * n,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
