"""Authentication of ONVIF requests: WS-Security UsernameToken (sans-IO).

Every check takes ``now`` (Unix seconds) as an argument. A captured request cannot be
replayed: UsernameToken ``Created`` must lie within ``window`` seconds of now and each nonce
is remembered for that window (the devices' HTTP Digest, :mod:`gateway.digest`, remembers
each answer in the same :class:`ReplayCache`). Repeated failures
from one address earn a growing delay (:class:`gateway.limits.FailureThrottle`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lxml import etree

from gateway.onvif.xml import WSSE, WSU
from gateway.store import Store

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


# How far ahead of the gateway's clock a UsernameToken's Created may be: a client's clock a
# little fast is fine, a token made for later is not (docs/security.md).
FUTURE_SKEW = 10.0


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

    One cache serves every virtual device of a gateway (the devices share the VMS password,
    so a token captured at one would otherwise be good at all the others);
    :class:`SharedReplayCache` extends it to every worker process.
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
        self,
        key: bytes,
        now: float,
        *,
        source: str | None = None,
        read_only: bool = False,
        keep: float | None = None,
    ) -> None:
        """Remember ``key`` for ``keep`` seconds (default: the window) or raise
        :class:`AuthError` if it is remembered already (but for the repeat described above,
        which needs ``source`` and ``read_only``)."""
        self.prune(now)
        use = self._seen.get(key)
        if use is not None:
            self._check_repeat(use, now, source, read_only)
            use.repeats += 1
            return
        if len(self._seen) >= self.max_entries:
            raise AuthError("replay cache full; refusing until older nonces expire")
        self._seen[key] = _Use(now + (keep or self.window), now, source)

    def _check_repeat(self, use: _Use, now: float, source: str | None, read_only: bool) -> None:
        repeat_ok = (
            read_only
            and source is not None
            and source == use.source
            and now - use.first <= self.REPEAT_WINDOW
            and use.repeats < self.MAX_REPEATS
        )
        if not repeat_ok:
            raise AuthError("nonce replayed")


REPLAY_DB = "replay.sqlite3"
_REPLAY_SCHEMA = (
    """CREATE TABLE seen (
        key BLOB PRIMARY KEY, expiry REAL NOT NULL, first REAL NOT NULL,
        source TEXT, repeats INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX seen_expiry ON seen (expiry);""",
)


class SharedReplayCache(ReplayCache):
    """The same rules, kept in a SQLite file of the state directory (``replay.sqlite3``,
    0600), so a nonce used at any worker process's device is refused at every other one.
    Each check is one short ``BEGIN IMMEDIATE`` transaction (WAL, no fsync per commit):
    ONVIF requests come at most a few a second per camera."""

    PRUNE_EVERY = 5.0

    def __init__(self, window: float, state_dir: str | Path, max_entries: int = 65536) -> None:
        super().__init__(window, max_entries)
        self.store = Store(Path(state_dir) / REPLAY_DB)
        self.store.migrate("replay", _REPLAY_SCHEMA)
        self._pruned = 0.0

    def __len__(self) -> int:
        return int(self.store.query("SELECT count(*) AS n FROM seen")[0]["n"])

    def prune(self, now: float) -> None:
        self.store.execute("DELETE FROM seen WHERE expiry <= ?", (now,))
        self._pruned = now

    def add(
        self,
        key: bytes,
        now: float,
        *,
        source: str | None = None,
        read_only: bool = False,
        keep: float | None = None,
    ) -> None:
        if now - self._pruned > self.PRUNE_EVERY:
            self.prune(now)
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT expiry, first, source, repeats FROM seen WHERE key = ? AND expiry > ?",
                (key, now),
            ).fetchone()
            if row is not None:
                use = _Use(row[0], row[1], row[2], row[3])
                self._check_repeat(use, now, source, read_only)
                db.execute("UPDATE seen SET repeats = repeats + 1 WHERE key = ?", (key,))
                return
            count = db.execute("SELECT count(*) FROM seen WHERE expiry > ?", (now,)).fetchone()
            if count[0] >= self.max_entries:
                raise AuthError("replay cache full; refusing until older nonces expire")
            db.execute(
                "INSERT OR REPLACE INTO seen (key, expiry, first, source) VALUES (?, ?, ?, ?)",
                (key, now + (keep or self.window), now, source),
            )

    def close(self) -> None:
        self.store.close()


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
        if now - created > window:
            raise AuthError(f"Created is {now - created:.0f} s old, more than {window:g} s")
        if created - now > FUTURE_SKEW:
            # A token made for later would outlive its nonce's stay in the cache.
            raise AuthError(
                f"Created is {created - now:.0f} s ahead, more than {FUTURE_SKEW:g} s of clock skew"
            )
    if token.nonce is not None:
        # Keyed on nonce and Created together: the digest binds both, so a captured request
        # replayed as-is is still refused, while clients that reuse a weak nonce within one
        # second with a fresh Created (libonvif seeds rand() with time() per token) still work.
        replay.add(
            b"ws:" + token.nonce + b"|" + (token.created or "").encode(),
            now,
            source=source,
            read_only=is_read_only(operation),
            keep=window + FUTURE_SKEW,
        )
