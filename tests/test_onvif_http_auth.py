"""HTTP-level authentication of the virtual ONVIF devices (issue 17 item 1).

Refused HTTP credentials always get 401 with a Digest challenge (``stale=TRUE`` when a
correct answer used an expired nonce), so clients that keep a nonce recover and Basic
clients fall back; Basic itself follows ``[vms] allow_basic``. WS-Security failures keep
their SOAP fault (tests/test_onvif_gateway.py). The clock is injected: nonces expire by
moving it, not by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.digest import DigestClient, parse_auth_params, split_scheme
from tests.conftest import run_tool
from tests.test_onvif_gateway import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    clip_gateway,
    envelope,
    gateway,
    post,
    sim_camera,
    streams,
)
from tests.test_onvif_node import NODE_DIR, run_node

GET_INFO = envelope("<tds:GetDeviceInformation/>")
SOAP_HEADERS = {"Content-Type": "application/soap+xml"}
WINDOW = 30  # [onvif] auth_window of the gateway fixture


@pytest.fixture
async def basic_gateway(streams, sim_camera) -> AsyncIterator[Any]:  # noqa: F811
    async with clip_gateway(streams, sim_camera, vms_extra="allow_basic = true") as servers:
        yield servers


def challenge_params(values: list[str]) -> dict[str, str]:
    digest = [v for v in values if split_scheme(v)[0] == "digest"]
    assert len(digest) == 1, values
    return parse_auth_params(split_scheme(digest[0])[1])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- raw HTTP


async def test_nonces_are_hex_and_refusals_always_challenge(gateway):  # noqa: F811
    status, headers, _ = await post(gateway.base, GET_INFO)
    assert status == 401
    params = challenge_params(headers.getall("WWW-Authenticate"))
    assert all(c in "0123456789abcdef" for c in params["nonce"]), params
    assert "stale" not in params
    # Basic is off by default: refused with the Digest challenge only, never 400.
    status, headers, _ = await post(
        gateway.base, GET_INFO, headers={"Authorization": basic(USER, PASSWORD)}
    )
    assert status == 401 and headers.getall("WWW-Authenticate")[0].startswith("Digest ")
    assert len(headers.getall("WWW-Authenticate")) == 1
    # A malformed header and an unknown scheme: the same.
    for header in ("Digest nonsense", "Bearer abc"):
        status, headers, _ = await post(gateway.base, GET_INFO, headers={"Authorization": header})
        assert status == 401 and "WWW-Authenticate" in headers, header


async def test_authentication_matrix_over_http_digest(gateway):  # noqa: F811
    """Missing, wrong, replayed, stale and skewed Digest answers stay refused."""
    port = gateway.base
    path = "/onvif/device_service"
    _, headers, _ = await post(port, GET_INFO)
    client = DigestClient(USER, PASSWORD, allow_basic=False)
    client.handle_challenge(headers.getall("WWW-Authenticate"))
    auth = client.authorization("POST", path)
    assert auth is not None
    assert (await post(port, GET_INFO, headers={"Authorization": auth}))[0] == 200
    # replayed
    status, headers, _ = await post(port, GET_INFO, headers={"Authorization": auth})
    assert status == 401 and "stale" not in challenge_params(headers.getall("WWW-Authenticate"))
    # wrong password, fresh nonce: not stale (the client must ask for credentials again)
    wrong = DigestClient(USER, "wrong", allow_basic=False)
    wrong.handle_challenge(headers.getall("WWW-Authenticate"))
    status, headers, _ = await post(
        port, GET_INFO, headers={"Authorization": wrong.authorization("POST", path) or ""}
    )
    assert status == 401 and "stale" not in challenge_params(headers.getall("WWW-Authenticate"))
    # stale: the right password on an expired nonce; refused, with stale=TRUE
    gateway.clock.offset += WINDOW + 1
    status, headers, _ = await post(
        port, GET_INFO, headers={"Authorization": client.authorization("POST", path) or ""}
    )
    params = challenge_params(headers.getall("WWW-Authenticate"))
    assert status == 401 and params["stale"].lower() == "true"
    # ... but a wrong password on an expired nonce is not stale
    status, headers, _ = await post(
        port, GET_INFO, headers={"Authorization": wrong.authorization("POST", path) or ""}
    )
    assert status == 401 and "stale" not in challenge_params(headers.getall("WWW-Authenticate"))
    # skewed: a nonce issued (by this device's clock) well after the device's now
    client.handle_challenge(headers.getall("WWW-Authenticate"))
    gateway.clock.offset -= 60
    status, _, _ = await post(
        port, GET_INFO, headers={"Authorization": client.authorization("POST", path) or ""}
    )
    assert status == 401
    # the answer for another resource is refused
    gateway.clock.offset += 60
    status, headers, _ = await post(port, GET_INFO)
    client.handle_challenge(headers.getall("WWW-Authenticate"))
    other = client.authorization("POST", "/onvif/media_service") or ""
    assert (await post(port, GET_INFO, headers={"Authorization": other}))[0] == 401


async def test_http_failures_are_throttled(gateway):  # noqa: F811
    timings = []
    for _ in range(6):
        start = time.monotonic()
        status, _, _ = await post(
            gateway.base, GET_INFO, headers={"Authorization": basic(USER, "nope")}
        )
        assert status == 401
        timings.append(time.monotonic() - start)
    assert max(timings[:3]) < 0.2
    assert timings[-1] >= 0.45  # 0.25 s doubled per failure past the third


# --------------------------------------------------------------------------- python-requests


async def test_requests_session_recovers_after_the_nonce_expires(gateway):  # noqa: F811
    """A requests Session keeps its nonce; past auth_window it gets 401 stale=TRUE, and
    HTTPDigestAuth answers the new challenge at once (SOAP and snapshot)."""
    import requests
    from requests.auth import HTTPDigestAuth

    base = f"http://127.0.0.1:{gateway.base}"

    def run(session: requests.Session, method: str, path: str) -> requests.Response:
        data = GET_INFO if method == "POST" else None
        headers = SOAP_HEADERS if method == "POST" else None
        resp = session.request(method, base + path, data=data, headers=headers, timeout=10)
        assert resp.status_code == 200, (resp.status_code, resp.text[:200])
        return resp

    def scenario() -> list[list[int]]:
        session = requests.Session()
        session.auth = HTTPDigestAuth(USER, PASSWORD)
        history = []
        with session:
            for method, path, advance in (
                ("POST", "/onvif/device_service", 0),
                ("POST", "/onvif/device_service", 0),  # the kept nonce, next nc
                ("GET", "/onvif/snapshot/cam1_main.jpg", 0),
                ("POST", "/onvif/device_service", WINDOW + 1),  # expired: stale, recovered
                ("GET", "/onvif/snapshot/cam1_main.jpg", WINDOW + 1),
                ("GET", "/onvif/snapshot/cam1_sub.jpg", 0),
            ):
                gateway.clock.offset += advance
                resp = run(session, method, path)
                if advance:
                    stale = parse_auth_params(
                        split_scheme(resp.history[0].headers["WWW-Authenticate"])[1]
                    )
                    assert stale.get("stale", "").lower() == "true", stale
                history.append([r.status_code for r in resp.history])
        return history

    history = await asyncio.to_thread(scenario)
    assert history == [[401], [], [], [401], [401], []]


# --------------------------------------------------------------------------- curl


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def curl(port: int, *args: str, path: str, body: Path | None = None) -> tuple[int, str]:
    """curl's exit code and the HTTP status (and the body, for SOAP) of one request."""
    argv = ["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args]
    if body is not None:
        argv += ["-H", "Content-Type: application/soap+xml", "--data-binary", f"@{body}"]
    code, out, err = await run_tool(*argv, f"http://127.0.0.1:{port}{path}")
    assert code == 0, err
    text, _, status = out.rpartition("\n")
    return int(status), text


@needs_curl
async def test_curl_basic_follows_allow_basic(gateway, basic_gateway, tmp_path: Path):  # noqa: F811
    body = tmp_path / "get-info.xml"
    body.write_bytes(GET_INFO)
    user = ("-u", f"{USER}:{PASSWORD}")
    snapshot = "/onvif/snapshot/cam1_main.jpg"
    # allow_basic off: curl -u (Basic) is refused with 401, --anyauth falls back to Digest.
    assert (await curl(gateway.base, *user, path=snapshot))[0] == 401
    assert (await curl(gateway.base, *user, path="/onvif/device_service", body=body))[0] == 401
    assert (await curl(gateway.base, "--anyauth", *user, path=snapshot))[0] == 200
    status, text = await curl(
        gateway.base, "--anyauth", *user, path="/onvif/device_service", body=body
    )
    assert status == 200 and "GetDeviceInformationResponse" in text
    # allow_basic on: Basic is accepted, and the challenge offers it after Digest.
    assert (await curl(basic_gateway.base, *user, path=snapshot))[0] == 200
    status, text = await curl(basic_gateway.base, *user, path="/onvif/device_service", body=body)
    assert status == 200 and "GetDeviceInformationResponse" in text
    assert (await curl(basic_gateway.base, "-u", f"{USER}:wrong", path=snapshot))[0] == 401
    _, headers, _ = await post(basic_gateway.base, GET_INFO)
    schemes = [split_scheme(v)[0] for v in headers.getall("WWW-Authenticate")]
    assert schemes == ["digest", "basic"]


# --------------------------------------------------------------------------- node-onvif


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "node-onvif").is_dir(),
    reason="node or tests/node/node_modules missing (cd tests/node && npm ci)",
)
async def test_node_onvif_snapshot_with_basic_allowed(basic_gateway):
    """node-onvif sends Basic first: accepted when allowed (the Digest fallback, with Basic
    off, is in tests/test_onvif_node.py and the conformance matrix)."""
    xaddr = f"http://127.0.0.1:{basic_gateway.base}/onvif/device_service"
    result = await run_node("node_onvif_client.js", xaddr, USER, PASSWORD)
    assert result["ok"], result.get("error")
    assert result["snapshot"]["ok"], result["snapshot"]
