"""No cancellation is lost at the moment what a task waits for completes (Python 3.11's
asyncio.wait_for returns the result then): a stopped ingest or motion session must end."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cancellation import cancel_and_wait, wait_for
from gateway.rtsp.client import RtspReader


@pytest.mark.parametrize("ticks", [0, 1, 2])
async def test_a_cancel_as_the_awaited_future_completes_is_not_lost(ticks: int) -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(wait_for(future, 30))
    await asyncio.sleep(0)
    future.set_result(1)
    for _ in range(ticks):
        await asyncio.sleep(0)
    if task.cancel():  # (False: the task had already ended with its result)
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_result_or_a_timeout() -> None:
    assert await wait_for(asyncio.sleep(0, "done"), 5) == "done"
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_for(never, 0.01)
    assert never.cancelled()


@pytest.mark.parametrize("ticks", [0, 1, 2])
async def test_a_reader_playing_on_is_stopped_even_as_its_session_ends(ticks: int) -> None:
    # The ingest's loop waits in run_for; a session that fails as the gateway stops the
    # ingest used to swallow the cancellation, and the ingest reconnected for ever.
    reader = RtspReader("rtsp://127.0.0.1:9/none")
    task = asyncio.ensure_future(reader.run_for(30))
    await asyncio.sleep(0)
    reader._failed.set_result(None)
    for _ in range(ticks):
        await asyncio.sleep(0)
    if task.cancel():  # (False: the task had already ended with its result)
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_in_a_task_being_cancelled_an_expiry_is_still_a_timeout() -> None:
    # The clean-up after a stop (a TEARDOWN bounded to 2 s) must go on after the bound.
    steps: list[str] = []

    async def stopping() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                await wait_for(never, 0.01)
            except TimeoutError:
                steps.append("timed out")
            steps.append("rest of the clean-up")

    task = asyncio.ensure_future(stopping())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["timed out", "rest of the clean-up"]


async def test_the_callers_cancel_cancels_what_it_waited_for() -> None:
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(wait_for(inner, 30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inner.cancelled()


async def test_cancel_and_wait_ends_the_tasks_and_keeps_the_callers_cancellation() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await release.wait()  # a clean-up that takes a while

    async def failing() -> None:
        raise OSError("gone")

    stopping = asyncio.ensure_future(slow_to_stop())
    failed = asyncio.ensure_future(failing())
    await asyncio.sleep(0)
    closer = asyncio.ensure_future(cancel_and_wait(stopping, failed))
    await asyncio.sleep(0)
    closer.cancel()  # the caller is cancelled while the task is still stopping
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    await cancel_and_wait(stopping, failed)  # errors are not raised
    assert stopping.cancelled() and isinstance(failed.exception(), OSError)
