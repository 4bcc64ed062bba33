"""Admin accounts, roles and the audit trail, over HTTPS with the generated certificate:
every operation of the OpenAPI document called as each role (allowed: not 401/403;
forbidden: 403), hash-only accounts (Basic yes, Digest no), the per-account lock-out that
spares sessions and other accounts, cross-site refusal, the audit trail (API and
``onvif-gateway audit-log --json``) and a renewed certificate loaded without a restart."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.admin import api, tls
from gateway.admin.auth import cleartext_allowed, cross_site
from gateway.digest import DigestClient
from gateway.passwords import hash_password, parse
from gateway.sim.runner import SimFleet
from tests.admin_support import AdminGateway, OpenApi, admin_gateway
from tests.conftest import require, run_tool
from tests.test_admin_api import concrete, fetch

SPEC = OpenApi()
ROLES = ("viewer", "operator", "admin")
# Accounts per role; the viewer and the operator exist only as salted hashes.
PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-2", "ada": "admin-pass-3"}
ACCOUNT = {"viewer": "vera", "operator": "otto", "admin": "ada"}


def users_toml(tmp_path: Path) -> str:
    # The cheapest scrypt cost accepted, to keep the test quick.
    (tmp_path / "ada.password").write_text(PASSWORDS["ada"] + "\n")
    blocks = [
        f'name = "vera"\nrole = "viewer"\n'
        f'password_hash = "{hash_password(PASSWORDS["vera"], ln=12)}"',
        f'name = "otto"\nrole = "operator"\n'
        f'password_hash = "{hash_password(PASSWORDS["otto"], ln=12)}"',
        f'name = "ada"\nrole = "admin"\npassword_file = "{tmp_path / "ada.password"}"',
    ]
    return "".join(f"\n[[admin.user]]\n{block}\n" for block in blocks)


@pytest.fixture
async def admin(fleet: SimFleet, tmp_path: Path, vms_password: str) -> Any:
    async with admin_gateway(
        fleet, tmp_path, vms_password, extra_admin=users_toml(tmp_path)
    ) as running:
        yield running


def as_user(admin: AdminGateway, role: str) -> dict[str, str]:
    name = ACCOUNT[role]
    return admin.basic(username=name, password=PASSWORDS[name])


def allowed(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def test_code_and_openapi_declare_the_same_roles() -> None:
    documented = {
        (method.upper(), path): op.get("x-role", api.PUBLIC)
        for path, method, op in SPEC.operations()
    }
    in_code = {(m, p): r for m, p, _, r in api.ROUTES}
    for key, role in documented.items():
        assert in_code[key] == role, key
    dashboard = {k for k in in_code if k not in documented}
    # Only the dashboard's own pages and the sign-in/out form are not API operations.
    assert {p for _, p in dashboard} <= {
        "/",
        "/static/app.js",
        "/static/style.css",
        "/login",
        "/logout",
    }
    for path, method, op in SPEC.operations():
        if op.get("x-role") not in (None, "viewer"):
            assert "403" in op["responses"], f"{method} {path} documents no 403"


async def test_every_operation_as_every_role(admin: AdminGateway) -> None:
    checked = 0
    async with admin.session() as session:
        for path, method, operation in SPEC.operations():
            needed = operation.get("x-role")
            if needed is None:
                continue
            for role in ROLES:
                status, body, _ = await fetch(
                    session, method, admin.url + concrete(path), as_user(admin, role)
                )
                where = f"{role} {method} {path}: {status} {body!r}"[:300]
                if allowed(role, needed):
                    assert status not in (401, 403), where
                    if status < 300 and isinstance(body, dict):
                        SPEC.validate(path, method, status, body)
                else:
                    assert status == 403 and needed in body["error"], where
                    SPEC.validate(path, method, 403, body)
                checked += 1
    assert checked >= 3 * 18
    # Refused actions are in the audit trail too.
    refused = [
        e
        for e in admin.trail()
        if e["account"] == "vera" and e["result"].startswith("refused: needs role")
    ]
    assert {e["action"] for e in refused} >= {"reload", "enforce", "audit", "reconnect"}


async def test_session_reports_the_role_and_hash_only_accounts_use_basic(
    admin: AdminGateway,
) -> None:
    path = "/api/v1/session"
    async with admin.session() as session:
        for role in ROLES:
            status, body, _ = await fetch(session, "GET", admin.url + path, as_user(admin, role))
            assert status == 200 and body["role"] == role and body["method"] == "basic"
        # Digest: fine for the account whose password the file holds; a hash-only account
        # cannot answer a Digest challenge (the server has no MD5(user:realm:password)).
        _, _, response = await fetch(session, "GET", admin.url + path)
        for name, expected in (("ada", 200), ("vera", 401)):
            client = DigestClient(name, PASSWORDS[name], allow_basic=False)
            client.handle_challenge(response.headers.getall("WWW-Authenticate"))
            headers = {"Authorization": client.authorization("GET", path) or ""}
            status, _, _ = await fetch(session, "GET", admin.url + path, headers)
            assert status == expected, name


async def test_lock_out_spares_sessions_and_other_accounts(admin: AdminGateway) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    url = admin.url + "/api/v1/cameras"
    async with admin.session(cookie_jar=jar) as browser, admin.session() as script:
        # A dashboard session of the admin account, opened before the attack.
        status, _, _ = await fetch(
            browser,
            "POST",
            admin.url + "/login",
            data={"username": "ada", "password": PASSWORDS["ada"], "next": "/"},
        )
        assert status == 303
        for _ in range(10):
            status, _, _ = await fetch(script, "GET", url, admin.basic("guess", "ada"))
            assert status == 401
        # The attacked name is locked out from this address, even with the right password...
        status, body, _ = await fetch(script, "GET", url, as_user(admin, "admin"))
        assert status == 429 and "too many" in body["error"]
        status, _, _ = await fetch(
            script,
            "POST",
            admin.url + "/login",
            data={"username": "ada", "password": PASSWORDS["ada"]},
        )
        assert status == 429
        # ...but the open session and the other accounts (Prometheus, say) carry on.
        status, _, _ = await fetch(browser, "GET", url)
        assert status == 200
        status, _, _ = await fetch(script, "GET", admin.url + "/metrics", as_user(admin, "viewer"))
        assert status == 200
    trail = admin.trail()
    failed = [e for e in trail if e["action"] == "sign-in-failed" and e["account"] == "ada"]
    assert len(failed) == 10 and all(e["source"].startswith("127.0.0.1:") for e in failed)
    assert any(e["action"] == "locked-out" and e["account"] == "ada" for e in trail)
    assert any(e["action"] == "sign-in" and e["method"] == "form" for e in trail)


async def test_cross_site_posts_are_refused_whatever_the_scheme(admin: AdminGateway) -> None:
    url = admin.url + "/api/v1/cameras/hik1/reconnect"
    async with admin.session() as session:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            status, body, _ = await fetch(
                session, "POST", url, {**as_user(admin, "admin"), **headers}
            )
            assert status == 403 and "cross-site" in body["error"], headers
        same = {"Origin": admin.url, "Sec-Fetch-Site": "same-origin"}
        status, _, _ = await fetch(session, "POST", url, {**as_user(admin, "admin"), **same})
        assert status == 202


def test_cross_site_and_cleartext_decisions() -> None:
    host = "gw.example:8443"
    assert not cross_site({}, "https", host)  # curl, Prometheus
    assert not cross_site({"Origin": "https://gw.example:8443"}, "https", host)
    assert cross_site({"Origin": "http://gw.example:8443"}, "https", host)
    assert cross_site({"Origin": "null"}, "https", host)
    assert cross_site({"Sec-Fetch-Site": "same-site"}, "https", host)
    assert not cross_site({"Sec-Fetch-Site": "none"}, "https", host)
    # Sec-Fetch-Site, where a browser sends it, decides (Origin may be "null" on a form).
    assert not cross_site({"Sec-Fetch-Site": "same-origin", "Origin": "null"}, "https", host)
    assert cross_site(
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://gw.example:8443"}, "https", host
    )
    assert cleartext_allowed(True, "192.0.2.7")
    assert cleartext_allowed(False, "127.0.0.1") and cleartext_allowed(False, "127.8.9.10")
    assert cleartext_allowed(False, "::1")
    assert not cleartext_allowed(False, "192.0.2.7")
    assert not cleartext_allowed(False, "::ffff:192.0.2.7")
    assert not cleartext_allowed(False, None)


def test_password_hash_format() -> None:
    text = hash_password("correct horse", ln=12)
    assert re.fullmatch(r"\$scrypt\$ln=12,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", text)
    hashed = parse(text)
    assert hashed.matches("correct horse") and not hashed.matches("correct horse ")
    assert hash_password("correct horse", ln=12) != text  # salted
    for bad in ("", "plain", text.replace("ln=12", "ln=30"), text[:-5]):
        with pytest.raises(ValueError):
            parse(bad)


async def test_audit_log_command_exports_the_trail(admin: AdminGateway) -> None:
    async with admin.session() as session:
        status, _, _ = await fetch(
            session, "POST", admin.url + "/api/v1/reload", as_user(admin, "admin")
        )
        assert status == 200
        status, body, _ = await fetch(
            session, "GET", admin.url + "/api/v1/admin-log?limit=5", as_user(admin, "operator")
        )
        assert status == 200
        SPEC.validate("/api/v1/admin-log", "get", 200, body)
        last = body["entries"][-1]
        assert (last["account"], last["role"], last["action"], last["result"]) == (
            "ada",
            "admin",
            "reload",
            "ok",
        )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "audit-log",
        "--config",
        str(admin.config_path),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    entries = json.loads(out)["entries"]
    reloads = [e for e in entries if e["kind"] == "admin" and e["action"] == "reload"]
    assert reloads and reloads[-1]["account"] == "ada"
    assert reloads[-1]["source"].startswith("127.0.0.1:")
    text = out.decode()
    assert all(p not in text for p in PASSWORDS.values()) and admin.password not in text


async def test_renewed_certificate_is_served_after_reload(admin: AdminGateway) -> None:
    assert admin.ca is not None
    port = int(admin.url.rsplit(":", 1)[1])

    async def served() -> bytes:
        context = ssl.create_default_context(cafile=str(admin.ca))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    before = await served()
    trusting_the_old = admin.ssl_context()
    key = admin.ca.with_name(tls.KEY_NAME)
    tls.generate(admin.ca, key, ["127.0.0.1", "localhost"])
    connector = aiohttp.TCPConnector(ssl=trusting_the_old)
    async with aiohttp.ClientSession(connector=connector) as session:
        status, _, _ = await fetch(
            session, "POST", admin.url + "/api/v1/reload", as_user(admin, "admin")
        )
        assert status == 200
    after = await served()
    assert after != before
    assert ssl.DER_cert_to_PEM_cert(after).encode().strip() == admin.ca.read_bytes().strip()


async def test_hsts_and_strict_cookie_over_tls(admin: AdminGateway) -> None:
    async with admin.session() as session:
        status, _, response = await fetch(
            session,
            "POST",
            admin.url + "/login",
            data={"username": "vera", "password": PASSWORDS["vera"], "next": "/"},
        )
        assert status == 303
        cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_admin_accounts_configuration(tmp_path: Path) -> None:
    from gateway import config as cfgmod

    base = '[vms]\nusername = "vms"\npassword = "v"\n[admin]\n'
    hashed = hash_password("x" * 12, ln=12)
    only_users = cfgmod.loads(
        base + f'[[admin.user]]\nname = "guard"\nrole = "viewer"\npassword_hash = "{hashed}"\n'
    )
    assert only_users.admin is not None and only_users.admin.tls is True
    assert [(a.name, a.role) for a in only_users.admin.accounts()] == [("guard", "viewer")]
    legacy = cfgmod.loads(base + 'username = "admin"\npassword = "p"\ntls = false\n')
    assert legacy.admin is not None and not legacy.admin.tls
    assert [(a.name, a.role) for a in legacy.admin.accounts()] == [("admin", "admin")]
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.loads(
            base
            + 'username = "admin"\npassword = "p"\ntls_cert = "nosuch.crt"\n'
            + '[[admin.user]]\nname = "admin"\nrole = "root"\npassword = "q"\n'
            + '[[admin.user]]\nname = "b"\nrole = "viewer"\npassword = "q"\n'
            + f'password_hash = "{hashed}"\n'
            + '[[admin.user]]\nname = "c"\nrole = "viewer"\npassword_hash = "plain"\n',
            base_dir=tmp_path,
        )
    problems = dict(info.value.problems)
    assert "tls_cert and tls_key" in problems["admin.tls_key"]
    assert "not a readable file" in problems["admin.tls_cert"]
    assert "must be one of viewer, operator, admin" in problems["admin.user[0].role"]
    assert "not both" in problems["admin.user[1].password_hash"]
    assert "onvif-gateway passwd" in problems["admin.user[2].password_hash"]


def test_broken_renewal_keeps_the_served_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    first = tls.generate(cert, key, ["127.0.0.1"])
    server = tls.ServerTLS(cert, key)
    assert server.fingerprint == first.fingerprint and not server.refresh()
    # A new certificate whose key does not match: refused, the old pair stays in use.
    other_cert, other_key = tmp_path / "b.crt", tmp_path / "b.key"
    tls.generate(other_cert, other_key, ["127.0.0.1"])
    assert not server.refresh(other_cert, key)
    assert (server.cert, server.fingerprint) == (cert, first.fingerprint)
    assert server.refresh(other_cert, other_key) and server.fingerprint != first.fingerprint
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_generated_certificate_names_and_renewal(tmp_path: Path) -> None:
    from cryptography import x509

    info = tls.ensure_generated(tmp_path, "192.0.2.5")
    assert info.created
    cert = x509.load_pem_x509_certificate(info.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert {"192.0.2.5", "127.0.0.1", "::1"} <= addresses
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert not tls.ensure_generated(tmp_path, "192.0.2.5").created  # kept
    later = info.not_after - tls.RENEW_BEFORE + datetime.timedelta(days=1)
    renewed = tls.ensure_generated(tmp_path, "192.0.2.5", now=later)
    assert renewed.created and renewed.fingerprint != info.fingerprint


async def test_curl_pins_the_generated_certificate(admin: AdminGateway) -> None:
    require("curl")
    assert admin.ca is not None
    code, out, err = await run_tool(
        "curl", "--silent", "--show-error", "--fail", "--cacert", str(admin.ca),
        "--digest", "-u", f"ada:{PASSWORDS['ada']}", admin.url + "/api/v1/session",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["role"] == "admin"
    code, _, err = await run_tool("curl", "--silent", "--show-error", admin.url + "/healthz")
    assert code != 0 and "certificate" in err  # not trusted without the file


async def test_passwd_and_check_commands(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "passwd", "guard", "--role", "operator",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"a-long-password\n"), 60)
    assert proc.returncode == 0, err.decode()
    block = out.decode()
    assert "a-long-password" not in block + err.decode()
    config = tmp_path / "gateway.toml"
    config.write_text('[vms]\nusername = "vms"\npassword = "v"\n[admin]\ntls = false\n' + block)
    from gateway import config as cfgmod

    loaded = cfgmod.load(config)
    assert loaded.admin is not None
    (user,) = loaded.admin.users
    assert (user.name, user.role) == ("guard", "operator") and user.password_hash is not None
    assert parse(user.password_hash.reveal()).matches("a-long-password")
    code, _, err = await run_tool(sys.executable, "-m", "gateway", "check", "--config", str(config))
    assert code == 0 and "warning: admin.tls = false" in err
