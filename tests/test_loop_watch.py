"""The event loop watch: a blocked loop is named in the log, with where it is stuck."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from types import FrameType

import pytest

from gateway.loop_watch import LoopWatch, where


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stuck_here() -> FrameType:
    return sys._getframe()


def _watch_for(watch: LoopWatch, clock: Clock, seconds: int) -> None:
    """What the watch thread does meanwhile: one check a second."""
    for _ in range(seconds):
        clock.now += 1.0
        watch.check()


def test_a_late_heartbeat_is_reported_once_with_the_loops_place_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    frame = _stuck_here()
    watch = LoopWatch(threshold=5.0, beat=1.0, clock=clock, frames=lambda: {0: frame})
    watch.heartbeat()
    caplog.set_level(logging.INFO, logger="gateway")
    _watch_for(watch, clock, 6)  # the heartbeat is 5 s late: not yet
    assert not caplog.records
    _watch_for(watch, clock, 4)  # late by 6 s, then more: one line for this stall
    [blocked] = caplog.records
    assert blocked.getMessage().startswith("event loop blocked")
    assert blocked.seconds == 6.0  # type: ignore[attr-defined]
    innermost = blocked.at.split(" <- ")[0]  # type: ignore[attr-defined]
    assert "test_loop_watch.py:" in innermost and innermost.endswith(" _stuck_here")
    watch.heartbeat()  # the loop runs again; its heartbeat was due 9 s ago
    watch.check()
    assert [r.getMessage() for r in caplog.records][1] == "event loop running again"
    assert caplog.records[1].blocked_seconds == 9.0  # type: ignore[attr-defined]
    assert watch.stalls == 1 and watch.longest == 9.0


def test_a_paused_process_is_not_a_blocked_loop(caplog: pytest.LogCaptureFixture) -> None:
    # SIGSTOP, a suspended VM: the watch's thread did not run either.
    clock = Clock()
    ended: list[float] = []
    watch = LoopWatch(
        threshold=5.0, beat=1.0, give_up=60.0, clock=clock, on_give_up=lambda: ended.append(clock())
    )
    watch.heartbeat()
    _watch_for(watch, clock, 2)
    clock.now += 120.0
    watch.check()
    _watch_for(watch, clock, 3)
    assert not caplog.records and not ended
    # ... but a loop still blocked after the pause is reported, counted from the pause.
    _watch_for(watch, clock, 4)
    assert [r.getMessage() for r in caplog.records] == [
        "event loop blocked: every stream and request of this process waits"
    ]


def test_a_loop_blocked_for_a_minute_ends_the_process_to_be_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    ended: list[float] = []
    watch = LoopWatch(
        threshold=5.0, beat=1.0, give_up=60.0, clock=clock, on_give_up=lambda: ended.append(clock())
    )
    watch.heartbeat()
    _watch_for(watch, clock, 61)
    assert not ended
    _watch_for(watch, clock, 10)
    assert ended == [162.0]  # once
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage().startswith("event loop blocked for too long")
    # Without on_give_up the watch only reports.
    quiet = LoopWatch(threshold=5.0, beat=1.0, clock=clock)
    quiet.heartbeat()
    _watch_for(quiet, clock, 300)
    assert quiet.stalls == 1 and not quiet.gave_up


def test_where_names_the_innermost_call_first_on_one_line() -> None:
    text = where(_stuck_here(), limit=2)
    assert "\n" not in text
    first, second = text.split(" <- ")
    assert first.endswith(" _stuck_here")
    assert second.endswith(" test_where_names_the_innermost_call_first_on_one_line")
    assert where(None) == "unknown"


class _Reported(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.blocked = threading.Event()
        self.running = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.getMessage().startswith("event loop blocked"):
            self.blocked.set()
        elif record.getMessage() == "event loop running again":
            self.running.set()


def _block_the_loop(until: threading.Event) -> None:
    # What a blocking call on the loop looks like to the watch: the thread is elsewhere.
    assert until.wait(30), "the watch never reported the blocked loop"


async def test_a_real_blocked_loop_is_reported_while_blocked_and_when_it_runs_again() -> None:
    reported = _Reported()
    logger = logging.getLogger("gateway")
    logger.addHandler(reported)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    watch = LoopWatch(threshold=0.3, beat=0.1)
    watch.start()
    try:
        await asyncio.sleep(0)
        _block_the_loop(reported.blocked)
        assert await asyncio.to_thread(reported.running.wait, 30)
    finally:
        watch.stop()
        logger.removeHandler(reported)
        logger.setLevel(old_level)
    blocked = reported.records[0]
    assert "_block_the_loop" in blocked.at  # type: ignore[attr-defined]
    assert "test_a_real_blocked_loop" in blocked.at  # type: ignore[attr-defined]
    assert watch.stalls == 1 and watch.longest >= 0.3
