"""Who may use the admin API: HTTP Digest or Basic for scripts and Prometheus, a session
cookie (after the login form) for the dashboard.

- Digest (RFC 7616, MD5, qop=auth) is offered first in every challenge, Basic second:
  Prometheus' ``basic_auth`` and ``curl -u`` need Basic. Basic sends the password with
  every request, so on anything but loopback put TLS in front (see docs/operations.md).
- The login form posts the credentials once and gets an ``HttpOnly; SameSite=Strict``
  cookie holding a random session token; state-changing requests made with the cookie also
  need the session's CSRF token in ``X-CSRF-Token``.
- Repeated failures from one address are answered with 429 for a while.

Passwords are compared in constant time and never logged; nothing puts them in a URL.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.digest import DigestAuthenticator

REALM = "onvif-gateway admin"
SESSION_COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_IDLE = 8 * 3600.0
SESSION_MAX_AGE = 24 * 3600.0
MAX_SESSIONS = 256
# Failed attempts per address before it is refused for FAILURE_WINDOW seconds.
MAX_FAILURES = 10
FAILURE_WINDOW = 300.0
MAX_TRACKED_ADDRESSES = 4096


@dataclass
class Session:
    username: str
    csrf_token: str
    created: float
    last_used: float


@dataclass(frozen=True)
class Identity:
    username: str
    method: str  # "digest" | "basic" | "session"
    session: Session | None = None


class AdminAuth:
    """Credentials, sessions and failure throttling for one admin API."""

    def __init__(
        self, username: str, password: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self._nonce_secret = secrets.token_bytes(32)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.set_credentials(username, password)

    def set_credentials(self, username: str, password: str) -> None:
        """New admin credentials (config reload): existing sessions are ended."""
        if not username or not password:
            raise ValueError("the admin API needs a username and a password")
        self.username = username
        self._password = password
        self.digest = DigestAuthenticator(
            REALM, {username: password}, self._nonce_secret, allow_basic=True
        )
        self._sessions.clear()

    # ------------------------------------------------------------------ headers

    def challenge(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate values: Digest first, Basic second."""
        return self.digest.challenge(self.clock(), stale=stale)

    def check_header(
        self, method: str, authorization: str, uri: str
    ) -> tuple[Identity | None, bool]:
        """(identity or None, stale) for an Authorization header."""
        result = self.digest.authenticate(method, authorization, self.clock(), uri)
        if result.username is None:
            return None, result.stale
        scheme = authorization.split(None, 1)[0].lower()
        return Identity(result.username, "digest" if scheme == "digest" else "basic"), False

    # ------------------------------------------------------------------ login sessions

    def password_matches(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return user_ok and password_ok

    def open_session(self, username: str) -> tuple[str, Session]:
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = Session(username, secrets.token_urlsafe(24), now, now)
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

    def blocked(self, address: str) -> bool:
        entry = self._failures.get(address)
        if entry is None:
            return False
        since, count = entry
        if self.clock() - since > FAILURE_WINDOW:
            del self._failures[address]
            return False
        return count >= MAX_FAILURES

    def failed(self, address: str) -> None:
        now = self.clock()
        since, count = self._failures.get(address, (now, 0))
        if now - since > FAILURE_WINDOW:
            since, count = now, 0
        self._failures[address] = (since, count + 1)
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
