"""Waiting on tasks without losing a cancellation: ``wait_for`` and ``cancel_and_wait``.

In Python 3.11 (Debian 12's), ``asyncio.wait_for`` returns the awaited result when the
task is cancelled at the moment that result arrives, and the cancellation is lost. A task
in a loop (an ingest reading its camera, a motion session, an event stream) then carries on
after being stopped, and whatever waits for it to end (a reload, the gateway's shutdown,
asyncio closing its loop) waits for ever. ``asyncio.timeout`` loses no cancellation (Python
3.12 rebuilt ``wait_for`` on it); this is that, under the familiar name.

The same goes for the usual way of stopping a task, ``task.cancel()`` and then ``await task``
under ``suppress(CancelledError)``: if the caller is cancelled meanwhile, the suppress
swallows the caller's own cancellation. ``cancel_and_wait`` waits with ``asyncio.wait``,
which never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: no limit); after that it
    is cancelled and TimeoutError raised. A cancellation of the caller always propagates."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended. Their errors are not raised (nor
    reported as never retrieved); a cancellation of the caller propagates."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with while stopping is moot
