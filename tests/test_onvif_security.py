"""WS-UsernameToken replay protection in memory, time injected: the one repeat libonvif needs
(same address, within a second, a few times, read-only operations) and every replay that
stays refused."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.onvif.security import (
    AuthError,
    ReplayCache,
    UsernameToken,
    is_read_only,
    verify_username_token,
)

USER, PASSWORD = "vms", "s3cret-vms"
CREATED = "2026-12-04T12:00:00.123Z"
NOW = 1_796_385_600.2  # 2026-12-04T12:00:00.2Z
NONCE = b"libonvif-rand-01"


def token(nonce: bytes = NONCE, created: str = CREATED) -> UsernameToken:
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + PASSWORD.encode()).digest())
    return UsernameToken(
        username=USER, password=digest.decode(), digest=True, nonce=nonce, created=created
    )


def verify(
    cache: ReplayCache,
    *,
    now: float = NOW,
    source: str | None = "10.0.0.2",
    op: str = "GetProfiles",
) -> None:
    verify_username_token(
        token(),
        username=USER,
        password=PASSWORD,
        now=now,
        window=300.0,
        replay=cache,
        source=source,
        operation=op,
    )


def test_libonvif_repeats_from_one_address_pass_a_few_times_within_a_second() -> None:
    cache = ReplayCache(300.0)
    verify(cache, op="GetCapabilities")
    for i in range(ReplayCache.MAX_REPEATS):
        verify(cache, now=NOW + 0.001 * (i + 1), op="GetProfiles")
    with pytest.raises(AuthError, match="replayed"):
        verify(cache, now=NOW + 0.01, op="GetStreamUri")


@pytest.mark.parametrize(
    ("now", "source", "op"),
    [
        (NOW + 0.001, "10.0.0.3", "GetProfiles"),  # another address
        (NOW + 1.5, "10.0.0.2", "GetProfiles"),  # later than the repeat window
        (NOW + 0.001, "10.0.0.2", "SystemReboot"),  # changes state
        (NOW + 0.001, "10.0.0.2", "SetHostname"),
        (NOW + 0.001, None, "GetProfiles"),  # address unknown
    ],
)
def test_every_other_repeat_is_a_replay(now: float, source: str | None, op: str) -> None:
    cache = ReplayCache(300.0)
    verify(cache)
    with pytest.raises(AuthError, match="replayed"):
        verify(cache, now=now, source=source, op=op)


def test_a_refused_replay_does_not_open_the_window_for_others() -> None:
    cache = ReplayCache(300.0)
    verify(cache, source="10.0.0.2")
    with pytest.raises(AuthError):
        verify(cache, now=NOW + 0.001, source="10.0.0.9")
    # The first address keeps its repeats; the stranger is still refused.
    verify(cache, now=NOW + 0.002, source="10.0.0.2")
    with pytest.raises(AuthError):
        verify(cache, now=NOW + 0.003, source="10.0.0.9")


def test_a_state_changing_operation_is_never_repeated() -> None:
    cache = ReplayCache(300.0)
    verify(cache, op="SetSystemDateAndTime")
    with pytest.raises(AuthError):
        verify(cache, now=NOW + 0.001, op="SetSystemDateAndTime")


def test_wrong_password_is_refused_before_the_cache_sees_it() -> None:
    cache = ReplayCache(300.0)
    bad = UsernameToken(USER, "AAAA", True, NONCE, CREATED)
    with pytest.raises(AuthError, match="wrong password"):
        verify_username_token(
            bad, username=USER, password=PASSWORD, now=NOW, window=300.0, replay=cache
        )
    assert len(cache) == 0


def test_only_get_operations_are_read_only() -> None:
    assert is_read_only("GetStreamUri") and is_read_only("GetSnapshotUri")
    for op in ("SystemReboot", "SetHostname", "CreateUsers", "Subscribe", "RelativeMove", ""):
        assert not is_read_only(op)
