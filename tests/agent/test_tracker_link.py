"""The heartbeat loop's step: the tracker's failures set the link's state; anything else is a
bug of ours, logged with its traceback, and the next beat still goes out."""

from __future__ import annotations

import logging

import pytest

from agent.trackerlink import TrackerLink
from core.tasks import Supervisor
from core.wire import AgentInfo, Announcement
from tests.tracker.helpers import digest_of
from tracker.clock import ManualClock, SystemClock
from tracker.config import TrackerConfig
from tracker.embedded import local_client
from tracker.service import FLEET_COUNT_SECONDS, Tracker
from tracker.store.memory import MemoryStore


async def test_an_unexpected_error_is_logged_and_the_next_beat_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The link sleeps the tracker's interval after a beat, its own default after a failure:
    # both short here.
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
    link = TrackerLink(local_client(tracker, "a1"), describe, list, tasks, default_interval=0.2)
    with caplog.at_level(logging.ERROR, logger="agent.trackerlink"):
        await link.run_once()
    assert "data dir vanished" in caplog.text and caplog.records[0].exc_info is not None
    assert link.state.state == "starting"
    await link.run_once()
    assert link.state.state == "ok"
    assert await tracker.store.get_agent("a1") is not None
    await tasks.close()


async def test_the_tracker_sets_the_interval_and_leases_keep_theirs() -> None:
    # 0.5 heartbeats/s for the fleet: 40 agents are told every 80 s, which the link caps at
    # 60; an agent fetching from the upstream keeps beating every lease ttl / 3.
    clock = ManualClock()
    config = TrackerConfig(agent_ttl=30, lease_ttl=30, heartbeat_rate=0.5)
    tracker = Tracker(MemoryStore(), clock, config)
    for i in range(40):
        await tracker.heartbeat(AgentInfo(f"b{i}", "127.0.0.1", 1), f"key-{i}" * 4)
    upstream: list[Announcement] = []
    tasks = Supervisor("test")
    link = TrackerLink(
        local_client(tracker, "a1"),
        lambda: AgentInfo("a1", "127.0.0.1", 1),
        list,
        tasks,
        fetching=lambda: upstream,
    )
    clock.advance(FLEET_COUNT_SECONDS)  # the tracker counts the fleet that often
    assert await link.heartbeat() == 60.0
    rec = await tracker.store.get_agent("a1")
    assert rec is not None and rec.expires == clock.now() + 3 * 60.0
    upstream.append(Announcement(digest_of("x"), "fetching", 1, 10))
    assert await link.heartbeat() == 10.0
    await tasks.close()
