"""Digest/Basic auth: RFC vectors, failure modes, and real FFmpeg/GStreamer clients."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time

import pytest

from gateway.digest import (
    DigestAuthenticator,
    DigestClient,
    digest_response,
    parse_auth_params,
)
from gateway.rtsp.message import RtspConnectionParser, RtspProtocolError, RtspRequest, RtspResponse

SECRET = b"0123456789abcdef0123456789abcdef"
URI = "rtsp://127.0.0.1:8554/cam1"


def make_auth(**kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator("gateway", {"vms": "s3cret"}, SECRET, **kwargs)  # type: ignore[arg-type]


def answer(
    auth: DigestAuthenticator,
    now: float,
    username: str = "vms",
    password: str = "s3cret",
    method: str = "DESCRIBE",
    uri: str = URI,
) -> tuple[DigestClient, str]:
    client = DigestClient(username, password)
    client.handle_challenge(auth.challenge(now))
    header = client.authorization(method, uri)
    assert header is not None
    return client, header


def test_rfc2617_example_vector() -> None:
    # RFC 2617 section 3.5.
    assert (
        digest_response(
            "MD5",
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "auth",
            "00000001",
            "0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_rfc7616_sha256_vector() -> None:
    # RFC 7616 section 3.9.1.
    assert (
        digest_response(
            "SHA-256",
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "auth",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_challenge_format() -> None:
    (digest,) = make_auth().challenge(1000.0)
    assert digest.startswith('Digest realm="gateway", nonce="')
    assert 'algorithm=MD5, qop="auth"' in digest
    params = parse_auth_params(digest.split(" ", 1)[1])
    assert params["realm"] == "gateway"
    values = make_auth(allow_basic=True, offer_qop=False).challenge(1000.0, stale=True)
    assert len(values) == 2
    assert "qop" not in values[0]
    assert values[0].endswith("stale=TRUE")
    assert values[1] == 'Basic realm="gateway"'


def test_digest_with_qop_and_nonce_count() -> None:
    auth = make_auth()
    client, header = answer(auth, 1000.0)
    assert "qop=auth" in header and "nc=00000001" in header
    assert auth.verify("DESCRIBE", header, 1001.0, uri=URI) == "vms"
    # The same nc again is a replay.
    result = auth.authenticate("DESCRIBE", header, 1002.0, uri=URI)
    assert result.username is None
    assert "replayed" in result.reason
    # The next request of the same client counts up and passes.
    setup = client.authorization("SETUP", URI + "/trackID=0")
    assert setup is not None and "nc=00000002" in setup
    assert auth.verify("SETUP", setup, 1003.0, uri=URI + "/trackID=0") == "vms"


def test_digest_without_qop_as_gstreamer_sends_it() -> None:
    auth = make_auth(offer_qop=False)
    _, header = answer(auth, 50.0)
    assert "qop" not in header and "nc=" not in header
    assert auth.verify("DESCRIBE", header, 51.0, uri=URI) == "vms"
    # Without qop there is no counter, so a repeat inside the lifetime is accepted.
    assert auth.verify("DESCRIBE", header, 52.0, uri=URI) == "vms"

    # A client may also ignore an offered qop (RFC 2069 style answer).
    auth = make_auth()
    nonce = parse_auth_params(auth.challenge(50.0)[0].split(" ", 1)[1])["nonce"]
    response = digest_response("MD5", "vms", "gateway", "s3cret", "DESCRIBE", URI, nonce)
    header = (
        f'Digest username="vms", realm="gateway", nonce="{nonce}", uri="{URI}", '
        f'response="{response}"'
    )
    assert auth.verify("DESCRIBE", header, 51.0, uri=URI) == "vms"


def test_wrong_password_unknown_user_wrong_method() -> None:
    auth = make_auth()
    _, header = answer(auth, 10.0, password="wrong")
    result = auth.authenticate("DESCRIBE", header, 11.0, uri=URI)
    assert result.username is None and not result.stale
    _, header = answer(auth, 10.0, username="nobody")
    assert auth.verify("DESCRIBE", header, 11.0, uri=URI) is None
    _, header = answer(auth, 10.0)
    # Response computed for DESCRIBE does not authorize a PLAY.
    assert auth.verify("PLAY", header, 11.0, uri=URI) is None


def test_expired_nonce_is_stale_only_with_the_right_password() -> None:
    auth = make_auth(nonce_lifetime=300)
    _, header = answer(auth, 1000.0)
    result = auth.authenticate("DESCRIBE", header, 1301.0, uri=URI)
    assert result.username is None and result.stale
    assert result.reason == "nonce expired"
    _, wrong = answer(auth, 1000.0, password="nope")
    assert not auth.authenticate("DESCRIBE", wrong, 1301.0, uri=URI).stale
    # A nonce from another secret (e.g. before a restart) is stale too.
    other = DigestAuthenticator("gateway", {"vms": "s3cret"}, b"another secret of 32 bytes......")
    _, foreign = answer(other, 1000.0)
    assert auth.authenticate("DESCRIBE", foreign, 1001.0, uri=URI).stale


def test_uri_comparison_is_lenient_but_response_uses_the_sent_uri() -> None:
    auth = make_auth()
    client, header = answer(auth, 0.0, uri="/cam1")
    # Path in the header, absolute URI in the request line: same resource.
    assert auth.verify("DESCRIBE", header, 1.0, uri="rtsp://10.1.1.1:554/cam1/") == "vms"
    other = client.authorization("DESCRIBE", "/cam2")
    assert auth.verify("DESCRIBE", other, 1.0, uri=URI) is None


def test_nonce_tracking_is_bounded() -> None:
    auth = make_auth(max_tracked_nonces=3)
    headers = [answer(auth, float(t))[1] for t in range(5)]
    for t, header in enumerate(headers[:4]):
        assert auth.verify("DESCRIBE", header, 10.0 + t, uri=URI) == "vms"
    assert len(auth._nonce_counts) == 3
    # headers[0] was evicted: its replay must not pass.
    result = auth.authenticate("DESCRIBE", headers[0], 20.0, uri=URI)
    assert result.username is None and result.stale


def test_basic_allowed_and_forbidden() -> None:
    token = base64.b64encode(b"vms:s3cret").decode()
    assert make_auth().verify("DESCRIBE", f"Basic {token}", 0.0) is None
    auth = make_auth(allow_basic=True)
    assert auth.verify("DESCRIBE", f"Basic {token}", 0.0) == "vms"
    bad = base64.b64encode(b"vms:nope").decode()
    assert auth.verify("DESCRIBE", f"Basic {bad}", 0.0) is None
    assert auth.verify("DESCRIBE", "Basic !!!", 0.0) is None

    client = DigestClient("vms", "s3cret")
    client.handle_challenge(['Basic realm="x"'])
    assert client.authorization("OPTIONS", URI) == f"Basic {token}"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Digest",
        "Digest username=",
        'Digest username="vms", realm="gateway"',
        'Digest username="vms, realm=gateway, nonce=1, uri=/, response=0',
        'Digest username="vms", username="x", realm="gateway"',
        "Bearer abc",
        "Digest " + "a" * 5000,
        'Digest username="vms", realm="gateway", nonce="zz", uri="/", response="0", qop=auth',
        'Digest username="vms", realm="gateway", nonce="zz", uri="/", response="0", algorithm=X',
    ],
)
def test_malformed_headers_fail_quietly(header: str | None) -> None:
    assert make_auth().authenticate("DESCRIBE", header, 0.0, uri=URI).username is None


def test_client_prefers_strongest_challenge_and_rejects_unknown() -> None:
    client = DigestClient("u", "p")
    client.handle_challenge(
        [
            'Basic realm="r"',
            'Digest realm="r", nonce="n1", algorithm=MD5',
            'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth,auth-int", opaque="o"',
        ]
    )
    header = client.authorization("DESCRIBE", "rtsp://h/x")
    assert header is not None
    params = parse_auth_params(header.split(" ", 1)[1])
    assert params["nonce"] == "n2" and params["algorithm"] == "SHA-256"
    assert params["qop"] == "auth" and params["opaque"] == "o"
    expected = digest_response(
        "SHA-256", "u", "r", "p", "DESCRIBE", "rtsp://h/x", "n2", "auth", "00000001",
        params["cnonce"],
    )  # fmt: skip
    assert params["response"] == expected
    with pytest.raises(ValueError, match="no usable challenge: unsupported scheme 'negotiate'"):
        DigestClient("u", "p").handle_challenge(["Negotiate abc"])
    with pytest.raises(ValueError, match="unsupported digest algorithm SHA-512"):
        DigestClient("u", "p").handle_challenge(['Digest realm="r", nonce="n", algorithm=SHA-512'])


# --------------------------------------------------------------------------- interop


class AuthOnlyServer:
    """Just enough RTSP for a client to get through auth: OPTIONS, DESCRIBE -> 401 or 404."""

    def __init__(self, auth: DigestAuthenticator) -> None:
        self.auth = auth
        self.verified: list[tuple[str, str]] = []
        self.challenged = 0
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtspConnectionParser("server")
        try:
            while data := await reader.read(4096):
                parser.feed(data)
                for event in parser.events():
                    if isinstance(event, RtspRequest):
                        writer.write(bytes(self.respond(event)))
                await writer.drain()
        except (RtspProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    def respond(self, req: RtspRequest) -> RtspResponse:
        if req.method == "OPTIONS":
            return RtspResponse.for_request(
                req, 200, {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"}
            )
        now = time.monotonic()
        result = self.auth.authenticate(req.method, req.headers.get("Authorization"), now, req.uri)
        if result.username is None:
            self.challenged += 1
            challenge = [("WWW-Authenticate", v) for v in self.auth.challenge(now, result.stale)]
            return RtspResponse.for_request(req, 401, challenge)
        self.verified.append((req.method, result.username))
        self.done.set()
        return RtspResponse.for_request(req, 404)


async def run_client_against(
    auth: DigestAuthenticator, argv: list[str], expect_verified: bool = True
) -> tuple[AuthOnlyServer, int, bytes]:
    """Run a real client against AuthOnlyServer; returns (server, exit code, stderr)."""
    server = AuthOnlyServer(auth)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    argv = [a.replace("PORT", str(port)) for a in argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        if expect_verified:
            await asyncio.wait_for(server.done.wait(), 20)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()
        await listener.wait_closed()
    return server, proc.returncode or 0, stderr


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")
@pytest.mark.parametrize("offer_qop", [True, False])
async def test_ffmpeg_digest_client(offer_qop: bool) -> None:
    auth = DigestAuthenticator("gateway", {"vms": "p@ss word"}, SECRET, offer_qop=offer_qop)
    server, _, _ = await run_client_against(
        auth,
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "rtsp://vms:p%40ss%20word@127.0.0.1:PORT/x"],
    )  # fmt: skip
    assert server.challenged >= 1
    assert server.verified == [("DESCRIBE", "vms")]


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="needs GStreamer")
@pytest.mark.parametrize("offer_qop", [True, False])
async def test_gstreamer_digest_client(offer_qop: bool) -> None:
    auth = DigestAuthenticator("gateway", {"vms": "s3cret"}, SECRET, offer_qop=offer_qop)
    server, _, _ = await run_client_against(
        auth,
        [
            "gst-launch-1.0", "-q", "rtspsrc", "location=rtsp://127.0.0.1:PORT/x",
            "user-id=vms", "user-pw=s3cret", "protocols=tcp", "retry=0", "!", "fakesink",
        ],
    )  # fmt: skip
    assert server.challenged >= 1
    assert server.verified[0] == ("DESCRIBE", "vms")


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")
async def test_ffmpeg_wrong_password_is_never_verified() -> None:
    auth = DigestAuthenticator("gateway", {"vms": "right"}, SECRET)
    server, returncode, stderr = await run_client_against(
        auth, ["ffprobe", "-v", "error", "rtsp://vms:wrong@127.0.0.1:PORT/x"], expect_verified=False
    )
    assert returncode != 0
    assert b"401" in stderr
    assert server.verified == []
    assert server.challenged >= 1


def test_sha256_answers_accepted_only_when_allowed():
    now = 1000.0
    for allowed, ok in ((("MD5",), False), (("MD5", "SHA-256"), True)):
        auth = make_auth(algorithms=allowed)
        challenge = auth.challenge(now)[0].replace("algorithm=MD5", "algorithm=SHA-256")
        client = DigestClient("vms", "s3cret")
        client.handle_challenge(challenge)
        header = client.authorization("DESCRIBE", URI)
        assert (auth.verify("DESCRIBE", header, now, URI) == "vms") is ok


def test_uncounted_nonces_leave_replays_to_the_caller():
    now = 1000.0
    auth = make_auth(count_nonces=False)
    client, first = answer(auth, now)
    second = client.authorization("DESCRIBE", URI)
    assert second is not None
    one = auth.authenticate("DESCRIBE", first, now, URI)
    two = auth.authenticate("DESCRIBE", second, now, URI)
    # Out of nc order is fine; each answer names itself so a replay cache can refuse it.
    assert auth.authenticate("DESCRIBE", first, now, URI).username == "vms"
    assert one.username == two.username == "vms"
    assert one.answer != two.answer
    unqualified = make_auth(count_nonces=False, offer_qop=False)
    _, header = answer(unqualified, now)
    result = unqualified.authenticate("DESCRIBE", header, now, URI)
    assert result.username == "vms" and ":" not in result.answer
