"""The Supervisor every daemon's background tasks run under."""

from __future__ import annotations

import asyncio
import logging

import pytest

from core.tasks import Supervisor, SupervisorClosed


async def test_a_crash_is_logged_once_and_the_other_tasks_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor("agent")
    release = asyncio.Event()

    async def crash() -> None:
        raise ValueError("boom")

    async def wait() -> None:
        await release.wait()

    waiter = sup.spawn(wait(), name="waiter")
    crashed = sup.spawn(crash(), name="crasher")
    with caplog.at_level(logging.ERROR, logger="core.tasks"):
        await asyncio.wait([crashed])
    assert [r.getMessage() for r in caplog.records] == ["agent: task crasher crashed"]
    assert caplog.records[0].exc_info is not None
    assert not waiter.done() and len(sup) == 1
    release.set()
    await waiter
    assert len(sup) == 0
    await sup.close()


async def test_close_cancels_and_waits_also_for_tasks_started_while_unwinding() -> None:
    sup = Supervisor("agent")
    started = asyncio.Event()
    late: list[asyncio.Task[None]] = []

    async def announce() -> None:
        await asyncio.Event().wait()

    async def download() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            # Cleanup that starts more work, as a download's announce does.
            late.append(sup.spawn(announce(), name="announce"))

    first = sup.spawn(download(), name="download")
    await started.wait()
    await sup.close()
    assert first.cancelled() and late[0].cancelled() and len(sup) == 0
    with pytest.raises(SupervisorClosed):
        sup.spawn(announce(), name="late")


async def test_close_names_a_task_that_will_not_end_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor("tracker")
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await stop.wait()
            except asyncio.CancelledError:
                continue  # the bug this guards against: swallowing cancellation

    task = sup.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="core.tasks"):
        await sup.close(within=0.05)
    assert "stubborn" in caplog.text and not task.done()
    stop.set()
    await task
