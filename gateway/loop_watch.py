"""A watch on the event loop: one line in the log when something blocks it.

Every stream, VMS connection and ONVIF request of a process shares one event loop, so a call
that blocks it (a slow disk, a database lock held elsewhere, a bug) freezes them all. The
watch is a thread that expects a heartbeat the loop schedules once a second. When the
heartbeat is late by more than ``threshold`` seconds it logs a warning naming where the
loop's thread is at that moment, innermost call first, then one line when the loop runs
again. That is what an operator (or a developer reading a CI log) needs to find the cause;
the watch itself costs one timer a second.

A loop blocked for ``give_up`` seconds (a minute) will not come back by itself, and every
stream of the process is dead meanwhile: the watch then calls ``on_give_up``, which for
``onvif-gateway run`` ends the process with a runtime failure, so that whatever runs it (the
worker supervisor, systemd's Restart=on-failure) starts it again. A pause of the whole
process (SIGSTOP, a suspended VM) is not a blocked loop: the watch's own thread was paused
too, and it starts counting afresh.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("gateway")

BEAT = 1.0  # seconds between heartbeats
THRESHOLD = 5.0  # a heartbeat this late means the loop is blocked
GIVE_UP = 60.0  # a loop blocked this long is given up on
FRAMES_SHOWN = 8


def where(frame: FrameType | None, limit: int = FRAMES_SHOWN) -> str:
    """``frame`` and its callers as ``file:line function``, innermost first, on one line.
    Paths are shortened to the part from the package (or library) name on."""
    parts: list[str] = []
    while frame is not None and len(parts) < limit:
        code = frame.f_code
        parts.append(f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " <- ".join(parts) or "unknown"


def _short(path: str) -> str:
    for marker in ("/gateway/", "/site-packages/", "/lib/python"):
        at = path.rfind(marker)
        if at >= 0:
            return path[at + 1 :]
    return path


class LoopWatch:
    """Watches the running loop from a daemon thread; ``start()`` on the loop, ``stop()``
    when done. ``clock`` and ``frames`` are injectable for tests."""

    def __init__(
        self,
        *,
        threshold: float = THRESHOLD,
        beat: float = BEAT,
        give_up: float = GIVE_UP,
        on_give_up: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        frames: Callable[[], dict[int, FrameType]] = sys._current_frames,
    ) -> None:
        """``on_give_up``: called (from the watch's thread) once the loop has been blocked
        for ``give_up`` seconds; without it the watch only reports."""
        self.threshold = threshold
        self.beat = beat
        self.give_up = give_up
        self.clock = clock
        self.frames = frames
        self.on_give_up = on_give_up
        self.gave_up = False
        self.stalls = 0  # stalls seen since start
        self.longest = 0.0  # seconds, the longest stall seen
        self._last = clock()
        self._checked: float | None = None
        self._stalled_since: float | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last = self.clock()
        self._timer = loop.call_later(self.beat, self._tick, loop)
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._thread.join(2 * self.beat)
            self._thread = None

    def heartbeat(self) -> None:
        """The loop is running (its timer calls this every ``beat``)."""
        self._last = self.clock()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.heartbeat()
        if not self._stop.is_set():
            self._timer = loop.call_later(self.beat, self._tick, loop)

    def _watch(self) -> None:
        while not self._stop.wait(self.beat):
            self.check()

    def check(self) -> None:
        """One look at the heartbeat (the watch thread calls this every ``beat``)."""
        now = self.clock()
        paused = self._checked is not None and now - self._checked > self.beat + self.threshold
        self._checked = now
        if paused:
            # This thread did not run either: the whole process was paused, not its loop.
            self._last = now
            return
        late = now - self._last - self.beat
        if self.on_give_up is not None and late > self.give_up and not self.gave_up:
            self.gave_up = True
            log.error(
                "event loop blocked for too long: giving up on this process",
                extra={
                    "seconds": round(late, 1),
                    "at": where(self.frames().get(self._loop_thread)),
                },
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.on_give_up()
            return
        if late > self.threshold:
            if self._stalled_since is None:
                self._stalled_since = self._last + self.beat
                self.stalls += 1
                log.warning(
                    "event loop blocked: every stream and request of this process waits",
                    extra={
                        "seconds": round(late, 1),
                        "at": where(self.frames().get(self._loop_thread)),
                    },
                )
        elif self._stalled_since is not None:
            blocked = self._last - self._stalled_since
            self.longest = max(self.longest, blocked)
            self._stalled_since = None
            log.warning("event loop running again", extra={"blocked_seconds": round(blocked, 1)})
