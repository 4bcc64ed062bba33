"""WS-UsernameToken replay protection, time injected: the one repeat libonvif needs (same
address, within a second, a few times, read-only operations) and every replay that stays
refused; in memory and in the cache the worker processes share (SQLite)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.onvif.security import (
    FUTURE_SKEW,
    AuthError,
    ReplayCache,
    SharedReplayCache,
    UsernameToken,
    is_read_only,
    verify_username_token,
)

USER, PASSWORD = "vms", "s3cret-vms"
CREATED = "2026-12-04T12:00:00.123Z"
NOW = 1_796_385_600.2  # 2026-12-04T12:00:00.2Z
NONCE = b"libonvif-rand-01"


@pytest.fixture(params=["memory", "shared"])
def new_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], ReplayCache]]:
    """Makes the replay cache under test: in memory, or shared through the state directory
    (each call a separate handle on the same file, as each worker process has)."""
    made: list[SharedReplayCache] = []

    def make() -> ReplayCache:
        if request.param == "memory":
            return ReplayCache(300.0)
        made.append(SharedReplayCache(300.0, tmp_path))
        return made[-1]

    yield make
    for cache in made:
        cache.close()


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


def test_libonvif_repeats_from_one_address_pass_a_few_times_within_a_second(
    new_cache: Callable[[], ReplayCache],
) -> None:
    cache = new_cache()
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
def test_every_other_repeat_is_a_replay(
    now: float, source: str | None, op: str, new_cache: Callable[[], ReplayCache]
) -> None:
    cache = new_cache()
    verify(cache)
    with pytest.raises(AuthError, match="replayed"):
        verify(cache, now=now, source=source, op=op)


def test_a_refused_replay_does_not_open_the_window_for_others(
    new_cache: Callable[[], ReplayCache],
) -> None:
    cache = new_cache()
    verify(cache, source="10.0.0.2")
    with pytest.raises(AuthError):
        verify(cache, now=NOW + 0.001, source="10.0.0.9")
    # The first address keeps its repeats; the stranger is still refused.
    verify(cache, now=NOW + 0.002, source="10.0.0.2")
    with pytest.raises(AuthError):
        verify(cache, now=NOW + 0.003, source="10.0.0.9")


def test_a_state_changing_operation_is_never_repeated(
    new_cache: Callable[[], ReplayCache],
) -> None:
    cache = new_cache()
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


def test_a_token_used_in_one_worker_is_refused_in_another(tmp_path: Path) -> None:
    one, other = SharedReplayCache(300.0, tmp_path), SharedReplayCache(300.0, tmp_path)
    try:
        verify(one, op="GetDeviceInformation")
        with pytest.raises(AuthError, match="replayed"):
            verify(other, now=NOW + 5, op="SystemReboot")
        # Expired entries go, so the file stays small.
        other.prune(NOW + 400)
        assert len(one) == 0
    finally:
        one.close()
        other.close()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def verify_created(cache: ReplayCache, created: float, now: float) -> None:
    verify_username_token(
        token(created=iso(created)),
        username=USER,
        password=PASSWORD,
        now=now,
        window=300.0,
        replay=cache,
        source="10.0.0.2",
        operation="SystemReboot",
    )


def test_created_in_the_future_is_refused_beyond_a_small_skew() -> None:
    cache = ReplayCache(300.0)
    with pytest.raises(AuthError, match="ahead"):
        verify_created(cache, NOW + 250, NOW)
    verify_created(cache, NOW + FUTURE_SKEW - 1, NOW)
    # Its nonce is kept as long as the token is good: a replay just before it expires fails.
    with pytest.raises(AuthError, match="replayed"):
        verify_created(cache, NOW + FUTURE_SKEW - 1, NOW + 300 + FUTURE_SKEW - 2)
