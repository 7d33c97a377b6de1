"""The heartbeat loop's step: the tracker's failures set the link's state; anything else is a
bug of ours, logged with its traceback, and the next beat still goes out."""

from __future__ import annotations

import logging

import pytest

from agent.trackerlink import TrackerLink
from core.tasks import Supervisor
from core.wire import AgentInfo
from tracker.clock import SystemClock
from tracker.config import TrackerConfig
from tracker.embedded import local_client
from tracker.service import Tracker
from tracker.store.memory import MemoryStore


async def test_an_unexpected_error_is_logged_and_the_next_beat_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Beats every 0.2 s: the link sleeps a third of the agent TTL after each.
    tracker = Tracker(MemoryStore(), SystemClock(), TrackerConfig(agent_ttl=0.6))
    calls = 0

    def describe() -> AgentInfo:
        nonlocal calls
        calls += 1
        if calls == 1:
            # A fault no real part produces on demand: describing ourselves fails once.
            raise RuntimeError("data dir vanished")
        return AgentInfo("a1", "127.0.0.1", 1)

    tasks = Supervisor("test")
    link = TrackerLink(local_client(tracker, "a1"), describe, list, tasks)
    with caplog.at_level(logging.ERROR, logger="agent.trackerlink"):
        await link.run_once()
    assert "data dir vanished" in caplog.text and caplog.records[0].exc_info is not None
    assert link.state.state == "starting"
    await link.run_once()
    assert link.state.state == "ok"
    assert await tracker.store.get_agent("a1") is not None
    await tasks.close()
