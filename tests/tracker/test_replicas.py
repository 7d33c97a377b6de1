"""Two tracker replicas on one real redis-server behave as one tracker."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
from prometheus_client import CollectorRegistry

from core.trackerclient import HttpTrackerClient
from tests.tracker.conftest import TOKEN, AppFactory, new_key
from tests.tracker.helpers import agent, digest_of
from tracker.clock import ManualClock
from tracker.config import TrackerConfig

D = digest_of("replicated")


async def test_two_replicas_share_state_and_survive_one_stopping(
    make_app: AppFactory, config: TrackerConfig, redis_url: str, clock: ManualClock
) -> None:
    cfg = dataclasses.replace(config, store=redis_url)
    r1 = await make_app(cfg, clock=clock, registry=CollectorRegistry())
    r2 = await make_app(cfg, clock=clock, registry=CollectorRegistry())
    u1, u2 = (str(r.make_url("")).rstrip("/") for r in (r1, r2))
    async with aiohttp.ClientSession() as session:
        clients = {}
        for i in range(60):
            aid = f"a{i}"
            # Agents alternate between replicas; each sees the other's writes.
            url = u1 if i % 2 else u2
            clients[aid] = HttpTrackerClient([url], TOKEN, aid, new_key(), session)
            await clients[aid].heartbeat(agent(aid, region="eu"))
        replies = await asyncio.gather(*(c.lookup(D) for c in clients.values()))
        actions = [r.action for r in replies]
        assert actions.count("fetch") == 1 and actions.count("wait") == 59
        holder = list(clients)[actions.index("fetch")]
        await clients[holder].announce(D, "holding", progress_bytes=10, total_bytes=10)

        watcher1 = HttpTrackerClient([u1], TOKEN, "w", new_key(), session)
        await watcher1.heartbeat(agent("w", region="eu"))
        on_r1 = await watcher1.lookup(D)
        f1 = await (
            await session.get(u1 + "/v1/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
        ).json()
        f2 = await (
            await session.get(u2 + "/v1/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
        ).json()
        assert f1["agents"] == f2["agents"] and len(f1["agents"]) == 61

        await r1.close()
        watcher2 = HttpTrackerClient([u1, u2], TOKEN, "w", watcher1._key, session, timeout=2.0)
        on_r2 = await watcher2.lookup(D)
        assert on_r1.action == on_r2.action == "peers"
        assert [p.agent_id for p in on_r1.peers] == [p.agent_id for p in on_r2.peers] == [holder]
        f2_after = await (
            await session.get(u2 + "/v1/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
        ).json()
        assert f2_after["agents"] == f1["agents"]
