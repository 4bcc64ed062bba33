"""With ``[admin] tls = false``, a password is never taken over plain HTTP from another host:
proven with a real non-loopback client in network namespaces the test creates.

    gw namespace: the gateway, admin API on 0.0.0.0 (veth 10.199.0.1)
      |  veth
    client namespace: 10.199.0.2

From the client the sign-in page shows a disabled form, a POST of the right password is
refused (403) and so is HTTP Basic; Digest (the password never crosses the wire) works.
From loopback inside the gateway's namespace the same sign-in succeeds."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_egress_netns import _skip_reason, read_line, sh

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
GW_IP, CLIENT_IP = "10.199.0.1", "10.199.0.2"
ADMIN_PORT = 8080  # inside a namespace this test made: nothing else can hold it

CLIENT = r"""
import base64, http.client, json, sys, urllib.parse
from gateway.digest import DigestClient

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode()
    return response.status, data, response.getheader("WWW-Authenticate-All") or [
        v for k, v in response.getheaders() if k.lower() == "www-authenticate"
    ]

out = {}
status, page, _ = request("GET", "/login")
out["form"] = [status, "<fieldset disabled>" in page, "plain HTTP" in page]
form = urllib.parse.urlencode({"username": user, "password": password, "next": "/"})
status, _, _ = request(
    "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
)
out["post"] = status
basic = base64.b64encode(f"{user}:{password}".encode()).decode()
status, _, _ = request("GET", "/api/v1/session", headers={"Authorization": "Basic " + basic})
out["basic"] = status
status, _, challenges = request("GET", "/api/v1/session")
client = DigestClient(user, password, allow_basic=False)
client.handle_challenge(challenges)
auth = client.authorization("GET", "/api/v1/session")
status, _, _ = request("GET", "/api/v1/session", headers={"Authorization": auth})
out["digest"] = status
print(json.dumps(out))
"""


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    ns = {"gw": f"og-agw-{tag}", "client": f"og-acl-{tag}"}
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh(
            "ip", "-n", ns["gw"], "link", "add", "gw0", "type", "veth",
            "peer", "name", "cl0", "netns", ns["client"],
        )  # fmt: skip
        for role, dev, ip in (("gw", "gw0", GW_IP), ("client", "cl0", CLIENT_IP)):
            sh("ip", "-n", ns[role], "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns[role], "link", "set", dev, "up")
        yield ns
    finally:
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_plain_http_sign_in_from_another_host_is_refused(
    namespaces: dict[str, str], tmp_path: Path
) -> None:
    password = "adm-" + secrets.token_urlsafe(12)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[server]\nbind = "{GW_IP}"\n'
        '[vms]\nusername = "vms"\npassword = "vms-password"\n'
        f'[admin]\nbind = "0.0.0.0"\nport = {ADMIN_PORT}\ntls = false\n'
        f'username = "admin"\npassword = "{password}"\n'
    )
    gateway = subprocess.Popen(
        ["ip", "netns", "exec", namespaces["gw"], sys.executable, "-m", "gateway", "run",
         "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert json.loads(read_line(gateway, 60))["event"] == "ready"
        script = tmp_path / "client.py"
        script.write_text(CLIENT)

        def client(role: str, host: str) -> dict[str, object]:
            done = sh(
                "ip", "netns", "exec", namespaces[role], "env", f"PYTHONPATH={REPO}",
                sys.executable, str(script),
                host, str(ADMIN_PORT), "admin", password,
            )  # fmt: skip
            return dict(json.loads(done.stdout))

        remote = client("client", GW_IP)
        assert remote == {"form": [200, True, True], "post": 403, "basic": 403, "digest": 200}
        local = client("gw", "127.0.0.1")
        assert local == {"form": [200, False, False], "post": 303, "basic": 200, "digest": 200}
    finally:
        gateway.terminate()
        gateway.wait(30)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "audit-log", "--config", str(config), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    entries = json.loads(done.stdout)["entries"]
    refused = [
        e
        for e in entries
        if e["result"].startswith("refused: ") and e["action"] == "sign-in-failed"
    ]
    assert {e["source"].split(":")[0] for e in refused} == {CLIENT_IP}
    assert any(e["action"] == "sign-in" and e["source"].startswith("127.0.0.1:") for e in entries)
    assert password not in done.stdout
