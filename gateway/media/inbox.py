"""The hand-off of frames from an ingest thread to the event loop (:class:`FrameInbox`), and
how many bytes of a stream it may hold while the loop is behind (:func:`inbox_budget`)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

log = logging.getLogger("gateway.media")

# What a FrameInbox may hold while the loop is behind, in seconds of the stream (at its
# measured bitrate), within a floor and a ceiling; the default until a rate is measured.
INBOX_SECONDS = 4.0
INBOX_MIN_BYTES = 1024 * 1024
INBOX_MAX_BYTES = 32 * 1024 * 1024
INBOX_DEFAULT_BYTES = 8 * 1024 * 1024


def inbox_budget(bits_per_second: float) -> int:
    """The bytes a stream's FrameInbox may hold: :data:`INBOX_SECONDS` of its bitrate."""
    if bits_per_second <= 0:
        return INBOX_DEFAULT_BYTES
    wanted = int(bits_per_second / 8 * INBOX_SECONDS)
    return min(max(wanted, INBOX_MIN_BYTES), INBOX_MAX_BYTES)


class FrameInbox:
    """Thread-to-loop hand-off: one wake-up per burst, no future or coroutine per packet.

    The ingest thread appends items and schedules ``drain`` on the loop only when the
    inbox was idle; the loop drains everything queued so far in one callback. It holds at
    most ``max_items`` items and ``max_bytes`` of their payloads (the sizes ``put`` is
    given): a loop that falls behind costs a few seconds of the stream, not more.
    """

    __slots__ = (
        "_bytes_in",
        "_bytes_out",
        "_deque",
        "_handler",
        "_loop",
        "_scheduled",
        "max_bytes",
        "max_items",
        "overflows",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[[tuple[object, ...]], None],
        max_items: int = 2048,
        max_bytes: int = INBOX_DEFAULT_BYTES,
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._deque: collections.deque[tuple[tuple[object, ...], int]] = collections.deque()
        self._scheduled = False
        self.max_items = max_items
        self.max_bytes = max_bytes
        # Payload bytes ever queued (written by the ingest thread only) and ever drained
        # (by the loop only): each counter has one writer, so no lock is needed.
        self._bytes_in = 0
        self._bytes_out = 0
        self.overflows = 0

    @property
    def queued_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    def put(self, item: tuple[object, ...], size: int = 0) -> bool:
        """Called from the ingest thread; False if the loop has fallen far behind."""
        if len(self._deque) >= self.max_items or (
            size and self._bytes_in + size - self._bytes_out > self.max_bytes
        ):
            self.overflows += 1
            return False
        self._bytes_in += size
        self._deque.append((item, size))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed during shutdown
                return False
        return True

    def _drain(self) -> None:
        self._scheduled = False
        pop = self._deque.popleft
        handler = self._handler
        while self._deque:
            item, size = pop()
            self._bytes_out += size
            try:
                handler(item)
            except Exception:
                log.exception("frame handler failed")
