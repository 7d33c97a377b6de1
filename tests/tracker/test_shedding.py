"""Load shedding: a busy tracker process answers 429 with Retry-After at once, and the
agent's client asks another replica, or waits as told (with jitter) and asks again; the
operator commands' client follows the same rule (one ``Replicas``).

``BusyTracker`` is a fake: a real tracker sheds only under real overload, not on demand."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.trackerclient import HttpTrackerClient
from core.trackererrors import TrackerUnavailable
from core.wire import AgentInfo, LookupReply
from layerswarm.trackerapi import TrackerAPI
from tests.tracker.conftest import TOKEN, AppFactory, new_key
from tracker.config import TrackerConfig

D = "sha256:" + "ab" * 32


async def test_a_busy_process_sheds_api_requests_with_429(
    make_app: AppFactory, config: TrackerConfig, redis_url: str
) -> None:
    shedding = replace(config, store=redis_url, max_inflight=2)
    app = await make_app(shedding)
    base = str(app.make_url("")).rstrip("/")
    key = new_key()
    async with aiohttp.ClientSession() as session:
        client = HttpTrackerClient(base, TOKEN, "a1", key, session)
        await client.heartbeat(AgentInfo("a1", "10.0.0.1", 6881))
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Layerswarm-Agent-Key": key}

        async def lookup() -> tuple[int, str, dict[str, str]]:
            async with session.post(
                f"{base}/v1/agents/a1/lookup", json={"digest": D}, headers=headers
            ) as resp:
                body = await resp.json()
                return resp.status, resp.headers.get("Retry-After", ""), body

        answers = await asyncio.gather(*(lookup() for _ in range(60)))
        statuses = sorted({a[0] for a in answers})
        assert statuses == [200, 429], statuses
        for status, retry_after, body in answers:
            if status == 429:
                assert retry_after == "1" and body["code"] == "busy"
        # Health checks are never shed, whatever the load.
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200


class BusyTracker:
    """A replica that sheds the first ``busy`` lookups, then answers; records arrival times."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.arrivals: list[float] = []

    async def lookup(self, _request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) <= self.busy:
            return web.json_response(
                {"error": "busy", "code": "busy"}, status=429, headers={"Retry-After": "0.2"}
            )
        return web.json_response(LookupReply(action="fetch", peers=()).to_json())

    async def fleet(self, _request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) <= self.busy:
            return web.json_response(
                {"error": "busy", "code": "busy"}, status=429, headers={"Retry-After": "0.2"}
            )
        return web.json_response({"agents": []})

    async def start(self) -> TestServer:
        app = web.Application()
        app.router.add_post("/v1/agents/{id}/lookup", self.lookup)
        app.router.add_get("/v1/fleet", self.fleet)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        return server


async def test_client_waits_retry_after_with_jitter_then_succeeds() -> None:
    fake = BusyTracker(busy=2)
    server = await fake.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = HttpTrackerClient(
                str(server.make_url("")), TOKEN, "a1", new_key(), session, rng=random.Random(1)
            )
            reply = await client.lookup(D)
        assert reply.action == "fetch"
        assert len(fake.arrivals) == 3
        gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
        # Retry-After 0.2 s times a jitter of 0.5-1.5: never sooner than 0.1 s.
        assert all(g >= 0.1 for g in gaps), gaps
    finally:
        await server.close()


async def test_client_asks_the_other_replica_at_once_when_one_sheds() -> None:
    busy, free = BusyTracker(busy=1000), BusyTracker(busy=0)
    s1, s2 = await busy.start(), await free.start()
    try:
        async with aiohttp.ClientSession() as session:
            urls = [str(s1.make_url("")), str(s2.make_url(""))]
            client = HttpTrackerClient(urls, TOKEN, "a1", new_key(), session)
            reply = await client.lookup(D)
        assert reply.action == "fetch"
        assert (len(busy.arrivals), len(free.arrivals)) == (1, 1)
    finally:
        await s1.close()
        await s2.close()


async def test_client_gives_up_after_a_few_busy_rounds() -> None:
    fake = BusyTracker(busy=1000)
    server = await fake.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = HttpTrackerClient(str(server.make_url("")), TOKEN, "a1", new_key(), session)
            try:
                await client.lookup(D)
            except TrackerUnavailable as exc:
                assert "busy" in str(exc)
            else:
                raise AssertionError("a tracker that is always busy must not look available")
        # Bounded: the first try and four more rounds, then the agent's fallback (upstream).
        assert len(fake.arrivals) == 5
    finally:
        await server.close()


async def test_operator_commands_fail_over_by_the_same_rule() -> None:
    # Both replicas shed the first round; the second round finds the second one free.
    busy, free = BusyTracker(busy=1000), BusyTracker(busy=1)
    s1, s2 = await busy.start(), await free.start()
    try:
        api = TrackerAPI([str(s1.make_url("")), str(s2.make_url(""))], TOKEN, timeout=5)
        fleet = await asyncio.to_thread(api.fleet)
        assert fleet == {"agents": []}
        assert (len(busy.arrivals), len(free.arrivals)) == (2, 2)
    finally:
        await s1.close()
        await s2.close()
