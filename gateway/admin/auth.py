"""Who may use the admin API, and what each account may do.

Accounts (``gateway.config.AdminUser``) have a role: ``viewer`` < ``operator`` < ``admin``;
each route declares the least role it needs (:mod:`gateway.admin.api`, ``x-role`` in
``openapi.yaml``).

- HTTP Digest (RFC 7616, MD5, qop=auth) is offered first in every challenge, Basic second.
  Digest works for accounts whose password the configuration holds; an account given only
  by its salted hash (``password_hash``) uses Basic (or the form): Digest would need
  MD5(user:realm:password) stored, which is as good as the password to whoever reads it.
- A password in the clear (Basic, the sign-in form) is refused over plain HTTP from anything
  but loopback (:func:`cleartext_allowed`); with TLS on (the default) it is always accepted.
- The login form posts the credentials once and gets an ``HttpOnly; SameSite=Strict``
  (``Secure`` over TLS) cookie holding a random session token.
- Every state-changing request needs the session's CSRF token in ``X-CSRF-Token`` or, for
  Basic/Digest, must not come from another site (:func:`cross_site`): a browser that cached
  Basic/Digest credentials would otherwise send them with a forged cross-site POST.
- Failed attempts are counted per (address, account name): after ``MAX_FAILURES`` within
  ``FAILURE_WINDOW`` seconds further password attempts for that name from that address get
  429 until the window ends; other accounts, and requests with a valid session cookie, are
  not affected. An address failing for many names (``MAX_ADDRESS_FAILURES``) is refused for
  every password attempt: scrypt verification costs CPU.

Passwords are compared in constant time and never logged; nothing puts them in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from gateway.config import ADMIN_ROLES, AdminUser
from gateway.digest import DigestAuthenticator, parse_auth_params, split_scheme
from gateway.passwords import PasswordHash, parse

log = logging.getLogger("gateway.admin")

REALM = "onvif-gateway admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_IDLE = 8 * 3600.0
SESSION_MAX_AGE = 24 * 3600.0
MAX_SESSIONS = 256
# Failed attempts per (address, name) before that name is refused from that address for the
# rest of FAILURE_WINDOW seconds; per address over all names.
MAX_FAILURES = 10
MAX_ADDRESS_FAILURES = 50
FAILURE_WINDOW = 300.0
MAX_TRACKED = 4096
# A password verified against its scrypt hash is remembered (as an HMAC under a per-process
# key) for this long, so Basic clients such as Prometheus do not pay scrypt every scrape.
VERIFIED_TTL = 900.0
MAX_CONCURRENT_SCRYPT = 2


_K = TypeVar("_K", tuple[str, str], str)


def role_allows(role: str, needed: str) -> bool:
    return ADMIN_ROLES.index(role) >= ADMIN_ROLES.index(needed)


@dataclass
class Session:
    username: str
    role: str
    csrf_token: str
    created: float
    last_used: float


@dataclass(frozen=True)
class Identity:
    username: str
    role: str
    method: str  # "digest" | "basic" | "session"
    session: Session | None = None


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password: str | None  # known: Digest works
    hashed: PasswordHash | None


def cleartext_allowed(secure: bool, peer: str | None) -> bool:
    """May a password travel in the clear to us (Basic, the form)? Over TLS yes; over plain
    HTTP only from loopback (a local client or a TLS-terminating proxy on the same box)."""
    if secure:
        return True
    try:
        return peer is not None and ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def cross_site(headers: Mapping[str, str], scheme: str, host: str) -> bool:
    """Did a browser send this request from another site? Browsers send ``Sec-Fetch-Site``
    and ``Origin`` with POSTs; scripts (curl, Prometheus) send neither and are not refused."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None:  # authoritative where sent (every current browser)
        return fetch_site.lower() not in ("same-origin", "none")
    origin = headers.get("Origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    parts = urlsplit(origin)
    return parts.scheme != scheme or parts.netloc.lower() != host.lower()


class AdminAuth:
    """Accounts, sessions and failure throttling for one admin API."""

    def __init__(self, accounts: Iterable[AdminUser], *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._nonce_secret = secrets.token_bytes(32)
        self._verified_key = secrets.token_bytes(32)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self.failures_total = 0  # refused passwords since start, for /metrics
        self._address_failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._scrypt_slots = asyncio.Semaphore(MAX_CONCURRENT_SCRYPT)
        self.accounts: dict[str, Account] = {}
        self.set_accounts(accounts)

    def set_accounts(self, users: Iterable[AdminUser]) -> bool:
        """New accounts (config reload). Sessions of accounts whose password or role changed
        or that are gone end; True when anything changed."""
        accounts = {
            u.name: Account(
                u.name,
                u.role,
                u.password.reveal() if u.password else None,
                parse(u.password_hash.reveal()) if u.password_hash else None,
            )
            for u in users
        }
        if not accounts:
            raise ValueError("the admin API needs at least one account")
        if accounts == self.accounts:
            return False
        changed = {
            n for n in set(accounts) | set(self.accounts) if accounts.get(n) != self.accounts.get(n)
        }
        self.accounts = accounts
        self._verified = {n: v for n, v in self._verified.items() if n not in changed}
        for token, session in list(self._sessions.items()):
            if session.username in changed:
                del self._sessions[token]
        self.digest = DigestAuthenticator(
            REALM, self._digest_password, self._nonce_secret, allow_basic=True
        )
        return True

    def _digest_password(self, username: str) -> str | None:
        account = self.accounts.get(username)
        return account.password if account is not None else None

    # ------------------------------------------------------------------ passwords

    async def verify_password(self, username: str, password: str) -> Account | None:
        """The account if ``password`` is its password (constant time for known names).

        scrypt runs in a worker thread (it releases the GIL), at most
        ``MAX_CONCURRENT_SCRYPT`` at a time: password guesses must not stall the event loop
        that streams video, nor take unbounded memory (32 MiB each)."""
        account = self.accounts.get(username)
        if account is None:
            hmac.compare_digest(password.encode(), password.encode()[::-1])
            return None
        if account.password is not None:
            ok = hmac.compare_digest(password.encode(), account.password.encode())
            return account if ok else None
        hashed = account.hashed
        assert hashed is not None
        mark = hmac.new(self._verified_key, f"{username}\0{password}".encode(), hashlib.sha256)
        cached = self._verified.get(username)
        fresh = cached is not None and self.clock() - cached[1] < VERIFIED_TTL
        if fresh and cached is not None and hmac.compare_digest(cached[0], mark.digest()):
            return account
        async with self._scrypt_slots:
            matches = await asyncio.to_thread(hashed.matches, password)
        if not matches or self.accounts.get(username) is not account:
            return None
        self._verified[username] = (mark.digest(), self.clock())
        return account

    # ------------------------------------------------------------------ headers

    def challenge(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate values: Digest first, Basic second."""
        return self.digest.challenge(self.clock(), stale=stale)

    @staticmethod
    def claimed_name(authorization: str) -> str:
        """The account name an Authorization header claims ("" when unreadable)."""
        scheme, rest = split_scheme(authorization)
        if scheme == "basic":
            user = _basic(rest)
            return user[0] if user else ""
        if scheme == "digest":
            for part in rest.split(","):
                key, _, value = part.strip().partition("=")
                if key.lower() == "username":
                    return value.strip().strip('"')[:256]
        return ""

    async def check_header(
        self, method: str, authorization: str, uri: str
    ) -> tuple[Identity | None, bool]:
        """(identity or None, stale) for an Authorization header."""
        scheme, rest = split_scheme(authorization)
        if scheme == "basic":
            credentials = _basic(rest)
            account = await self.verify_password(*credentials) if credentials else None
            if account is None:
                return None, False
            return Identity(account.name, account.role, "basic"), False
        result = self.digest.authenticate(method, authorization, self.clock(), uri)
        if result.username is None or result.username not in self.accounts:
            return None, result.stale
        if method not in SAFE_METHODS and "qop" not in parse_auth_params(rest):
            # Without qop=auth nothing counts the answers: the same header would work again
            # for the nonce's lifetime. Changes need it (curl, requests and browsers do it).
            log.warning(
                "admin change refused: Digest without qop=auth",
                extra={"user": result.username, "ratelimit": True},
            )
            return None, False
        return Identity(result.username, self.accounts[result.username].role, "digest"), False

    # ------------------------------------------------------------------ login sessions

    def open_session(self, account: Account) -> tuple[str, Session]:
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = Session(account.name, account.role, secrets.token_urlsafe(24), now, now)
        self._sessions[token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, session

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_used > SESSION_IDLE or now - session.created > SESSION_MAX_AGE:
            del self._sessions[token]
            return None
        session.last_used = now
        self._sessions.move_to_end(token)
        return session

    def close_session(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(
            header.encode(), session.csrf_token.encode()
        )

    # ------------------------------------------------------------------ throttling

    def _count(self, table: OrderedDict[_K, tuple[float, int]], key: _K) -> int:
        entry = table.get(key)
        if entry is None:
            return 0
        since, count = entry
        if self.clock() - since > FAILURE_WINDOW:
            del table[key]
            return 0
        return count

    def blocked(self, address: str, username: str) -> bool:
        """Are password attempts for ``username`` from ``address`` refused for now?"""
        return (
            self._count(self._failures, (address, username)) >= MAX_FAILURES
            or self._count(self._address_failures, address) >= MAX_ADDRESS_FAILURES
        )

    def failed(self, address: str, username: str) -> bool:
        """Count a failure; True when it starts a lock-out."""
        was = self.blocked(address, username)
        self.failures_total += 1
        now = self.clock()
        _bump(self._failures, (address, username), now)
        _bump(self._address_failures, address, now)
        return not was and self.blocked(address, username)

    def succeeded(self, address: str, username: str) -> None:
        self._failures.pop((address, username), None)
        self._address_failures.pop(address, None)


def _bump(table: OrderedDict[_K, tuple[float, int]], key: _K, now: float) -> None:
    since, count = table.get(key, (now, 0))
    if now - since > FAILURE_WINDOW:
        since, count = now, 0
    table[key] = (since, count + 1)
    table.move_to_end(key)
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)


def _basic(token: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return username[:256], password[:1024]
