"""The loop watch logs a blocked event loop, and tells a blocking call from computation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from core import looplag


async def test_a_blocking_call_on_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="core.looplag")
    watcher = asyncio.create_task(looplag.watch(threshold=0.2, interval=0.05))
    try:
        await asyncio.sleep(0.1)
        assert not [r for r in caplog.records if r.name == "core.looplag"]
        # The fault: a blocking call on the loop (what a flush behind writeback does).
        time.sleep(0.6)
        for _ in range(100):
            if caplog.records:
                break
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    [record] = [r for r in caplog.records if r.name == "core.looplag"]
    assert isinstance(record.args, tuple)
    late, on_cpu, _waiting = (float(x) for x in record.args)  # type: ignore[arg-type]  # floats
    assert late >= 0.5
    # Sleeping used no CPU: the line says it was not a callback computing.
    assert on_cpu < late / 2
