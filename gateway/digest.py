"""HTTP Digest (RFC 2617 / RFC 7616) and Basic auth: the gateway's one implementation.

RTSP (server and camera reader), the ONVIF devices' HTTP auth, the admin API, the camera
HTTP clients and the simulator all use it.

Server side, :class:`DigestAuthenticator` issues stateless nonces (issue time + HMAC, so they
expire without a table) and verifies ``Authorization`` headers with and without ``qop``:
FFmpeg answers ``qop=auth`` when offered, GStreamer and several VMSs ignore qop. Nonce-count
replay tracking (qop=auth only) is bounded in memory.

Client side, :class:`DigestClient` answers a 401's ``WWW-Authenticate`` challenges.

Sans-IO: ``now`` (seconds, any monotonic or wall clock, used consistently) is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

CredentialLookup = Callable[[str], str | None]

_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(,|$)')
_MAX_HEADER = 4096
_NONCE_LENGTH = 8 + 12 + 32
_HEX_RE = re.compile(r"[0-9a-f]+")


def parse_auth_params(text: str) -> dict[str, str]:
    """``k=v, k2="quoted, value"`` -> dict with lower-case keys; ValueError if malformed."""
    params: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _PARAM_RE.match(text, pos)
        if match is None:
            raise ValueError(f"malformed auth parameter at {text[pos : pos + 30]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in params:
            raise ValueError(f"auth parameter {name} given twice")
        params[name] = value
        pos = match.end()
        while pos < len(text) and text[pos] in " ,":
            pos += 1
    return params


def split_scheme(header: str) -> tuple[str, str]:
    """``"Digest a=b"`` -> ``("digest", "a=b")``."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), rest.strip()


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def digest_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 section 3.4.1); algorithm may end in ``-sess``."""
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha1 = _h(base, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(base, f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = _h(base, f"{method}:{uri}")
    if qop:
        return _h(base, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(base, f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class AuthResult:
    """Outcome of checking one Authorization header; ``stale`` asks for a new nonce."""

    username: str | None
    stale: bool = False
    reason: str = ""
    # What made this Digest answer unique (nonce, and nc and cnonce under qop=auth), for a
    # caller that keeps its own replay cache instead of the nonce counts (ONVIF).
    answer: str = ""


class DigestAuthenticator:
    """Checks RTSP requests against ``users`` (name -> password, or a lookup function)."""

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str] | CredentialLookup,
        secret: bytes,
        nonce_lifetime: float = 300,
        allow_basic: bool = False,
        offer_qop: bool = True,
        max_tracked_nonces: int = 4096,
        algorithms: Sequence[str] = ("MD5",),
        count_nonces: bool = True,
    ) -> None:
        """``algorithms``: what a client's answer may use (the challenge offers MD5, which
        every client knows). ``count_nonces=False`` leaves replay checks to the caller, who
        remembers each result's ``answer``; else nonce counts must grow (qop=auth)."""
        if '"' in realm or "\\" in realm:
            raise ValueError("realm must not contain quotes or backslashes")
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        self.realm = realm
        self._lookup: CredentialLookup = users.get if isinstance(users, Mapping) else users
        self._secret = secret
        self.nonce_lifetime = nonce_lifetime
        self.allow_basic = allow_basic
        self.offer_qop = offer_qop
        self.max_tracked_nonces = max_tracked_nonces
        self.algorithms = frozenset(a.upper() for a in algorithms)
        if not self.algorithms <= _HASHES.keys():
            raise ValueError(f"unsupported digest algorithms {sorted(algorithms)}")
        self.count_nonces = count_nonces
        # nonce -> highest nc accepted, least recently used first.
        self._nonce_counts: OrderedDict[str, int] = OrderedDict()
        # Issue time of the newest nonce evicted from _nonce_counts: older untracked nonces
        # might be replays of evicted ones, so they are declared stale.
        self._evicted_until = -1

    # -- nonces

    def _nonce_mac(self, issued: str) -> str:
        mac = hmac.new(self._secret, f"{issued}:{self.realm}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def make_nonce(self, now: float) -> str:
        """52 hex digits: issue time (8), a random salt (12), HMAC (32). Hex only: clients
        that split the header on ``=`` (node-onvif) would break on base64 padding."""
        # A random salt makes every challenge unique: two clients challenged in the same
        # second must not share a nonce, or the second one's nc=1 looks like a replay.
        issued = f"{int(now) & 0xFFFFFFFF:08x}{secrets.token_hex(6)}"
        return f"{issued}{self._nonce_mac(issued)}"

    def _nonce_issued(self, nonce: str) -> int | None:
        """Issue time if ``nonce`` is one of ours, else None."""
        if len(nonce) != _NONCE_LENGTH or not _HEX_RE.fullmatch(nonce):
            return None
        issued, mac = nonce[:-32], nonce[-32:]
        if not hmac.compare_digest(mac, self._nonce_mac(issued)):
            return None
        return int(issued[:8], 16)

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate values for a 401 (Digest first: clients take the first they know)."""
        parts = [
            f"realm={_quote(self.realm)}",
            f'nonce="{self.make_nonce(now)}"',
            "algorithm=MD5",
        ]
        if self.offer_qop:
            parts.append('qop="auth"')
        if stale:
            parts.append("stale=TRUE")
        values = ["Digest " + ", ".join(parts)]
        if self.allow_basic:
            values.append(f"Basic realm={_quote(self.realm)}")
        return values

    # -- verification

    def verify(
        self, method: str, authorization: str | None, now: float, uri: str | None = None
    ) -> str | None:
        """The authenticated username, or None."""
        return self.authenticate(method, authorization, now, uri).username

    def authenticate(
        self, method: str, authorization: str | None, now: float, uri: str | None = None
    ) -> AuthResult:
        if not authorization:
            return AuthResult(None, reason="no credentials")
        if len(authorization) > _MAX_HEADER:
            return AuthResult(None, reason="Authorization header too long")
        scheme, rest = split_scheme(authorization)
        try:
            if scheme == "digest":
                return self._check_digest(method, rest, now, uri)
            if scheme == "basic":
                return self._check_basic(rest)
        except ValueError as exc:
            return AuthResult(None, reason=str(exc))
        return AuthResult(None, reason=f"unsupported scheme {scheme[:20]!r}")

    def _check_basic(self, token: str) -> AuthResult:
        if not self.allow_basic:
            return AuthResult(None, reason="Basic auth not allowed")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(None, reason="malformed Basic credentials")
        username, sep, password = decoded.partition(":")
        if not sep:
            return AuthResult(None, reason="malformed Basic credentials")
        expected = self._lookup(username)
        if expected is None:
            # Compare anyway so unknown users take as long as wrong passwords.
            hmac.compare_digest(password.encode(), password.encode()[::-1])
            return AuthResult(None, reason="unknown user")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            return AuthResult(None, reason="wrong password")
        return AuthResult(username)

    def _check_digest(self, method: str, rest: str, now: float, uri: str | None) -> AuthResult:
        params = parse_auth_params(rest)
        for name in ("username", "realm", "nonce", "uri", "response"):
            if name not in params:
                return AuthResult(None, reason=f"Digest without {name}")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in self.algorithms:
            return AuthResult(None, reason=f"unsupported algorithm {algorithm[:20]!r}")
        if params["realm"] != self.realm:
            return AuthResult(None, reason="wrong realm")
        digest_uri = params["uri"]
        if uri is not None and not _same_resource(digest_uri, uri):
            return AuthResult(None, reason="Digest uri does not match the request")
        nonce = params["nonce"]
        username = params["username"]
        password = self._lookup(username)
        qop = params.get("qop")
        nc = params.get("nc")
        cnonce = params.get("cnonce")
        if qop is not None:
            if qop.lower() != "auth":
                return AuthResult(None, reason=f"unsupported qop {qop[:20]!r}")
            if nc is None or cnonce is None or not re.fullmatch(r"[0-9a-fA-F]{8}", nc):
                return AuthResult(None, reason="qop=auth needs an 8-hex-digit nc and a cnonce")
        expected = digest_response(
            algorithm,
            username,
            self.realm,
            password if password is not None else "",
            method,
            digest_uri,
            nonce,
            qop,
            nc,
            cnonce,
        )
        if not hmac.compare_digest(expected, params["response"].lower()) or password is None:
            return AuthResult(None, reason="wrong credentials")
        # The client knows the password; only the nonce is wrong: ask it to retry with a
        # fresh one (stale=TRUE) instead of prompting for credentials again.
        issued = self._nonce_issued(nonce)
        if issued is None:
            return AuthResult(None, stale=True, reason="nonce not issued by us")
        if issued > now + 5:
            return AuthResult(None, stale=True, reason="nonce from the future")
        if now - issued > self.nonce_lifetime:
            return AuthResult(None, stale=True, reason="nonce expired")
        if qop is not None and nc is not None:
            if not self.count_nonces:
                return AuthResult(username, answer=f"{nonce}:{nc}:{cnonce}")
            return self._check_count(username, nonce, issued, int(nc, 16))
        return AuthResult(username, answer=nonce)

    def _check_count(self, username: str, nonce: str, issued: int, count: int) -> AuthResult:
        last = self._nonce_counts.get(nonce)
        if last is None:
            if issued <= self._evicted_until:
                return AuthResult(None, stale=True, reason="nonce no longer tracked")
        elif count <= last:
            return AuthResult(None, reason=f"nonce count {count} replayed")
        self._nonce_counts[nonce] = count
        self._nonce_counts.move_to_end(nonce)
        while len(self._nonce_counts) > self.max_tracked_nonces:
            evicted, _ = self._nonce_counts.popitem(last=False)
            self._evicted_until = max(self._evicted_until, self._nonce_issued(evicted) or 0)
        return AuthResult(username)


def _same_resource(digest_uri: str, request_uri: str) -> bool:
    """Lenient match: same path and query, absolute or not, trailing slash ignored."""
    if digest_uri == request_uri or digest_uri == "*":
        return True
    return _path_and_query(digest_uri).rstrip("/") == _path_and_query(request_uri).rstrip("/")


def _path_and_query(uri: str) -> str:
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


# --------------------------------------------------------------------------- client side


class DigestClient:
    """Answers WWW-Authenticate challenges; remembers the last one to authorize later requests.

    Usage: on a 401, ``handle_challenge(response.headers.get_all("WWW-Authenticate"))``, then
    ``authorization(method, uri)`` for the retried request and every following one.
    """

    def __init__(self, username: str, password: str, allow_basic: bool = True) -> None:
        self.username = username
        self.password = password
        self.allow_basic = allow_basic
        self._scheme: str | None = None
        self._params: dict[str, str] = {}
        self._nc = 0
        self._cnonce = os.urandom(8).hex()

    @property
    def ready(self) -> bool:
        return self._scheme is not None

    def handle_challenge(self, challenges: Sequence[str] | str) -> None:
        """Pick the strongest challenge we can answer; ValueError if none."""
        if isinstance(challenges, str):
            challenges = [challenges]
        best: tuple[int, str, dict[str, str]] | None = None
        problems: list[str] = []
        for header in challenges:
            scheme, rest = split_scheme(header)
            if scheme not in ("digest", "basic"):
                problems.append(f"unsupported scheme {scheme[:20]!r}")
                continue
            try:
                params = parse_auth_params(rest)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if scheme == "digest":
                algorithm = params.get("algorithm", "MD5").upper()
                if algorithm.removesuffix("-SESS") not in _HASHES:
                    problems.append(f"unsupported digest algorithm {algorithm}")
                    continue
                if "nonce" not in params or "realm" not in params:
                    problems.append("Digest challenge without realm or nonce")
                    continue
                rank = 2 if algorithm.startswith("SHA-256") else 1
            elif scheme == "basic" and self.allow_basic:
                rank = 0
            else:
                problems.append(f"unsupported scheme {scheme[:20]!r}")
                continue
            if best is None or rank > best[0]:
                best = (rank, scheme, params)
        if best is None:
            raise ValueError("no usable challenge: " + "; ".join(problems or ["none given"]))
        _, scheme, params = best
        if scheme == "digest" and params.get("nonce") != self._params.get("nonce"):
            self._nc = 0
        self._scheme, self._params = scheme, params

    def authorization(self, method: str, uri: str) -> str | None:
        """The Authorization header value for this request, or None before any challenge."""
        if self._scheme is None:
            return None
        if self._scheme == "basic":
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return f"Basic {token}"
        params = self._params
        algorithm = params.get("algorithm", "MD5")
        qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
        qop = "auth" if "auth" in qops else None
        nc = None
        if qop is not None:
            self._nc += 1
            nc = f"{self._nc:08x}"
        response = digest_response(
            algorithm,
            self.username,
            params["realm"],
            self.password,
            method,
            uri,
            params["nonce"],
            qop,
            nc,
            self._cnonce,
        )
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(params['realm'])}",
            f"nonce={_quote(params['nonce'])}",
            f"uri={_quote(uri)}",
            f"response={_quote(response)}",
        ]
        if "algorithm" in params:
            parts.append(f"algorithm={algorithm}")
        if "opaque" in params:
            parts.append(f"opaque={_quote(params['opaque'])}")
        if qop is not None:
            parts += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(self._cnonce)}"]
        return "Digest " + ", ".join(parts)
