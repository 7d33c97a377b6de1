"""Tracker TTLs and leases follow the injected clock: a wall-clock jump changes nothing."""

from __future__ import annotations

import pytest

from testbed.clockjump import WallClockJump
from tests.tracker.conftest import new_key
from tests.tracker.helpers import agent, digest_of
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.service import Tracker
from tracker.store import TrackerStore

D = digest_of("clock-jump")
DAY = 86400.0


async def test_wall_clock_jumps_neither_expire_nor_extend_leases_and_agents(
    store: TrackerStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = WallClockJump(monkeypatch)
    tracker = Tracker(store, clock, TrackerConfig(agent_ttl=30, lease_ttl=20))
    keys = {a: new_key() for a in ("a1", "a2")}
    for aid, key in keys.items():
        await tracker.heartbeat(agent(aid, region="eu"), key)
    assert (await tracker.lookup("a1", keys["a1"], D)).action == "fetch"
    await tracker.announce("a1", keys["a1"], D, "fetching", progress_bytes=1, total_bytes=10)

    # Two days forward: had anything read the wall clock, a1 and its lease would be gone.
    wall.jump(2 * DAY)
    reply = await tracker.lookup("a2", keys["a2"], D)
    assert (reply.action, reply.lease_holder) == ("wait", "a1")
    assert len((await tracker.fleet())["agents"]) == 2

    # Four days back: nothing may live longer either. Only a2 heartbeats past the agent TTL.
    wall.jump(-4 * DAY)
    clock.advance(25)
    await tracker.heartbeat(agent("a2", region="eu"), keys["a2"])
    clock.advance(10)
    reply = await tracker.lookup("a2", keys["a2"], D)
    assert reply.action == "fetch", reply
    assert [a["agent_id"] for a in (await tracker.fleet())["agents"]] == ["a2"]
