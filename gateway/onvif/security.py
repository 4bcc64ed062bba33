"""Authentication of ONVIF requests: WS-Security UsernameToken and HTTP Digest (sans-IO).

Every check takes ``now`` (Unix seconds) as an argument. A captured request cannot be
replayed: UsernameToken ``Created`` must lie within ``window`` seconds of now and each nonce
is remembered for that window; HTTP Digest nonces are HMAC-stamped by the server, expire
after the same window and each ``(nonce, nc, cnonce)`` is accepted once. Repeated failures
from one address earn a growing delay (:class:`FailureThrottle`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from gateway.onvif.xml import WSSE, WSU

# Older clients (and some firmware) use the 2002/2003 drafts of the secext namespace.
SECEXT_NAMESPACES = (
    WSSE,
    "http://schemas.xmlsoap.org/ws/2002/07/secext",
    "http://schemas.xmlsoap.org/ws/2003/06/secext",
)
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)


class AuthError(Exception):
    """Why a request's credentials were refused (logged, never sent to the client)."""


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """Base64(SHA1(nonce + created + password)), the UsernameToken PasswordDigest."""
    sha = hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    return base64.b64encode(sha).decode()


def parse_created(value: str) -> float:
    """An xs:dateTime as Unix seconds; a value without a zone is taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts 1-6 fraction digits; clients send 0-9 of them.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if not match:
        raise AuthError(f"Created {value!r} is not an xs:dateTime")
    head, frac, zone = match.groups()
    frac = (frac or "")[:7]
    try:
        moment = datetime.fromisoformat(f"{head}{frac}{zone or '+00:00'}")
    except ValueError:
        raise AuthError(f"Created {value!r} is not an xs:dateTime") from None
    return moment.timestamp()


@dataclass(frozen=True)
class UsernameToken:
    username: str
    password: str
    digest: bool
    nonce: bytes | None
    created: str | None

    @classmethod
    def from_header(cls, header: etree._Element | None) -> UsernameToken | None:
        """The UsernameToken of a SOAP Header, found by namespace (never by prefix)."""
        if header is None:
            return None
        for ns in SECEXT_NAMESPACES:
            token = header.find(f"{{{ns}}}Security/{{{ns}}}UsernameToken")
            if token is not None:
                return cls._from_token(token, ns)
        return None

    @classmethod
    def _from_token(cls, token: etree._Element, ns: str) -> UsernameToken:
        username = token.findtext(f"{{{ns}}}Username")
        password_el = token.find(f"{{{ns}}}Password")
        if username is None or password_el is None:
            raise AuthError("UsernameToken without Username or Password")
        ptype = password_el.get("Type", "")
        digest = ptype.endswith("#PasswordDigest")
        if ptype and not digest and not ptype.endswith("#PasswordText"):
            raise AuthError(f"unknown password type {ptype!r}")
        nonce_text = token.findtext(f"{{{ns}}}Nonce")
        nonce = None
        if nonce_text is not None:
            try:
                nonce = base64.b64decode(nonce_text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise AuthError("Nonce is not base64") from None
            if not 1 <= len(nonce) <= 128:
                raise AuthError(f"Nonce of {len(nonce)} bytes")
        created = token.findtext(f"{{{WSU}}}Created")
        if created is None:
            created = token.findtext(f"{{{ns}}}Created")
        return cls(
            username=username.strip(),
            password=(password_el.text or "").strip(),
            digest=digest,
            nonce=nonce,
            created=created.strip() if created is not None else None,
        )


@dataclass
class _Use:
    expiry: float
    first: float
    source: str | None
    repeats: int = 0


class ReplayCache:
    """Keys (nonces) seen within the last ``window`` seconds, bounded to ``max_entries``.

    Entries are kept in insertion order with their expiry; since ``now`` only grows, the
    oldest entry expires first and pruning pops from the front.

    One narrow repeat is let through (:meth:`add` with ``read_only``): libonvif before 3.1.10
    (Debian's onvif-util and onvif-gui) seeds ``rand()`` with ``time()`` for every token, so
    requests made within one second carry the same nonce, and requests a fraction of a
    millisecond apart share ``Created`` too; their bodies can be byte-identical, so nothing
    in the request tells them from a replay. A key may therefore come again from the address
    that first used it, within :attr:`REPEAT_WINDOW` seconds, at most :attr:`MAX_REPEATS`
    times, for a read-only operation. From another address, later, more often, or for an
    operation that changes state, it is a replay.
    """

    REPEAT_WINDOW = 1.0
    MAX_REPEATS = 3

    def __init__(self, window: float, max_entries: int = 65536) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, _Use] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def prune(self, now: float) -> None:
        while self._seen:
            key, use = next(iter(self._seen.items()))
            if use.expiry > now:
                break
            del self._seen[key]

    def add(
        self, key: bytes, now: float, *, source: str | None = None, read_only: bool = False
    ) -> None:
        """Remember ``key`` or raise :class:`AuthError` if it was seen in the window (but
        for the repeat described above, which needs ``source`` and ``read_only``)."""
        self.prune(now)
        use = self._seen.get(key)
        if use is not None:
            repeat_ok = (
                read_only
                and source is not None
                and source == use.source
                and now - use.first <= self.REPEAT_WINDOW
                and use.repeats < self.MAX_REPEATS
            )
            if not repeat_ok:
                raise AuthError("nonce replayed")
            use.repeats += 1
            return
        if len(self._seen) >= self.max_entries:
            raise AuthError("replay cache full; refusing until older nonces expire")
        self._seen[key] = _Use(now + self.window, now, source)


def is_read_only(operation: str) -> bool:
    """Whether an ONVIF operation (local name) only reads: every Get* does, nothing else is
    assumed to."""
    return operation.startswith("Get")


def verify_username_token(
    token: UsernameToken,
    *,
    username: str,
    password: str,
    now: float,
    window: float,
    replay: ReplayCache,
    source: str | None = None,
    operation: str = "",
) -> None:
    """Raise :class:`AuthError` unless ``token`` proves ``username``/``password`` now.
    ``source`` (the client's address) and ``operation`` (the SOAP operation's local name)
    decide whether a repeated nonce may pass (see :class:`ReplayCache`)."""
    if not hmac.compare_digest(token.username.encode(), username.encode()):
        raise AuthError(f"unknown user {token.username!r}")
    if token.digest:
        if token.nonce is None or token.created is None:
            raise AuthError("PasswordDigest without Nonce and Created")
        expected = password_digest(token.nonce, token.created, password)
    else:
        expected = password
    if not hmac.compare_digest(token.password.encode(), expected.encode()):
        raise AuthError("wrong password")
    if token.created is not None:
        created = parse_created(token.created)
        if abs(now - created) > window:
            raise AuthError(f"Created is {now - created:+.0f} s from now, outside ±{window:g} s")
    if token.nonce is not None:
        # Keyed on nonce and Created together: the digest binds both, so a captured request
        # replayed as-is is still refused, while clients that reuse a weak nonce within one
        # second with a fresh Created (libonvif seeds rand() with time() per token) still work.
        replay.add(
            b"ws:" + token.nonce + b"|" + (token.created or "").encode(),
            now,
            source=source,
            read_only=is_read_only(operation),
        )


# --------------------------------------------------------------------------- HTTP Digest

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]+)\s*(,|$)')


def parse_digest_header(value: str) -> dict[str, str]:
    """The parameters of an ``Authorization: Digest ...`` header (RFC 7616)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise AuthError(f"authorization scheme {scheme!r} is not Digest")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if not match or match.end() == pos:
            raise AuthError("malformed Digest parameters")
        key = match.group(1).lower()
        val = match.group(3) if match.group(3) is not None else match.group(2)
        params[key] = re.sub(r"\\(.)", r"\1", val)
        pos = match.end()
        if len(params) > 20:
            raise AuthError("too many Digest parameters")
    return params


def _hash(algorithm: str, data: str) -> str:
    name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"
    return hashlib.new(name, data.encode()).hexdigest()


class DigestAuth:
    """Server side of HTTP Digest (RFC 7616, qop=auth, MD5 or SHA-256) with stateless,
    HMAC-stamped nonces that expire after ``window`` seconds."""

    def __init__(self, realm: str, window: float, replay: ReplayCache) -> None:
        self.realm = realm
        self.window = window
        self.replay = replay
        self._secret = os.urandom(32)

    def _nonce(self, now: float) -> str:
        stamp = f"{now:.3f}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return base64.b64encode(f"{stamp}:{mac}".encode()).decode()

    def challenge(self, now: float, *, stale: bool = False) -> str:
        """The WWW-Authenticate header value."""
        return (
            f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, '
            f'nonce="{self._nonce(now)}", opaque="{self._secret[:8].hex()}"'
            + (", stale=true" if stale else "")
        )

    def _nonce_age(self, nonce: str, now: float) -> float:
        try:
            stamp, mac = base64.b64decode(nonce, validate=True).decode().split(":", 1)
            issued = float(stamp)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise AuthError("Digest nonce not issued by this server") from None
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, good):
            raise AuthError("Digest nonce not issued by this server")
        return now - issued

    def verify(
        self, header: str, *, method: str, uri: str, username: str, password: str, now: float
    ) -> None:
        """Raise :class:`AuthError` unless ``header`` is a fresh, correct Digest answer."""
        p = parse_digest_header(header)
        for key in ("username", "realm", "nonce", "uri", "response"):
            if key not in p:
                raise AuthError(f"Digest parameter {key} missing")
        if not hmac.compare_digest(p["username"].encode(), username.encode()):
            raise AuthError(f"unknown user {p['username']!r}")
        if p["realm"] != self.realm:
            raise AuthError("Digest realm mismatch")
        if p["uri"] != uri:
            raise AuthError(f"Digest uri {p['uri']!r} is not the request's {uri!r}")
        age = self._nonce_age(p["nonce"], now)
        if not -5 <= age <= self.window:
            raise AuthError("Digest nonce expired")
        algorithm = p.get("algorithm", "MD5")
        ha1 = _hash(algorithm, f"{username}:{self.realm}:{password}")
        ha2 = _hash(algorithm, f"{method}:{uri}")
        qop = p.get("qop")
        if qop == "auth":
            nc, cnonce = p.get("nc", ""), p.get("cnonce", "")
            if not nc or not cnonce:
                raise AuthError("Digest qop=auth without nc and cnonce")
            expected = _hash(algorithm, f"{ha1}:{p['nonce']}:{nc}:{cnonce}:auth:{ha2}")
            replay_key = f"digest:{p['nonce']}:{nc}:{cnonce}"
        elif qop is None:
            expected = _hash(algorithm, f"{ha1}:{p['nonce']}:{ha2}")
            replay_key = f"digest:{p['nonce']}"
        else:
            raise AuthError(f"Digest qop {qop!r} not supported")
        if not hmac.compare_digest(p["response"].lower().encode(), expected.encode()):
            raise AuthError("wrong password")
        self.replay.add(replay_key.encode(), now)


# --------------------------------------------------------------------------- throttling


class FailureThrottle:
    """Per-address delay after repeated authentication failures.

    The first ``free`` failures within ``forget_after`` seconds cost nothing; each further
    one doubles the delay from ``base`` up to ``maximum``. At most ``max_addresses`` are
    tracked (the least recently failing are forgotten first), so memory stays bounded.
    """

    def __init__(
        self,
        *,
        free: int = 3,
        base: float = 0.25,
        maximum: float = 4.0,
        forget_after: float = 300.0,
        max_addresses: int = 4096,
    ) -> None:
        self.free = free
        self.base = base
        self.maximum = maximum
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay(self, address: str, now: float) -> float:
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last > self.forget_after:
            del self._failures[address]
            return 0.0
        if count <= self.free:
            return 0.0
        return min(self.maximum, self.base * 2 ** (count - self.free - 1))

    def failure(self, address: str, now: float) -> None:
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        self._failures[address] = (count + 1, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def success(self, address: str) -> None:
        self._failures.pop(address, None)
