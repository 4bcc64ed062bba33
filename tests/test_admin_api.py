"""The admin API against its OpenAPI document, with the gateway and every service running in
front of simulated cameras: authentication on every path, response schemas, actions, reload
without dropping unaffected streams, snapshots and the live-view WebSocket."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from openapi_spec_validator import validate as validate_spec

from gateway.admin.live import LiveViewer
from gateway.admin.service import AdminService
from gateway.codecs.base import CodecParams
from gateway.digest import DigestClient, digest_response
from gateway.media.hub import StreamHub
from gateway.rtsp.client import RtspReader
from gateway.sim.runner import SimFleet
from tests.admin_support import AdminGateway, OpenApi, admin_gateway
from tests.conftest import stream_url, wait_for

SPEC = OpenApi()
PATH_VALUES = {"camera": "hik1", "stream": "main"}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with session.request(
        method, url, headers=headers or {}, allow_redirects=False, **kwargs
    ) as response:
        body: Any
        if response.content_type == "application/json":
            body = await response.json()
        else:
            body = await response.read()
        return response.status, body, response


@pytest.fixture
async def admin(fleet: SimFleet, tmp_path: Path, vms_password: str) -> Any:
    async with admin_gateway(fleet, tmp_path, vms_password) as running:
        yield running


def test_openapi_document_is_valid() -> None:
    validate_spec(SPEC.document)


async def test_every_path_refuses_missing_and_wrong_credentials(admin: AdminGateway) -> None:
    checked = 0
    async with admin.session() as session:
        for path, method, operation in SPEC.operations():
            url = admin.url + concrete(path)
            if operation.get("security") == []:
                status, body, _ = await fetch(session, method, url)
                assert status == 200 and body == {"status": "ok"}, path
                continue
            for headers in (
                {},
                admin.basic(password="wrong-password"),
                admin.basic(username=f"root{checked}"),  # a name counts its own failures
                {"Authorization": "Bearer something"},
            ):
                status, body, response = await fetch(session, method, url, headers)
                assert status == 401, f"{method} {path} with {headers}: {status}"
                challenges = response.headers.getall("WWW-Authenticate")
                assert challenges[0].startswith("Digest ") and challenges[1].startswith("Basic ")
                SPEC.validate(path, method, 401, body)
            # A good request clears the account's failure count (ten in a row get 429).
            status, _, _ = await fetch(session, "GET", admin.url + "/api/v1/session", admin.basic())
            assert status == 200
            checked += 1
    assert checked >= 15


async def test_get_endpoints_match_the_openapi_schemas(admin: AdminGateway) -> None:
    hub = admin.gateway.hub("hik1", "main")
    assert hub is not None
    # The frame rate is measured between keyframes: it is known from the second one on.
    await wait_for(lambda: hub.fps > 0, 15, "hik1/main's frame rate")
    async with admin.session() as session:
        for path, method, _ in SPEC.operations():
            if method != "get" or "/live/" in path:
                continue
            status, body, response = await fetch(
                session, "GET", admin.url + concrete(path), admin.basic()
            )
            assert status == 200, f"{path}: {status} {body!r}"[:300]
            if response.content_type == "application/json":
                SPEC.validate(path, "get", 200, body)
        status, body, _ = await fetch(session, "GET", admin.url + "/api/v1/cameras", admin.basic())
    cameras = {c["name"]: c for c in body["cameras"]}
    assert set(cameras) == {"hik1", "dahua1"}
    hik_main = cameras["hik1"]["streams"][0]
    assert cameras["hik1"]["connected"] is True
    assert (hik_main["codec"], hik_main["width"], hik_main["height"]) == ("H264", 320, 240)
    assert hik_main["fps"] > 10 and hik_main["bitrate"] > 50_000
    assert hik_main["mse_mime"].startswith('video/mp4; codecs="avc1.')
    # ingest = "auto" (the default) reads the simulated Hikvision natively.
    assert (hik_main["ingest"], hik_main["ingest_fallback"]) == ("native", None)
    dahua_main = cameras["dahua1"]["streams"][0]
    assert dahua_main["codec"] == "H265" and "hvc1." in dahua_main["mse_mime"]


async def test_digest_authentication(admin: AdminGateway) -> None:
    client = DigestClient(admin.username, admin.password, allow_basic=False)
    path = "/api/v1/cameras"
    async with admin.session() as session:
        status, _, response = await fetch(session, "GET", admin.url + path)
        assert status == 401
        client.handle_challenge(response.headers.getall("WWW-Authenticate"))
        for _ in range(2):  # the nonce is reused with an increasing count
            authorization = client.authorization("GET", path)
            assert authorization is not None and authorization.startswith("Digest ")
            status, body, _ = await fetch(
                session, "GET", admin.url + path, {"Authorization": authorization}
            )
            assert status == 200, body
            SPEC.validate(path, "get", 200, body)
        wrong = DigestClient(admin.username, "not-the-password", allow_basic=False)
        wrong.handle_challenge(response.headers.getall("WWW-Authenticate"))
        status, _, _ = await fetch(
            session,
            "GET",
            admin.url + path,
            {"Authorization": wrong.authorization("GET", path) or ""},
        )
        assert status == 401


async def test_digest_changes_need_qop_auth(admin: AdminGateway) -> None:
    """Without qop=auth nothing counts Digest answers, so a captured header would work again
    for the nonce's lifetime: reads take it, changes do not."""
    path = "/api/v1/cameras/hik1/reconnect"
    async with admin.session() as session:
        _, _, response = await fetch(session, "GET", admin.url + "/api/v1/cameras")
        challenge = response.headers.getall("WWW-Authenticate")[0]
        nonce = re.search(r'nonce="([^"]+)"', challenge)
        realm = re.search(r'realm="([^"]+)"', challenge)
        assert nonce and realm

        def rfc2069(method: str, uri: str) -> str:
            answer = digest_response(
                "MD5", admin.username, realm[1], admin.password, method, uri, nonce[1]
            )
            return (
                f'Digest username="{admin.username}", realm="{realm[1]}", nonce="{nonce[1]}", '
                f'uri="{uri}", response="{answer}"'
            )

        read = rfc2069("GET", "/api/v1/cameras")
        status, _, _ = await fetch(
            session, "GET", admin.url + "/api/v1/cameras", {"Authorization": read}
        )
        assert status == 200
        status, _, _ = await fetch(
            session, "POST", admin.url + path, {"Authorization": rfc2069("POST", path)}
        )
        assert status == 401
        client = DigestClient(admin.username, admin.password, allow_basic=False)
        client.handle_challenge(challenge)
        status, _, _ = await fetch(
            session,
            "POST",
            admin.url + path,
            {"Authorization": client.authorization("POST", path) or ""},
        )
        assert status == 202


async def test_login_session_cookie_and_csrf(admin: AdminGateway) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with admin.session(cookie_jar=jar) as session:
        status, _, response = await fetch(session, "GET", admin.url + "/", {"Accept": "text/html"})
        assert status == 303 and response.headers["Location"].startswith("/login")
        status, _, response = await fetch(
            session,
            "POST",
            admin.url + "/login",
            data={"username": "admin", "password": "wrong", "next": "/"},
        )
        assert status == 303 and "failed=1" in response.headers["Location"]
        assert not jar.filter_cookies(admin.url)
        status, _, response = await fetch(
            session,
            "POST",
            admin.url + "/login",
            data={"username": "admin", "password": admin.password, "next": "//evil.example/"},
        )
        assert status == 303 and response.headers["Location"] == "/"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert admin.password not in cookie
        status, info, _ = await fetch(session, "GET", admin.url + "/api/v1/session")
        assert status == 200 and info["method"] == "session" and info["csrf_token"]
        SPEC.validate("/api/v1/session", "get", 200, info)
        status, page, _ = await fetch(session, "GET", admin.url + "/")
        assert status == 200 and b"/static/app.js" in page
        reconnect = admin.url + "/api/v1/cameras/hik1/reconnect"
        status, body, _ = await fetch(session, "POST", reconnect)
        assert status == 403 and "X-CSRF-Token" in body["error"]
        status, body, _ = await fetch(
            session, "POST", reconnect, {"X-CSRF-Token": info["csrf_token"]}
        )
        assert status == 202
        SPEC.validate("/api/v1/cameras/{camera}/reconnect", "post", 202, body)
        status, _, _ = await fetch(
            session, "POST", admin.url + "/logout", {"X-CSRF-Token": info["csrf_token"]}
        )
        assert status == 200
        status, _, _ = await fetch(session, "GET", admin.url + "/api/v1/session")
        assert status == 401


async def test_repeated_failures_are_throttled(admin: AdminGateway) -> None:
    async with admin.session() as session:
        url = admin.url + "/api/v1/cameras"
        for _ in range(10):
            status, _, _ = await fetch(session, "GET", url, admin.basic(password="guess"))
            assert status == 401
        status, body, _ = await fetch(session, "GET", url, admin.basic())
        assert status == 429 and "too many" in body["error"]


async def test_clients_come_from_the_rtsp_servers_client_records(admin: AdminGateway) -> None:
    gw = admin.gateway
    rtsp = gw.rtsp
    assert rtsp is not None
    ctx = next(s.ctx for s in gw.services if isinstance(s, AdminService))
    reader = RtspReader(stream_url(gw, "hik1", "main", admin.vms_password))
    await reader.start()
    try:
        await reader.wait_frames(5, timeout=20, media="video")
        (record,) = rtsp.clients()
        assert record.source is gw.hub("hik1", "main") and record.playing
        async with admin.session() as session:
            status, body, _ = await fetch(
                session, "GET", admin.url + "/api/v1/clients", admin.basic()
            )
            assert status == 200
            SPEC.validate("/api/v1/clients", "get", 200, body)
            status, camera, _ = await fetch(
                session, "GET", admin.url + "/api/v1/cameras/hik1", admin.basic()
            )
            assert status == 200
            status, metrics_text, _ = await fetch(
                session, "GET", admin.url + "/metrics", admin.basic()
            )
        (client,) = body["clients"]
        assert client["camera"] == "hik1" and client["stream"] == "main"
        assert client["kind"] == "rtsp" and client["transport"] == record.transport
        assert client["peer"] == record.peer and client["peer"].startswith("127.0.0.1:")
        assert client["playing"] is True and client["frames_sent"] > 0
        main = camera["streams"][0]
        assert main["clients"] == 1
        (viewer,) = main["viewers"]
        assert set(viewer) == set(client) - {"camera", "stream"}
        # The same session, asked a moment later: who it is stays, its counters only grow
        # (frames flow between the two requests; connected_seconds is rounded to 0.1 s).
        for key in ("kind", "peer", "transport", "playing"):
            assert viewer[key] == client[key]
        for key in ("connected_seconds", "frames_sent", "bytes_sent", "dropped_frames"):
            assert viewer[key] >= client[key]
        assert ctx.client_kinds() == {("hik1", "main"): {"rtsp": 1, "live_view": 0}}
        assert (
            b'onvif_gateway_stream_clients{camera="hik1",kind="rtsp",stream="main"} 1.0'
            in metrics_text
        )
    finally:
        await reader.close()
    await wait_for(lambda: not rtsp.clients(), 10, "the session to end")
    assert ctx.client_kinds() == {}


async def test_reconnect_opens_a_new_upstream_session(admin: AdminGateway) -> None:
    hubs = admin.gateway.cameras["hik1"].hubs
    before = {name: hub.upstream_sessions for name, hub in hubs.items()}
    async with admin.session() as session:
        status, body, _ = await fetch(
            session, "POST", admin.url + "/api/v1/cameras/hik1/reconnect", admin.basic()
        )
        assert status == 202 and body == {"camera": "hik1", "reconnecting": True}
        status, body, _ = await fetch(
            session, "POST", admin.url + "/api/v1/cameras/nosuch/reconnect", admin.basic()
        )
        assert status == 404
        SPEC.validate("/api/v1/cameras/{camera}/reconnect", "post", 404, body)
    await wait_for(
        lambda: all(hub.upstream_sessions > before[name] for name, hub in hubs.items()),
        20,
        "hik1 to reconnect both streams",
    )
    other = admin.gateway.cameras["dahua1"].hubs["main"]
    assert other.upstream_sessions == 1


async def test_reload_keeps_unaffected_streams(admin: AdminGateway) -> None:
    gw = admin.gateway
    hik_hub = gw.cameras["hik1"].hubs["main"]
    reader = RtspReader(stream_url(gw, "hik1", "main", admin.vms_password))
    await reader.start()
    try:
        await reader.wait_frames(10, timeout=15, media="video")
        # Drop dahua1 from the file; hik1 is untouched.
        text = admin.config_path.read_text()
        blocks = text.split("\n[[camera]]\n")
        kept = [b for b in blocks[1:] if 'name = "dahua1"' not in b]
        admin.config_path.write_text("\n[[camera]]\n".join([blocks[0], *kept]))
        video = reader.tracks[0]
        packets_before = video.packets
        async with admin.session() as session:
            status, body, _ = await fetch(
                session, "POST", admin.url + "/api/v1/reload", admin.basic()
            )
        assert status == 200, body
        SPEC.validate("/api/v1/reload", "post", 200, body)
        assert body["changes"]["removed"] == ["dahua1"]
        assert body["changes"]["unchanged"] == ["hik1"]
        assert gw.cameras["hik1"].hubs["main"] is hik_hub
        frames = video.frames
        await reader.wait_frames(frames + 25, timeout=15, media="video")
        assert video.packets > packets_before
        assert video.lost == 0 and video.ssrc_changes == 0 and video.malformed == 0
        async with admin.session() as session:
            status, body, _ = await fetch(
                session, "GET", admin.url + "/api/v1/cameras", admin.basic()
            )
        assert [c["name"] for c in body["cameras"]] == ["hik1"]

        admin.config_path.write_text(text.replace("[vms]", "[vms]\nbogus_key = 1"))
        async with admin.session() as session:
            status, body, _ = await fetch(
                session, "POST", admin.url + "/api/v1/reload", admin.basic()
            )
        assert status == 422
        SPEC.validate("/api/v1/reload", "post", 422, body)
        assert any(p["key"] == "vms.bogus_key" for p in body["problems"])
        assert "hik1" in gw.cameras and "dahua1" not in gw.cameras
    finally:
        await reader.close()


async def test_policy_actions_and_stored_results(admin: AdminGateway) -> None:
    async with admin.session() as session:

        async def call(method: str, path: str) -> Any:
            status, body, _ = await fetch(session, method, admin.url + path, admin.basic())
            assert status == 200, f"{method} {path}: {status} {body!r}"[:400]
            SPEC.validate(path, method.lower(), 200, body)
            return body

        run = await call("POST", "/api/v1/inventory")
        assert {c["name"] for c in run["cameras"]} == {"hik1", "dahua1"}
        stored = await call("GET", "/api/v1/inventory")
        for entry in stored["cameras"]:
            assert entry["inventory"] is not None and entry["inventory"]["error"] is None
            assert entry["inventory"]["identity"]["model"]
        report = await call("POST", "/api/v1/audit")
        assert report["schema"] == "onvif-gateway/audit"
        findings = await call("GET", "/api/v1/findings")
        statuses = {c["camera"]: c["status"] for c in findings["cameras"]}
        assert set(statuses.values()) <= {"compliant", "non-compliant"}
        open_total = sum(
            1 for c in findings["cameras"] for f in c["findings"] if f["status"] == "open"
        )
        assert sum(findings["open_by_severity"].values()) == open_total
        enforce = await call("POST", "/api/v1/enforce")
        assert enforce["schema"] == "onvif-gateway/enforce"
        log = await call("GET", "/api/v1/audit-log")
        assert all(e["actor"] == "admin:admin" for e in log["entries"])
        changed = sum(1 for c in enforce["cameras"] for _ in c.get("changes", []))
        assert len(log["entries"]) == changed
        status, body, _ = await fetch(
            session, "GET", admin.url + "/api/v1/audit-log?limit=0", admin.basic()
        )
        assert status == 400
        SPEC.validate("/api/v1/audit-log", "get", 400, body)


async def test_snapshots_on_stable_urls(admin: AdminGateway) -> None:
    async with admin.session() as session:
        for path, width in (
            ("/snapshot/hik1/main.jpg", 320),
            ("/snapshot/dahua1.jpg", 320),
            ("/snapshot/hik1/sub.jpg?width=160", 160),
            ("/snapshot/dahua1/main.jpg?width=160", 160),
        ):
            status, body, response = await fetch(session, "GET", admin.url + path, admin.basic())
            assert status == 200 and response.content_type == "image/jpeg", path
            with av.open(io.BytesIO(body)) as container:
                picture = next(container.decode(video=0))
            assert picture.width == width, path
        status, body, _ = await fetch(
            session, "GET", admin.url + "/snapshot/hik1/main.jpg?width=333", admin.basic()
        )
        assert status == 400
        status, body, _ = await fetch(
            session, "GET", admin.url + "/snapshot/nosuch/main.jpg", admin.basic()
        )
        assert status == 404 and "nosuch" in body["error"]


async def test_live_view_websocket_is_playable_fmp4(admin: AdminGateway) -> None:
    url = admin.url + "/api/v1/live/hik1/main"
    data = bytearray()
    messages: list[dict[str, Any]] = []
    async with admin.session() as session:
        async with session.get(url) as response:
            assert response.status == 401
        async with session.ws_connect(url, headers=admin.basic()) as ws:
            segments = 0
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    messages.append(message.json())
                elif message.type == aiohttp.WSMsgType.BINARY:
                    data += message.data
                    segments += 1
                    if segments >= 40:
                        break
            viewers = admin.gateway.cameras["hik1"].hubs["main"].subscribers
            assert any(isinstance(v, LiveViewer) for v in viewers)
        await wait_for(
            lambda: (
                not any(
                    isinstance(v, LiveViewer)
                    for v in admin.gateway.cameras["hik1"].hubs["main"].subscribers
                )
            ),
            10,
            "the viewer to unsubscribe",
        )
    assert messages[0]["type"] == "init" and messages[0]["mime"].startswith("video/mp4")
    assert (messages[0]["width"], messages[0]["height"]) == (320, 240)
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(bytes(data))) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) >= 35
    assert (pictures[0].width, pictures[0].height) == (320, 240)
    times = [p.time for p in pictures]
    assert times == sorted(times) and 1.0 < times[-1] - times[0] < 2.5


async def test_cross_origin_websocket_is_refused(admin: AdminGateway) -> None:
    async with admin.session() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(
                admin.url + "/api/v1/live/hik1/main",
                headers={**admin.basic(), "Origin": "http://evil.example"},
            )
        assert info.value.status == 403


async def test_slow_viewer_skips_to_the_next_keyframe() -> None:
    """The viewer's queue is bounded: over budget it drops frames until the next keyframe,
    and a viewer still over budget after the stall timeout is closed."""
    hub = StreamHub("cam/main")
    hub.upstream_opened([CodecParams("H264", "video", 90000, width=320, height=240)])
    viewer = LiveViewer(
        hub, None, peer="x", camera="cam", stream="main", budget=10_000, stall_timeout=5.0
    )  # type: ignore[arg-type]
    hub.subscribe(viewer)
    idr = b"\x00\x00\x00\x01\x65" + b"\x11" * 2000
    delta = b"\x00\x00\x00\x01\x41" + b"\x22" * 2000
    ts = 0

    def push(keyframe: bool, at: float) -> None:
        nonlocal ts
        ts += 3600
        hub.push(0, ts, keyframe, idr if keyframe else delta, at)

    push(False, 0.0)  # before the first keyframe: nothing to start from
    assert viewer.queued_frames == 0
    push(True, 1.0)
    for i in range(9):  # about 2 kB per frame: four fit the 10 kB budget
        push(False, 1.04 + i * 0.04)
    assert viewer.queued_frames == 4 and viewer.dropped == 1
    assert hub.stats.dropped_frames == 1
    while viewer.take() is not None:  # the sender catches up
        pass
    push(False, 1.5)
    assert viewer.queued_frames == 0  # still waiting for a keyframe
    push(True, 1.6)
    assert viewer.queued_frames == 1 and viewer.take() is not None
    for i in range(6):
        push(False, 2.0 + i * 0.04)
    assert viewer.dropped == 2 and viewer.closed_reason is None
    push(True, 2.5)  # over budget again, but within the stall timeout
    assert viewer.dropped == 3 and viewer.closed_reason is None
    push(True, 9.0)  # still over budget 7 s after the first drop
    assert viewer.closed_reason is not None and "stalled" in viewer.closed_reason
    assert hub.stats.slow_disconnects == 1
