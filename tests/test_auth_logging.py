"""Authentication failures: a stale-nonce re-challenge followed by success is no failure;
refused credentials are logged once per source address per interval and counted for
/metrics."""

from __future__ import annotations

import logging
import time

import pytest

from gateway.digest import DigestClient
from gateway.log import RateLimiter
from gateway.runtime import Gateway
from tests.test_rtsp_server import RawClient


async def test_stale_nonce_then_success_is_no_failure_but_a_wrong_password_is(
    gateway: Gateway, vms_password: str, caplog: pytest.LogCaptureFixture
) -> None:
    rtsp = gateway.rtsp
    assert rtsp is not None and rtsp.authenticator is not None
    url = f"rtsp://127.0.0.1:{rtsp.port}/hik1/main"
    client = await RawClient.connect(rtsp.port, vms_password)
    caplog.set_level(logging.DEBUG, logger="gateway.rtsp")
    try:
        # The client holds a nonce the server issued long ago (a VMS that kept its session
        # settings overnight): the answer is stale, the server challenges again.
        old = rtsp.authenticator.challenge(time.time() - 3600)
        assert client.auth is not None
        client.auth.handle_challenge(old)
        response = await client.request("DESCRIBE", url, {"Accept": "application/sdp"})
        assert response.status == 401
        challenges = response.headers.get_all("WWW-Authenticate")
        assert "stale=TRUE" in challenges[0]
        # The client answers the fresh nonce with the same credentials, as clients do.
        client.auth.handle_challenge(challenges)
        response = await client.request("DESCRIBE", url, {"Accept": "application/sdp"})
        assert response.status == 200
        assert rtsp.refusals.total("rtsp", "auth_failure") == 0
        assert not [r for r in caplog.records if r.getMessage() == "refused"]
        assert any("nonce stale" in r.getMessage() for r in caplog.records)
    finally:
        client.close()

    wrong = await RawClient.connect(rtsp.port, "not-the-password")
    try:
        response = await wrong.request("DESCRIBE", url)
        assert response.status == 401
        assert rtsp.refusals.total("rtsp", "auth_failure") == 1
        failures = [r for r in caplog.records if r.getMessage() == "refused"]
        assert len(failures) == 1
        assert failures[0].peer == "127.0.0.1"  # type: ignore[attr-defined]
        assert failures[0].reason == "auth_failure"  # type: ignore[attr-defined]
        assert vms_password not in caplog.text and "not-the-password" not in caplog.text
    finally:
        wrong.close()


def test_repeated_failures_are_logged_once_per_source() -> None:
    limiter = RateLimiter()

    def record(source: str) -> logging.LogRecord:
        entry = logging.LogRecord(
            "gateway.rtsp", logging.WARNING, __file__, 1, "RTSP authentication failed", (), None
        )
        entry.source = source
        entry.ratelimit = True
        return entry

    assert limiter.filter(record("10.0.0.7"))
    assert not limiter.filter(record("10.0.0.7"))  # the same guesser, within the interval
    assert limiter.filter(record("10.0.0.8"))  # another source is its own event


def test_digest_client_follows_a_stale_challenge() -> None:
    client = DigestClient("vms", "pw")
    client.handle_challenge('Digest realm="r", nonce="a", qop="auth"')
    first = client.authorization("DESCRIBE", "rtsp://h/x")
    client.handle_challenge('Digest realm="r", nonce="b", qop="auth", stale=TRUE')
    second = client.authorization("DESCRIBE", "rtsp://h/x")
    assert first and second and 'nonce="b"' in second
