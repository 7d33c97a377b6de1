"""Tag invalidations at the tracker: the API operators call and agents poll, and the store."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from core.trackerclient import HttpTrackerClient
from core.wire import Invalidation
from tests.tracker.conftest import TOKEN, AppFactory, new_key
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.store import MemoryStore, TrackerStore
from tracker.store.base import MAX_INVALIDATIONS

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_operators_invalidate_tags_and_agents_poll_them(
    make_app: AppFactory, config: TrackerConfig, clock: ManualClock
) -> None:
    app = await make_app(config, clock=clock, store=MemoryStore(), registry=CollectorRegistry())
    image = "registry.example.com/team/app:latest"
    assert (await app.post("/v1/invalidations", json={"image": image})).status == 401
    resp = await app.post("/v1/invalidations", json={"image": image}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    first = Invalidation.from_json(await resp.json())
    assert first.image == image
    clock.advance(5)
    resp = await app.post("/v1/invalidations", json={"image": "alpine:3.20"}, headers=AUTH)
    second = Invalidation.from_json(await resp.json())

    # A digest never moves, and bad input is a 400 with a reason, never a traceback.
    for bad in ("alpine@sha256:" + "a" * 64, "registry.example.com/team/app", "no spaces :x"):
        resp = await app.post("/v1/invalidations", json={"image": bad}, headers=AUTH)
        assert resp.status == 400, bad
        assert "error" in await resp.json()
    assert (await app.get("/v1/invalidations?after=soon", headers=AUTH)).status == 400

    # Agents poll with the newest `created` they applied, through their own client.
    async with aiohttp.ClientSession() as session:
        url = str(app.make_url("")).rstrip("/")
        client = HttpTrackerClient(url, TOKEN, "a1", new_key(), session)
        assert await client.invalidations(0.0) == [first, second]
        assert await client.invalidations(first.created) == [second]
        assert await client.invalidations(second.created) == []


async def test_the_store_keeps_the_newest_invalidations(store: TrackerStore) -> None:
    for i in range(MAX_INVALIDATIONS + 5):
        await store.put_invalidation(Invalidation(f"id{i}", f"r/app:{i}", float(i)))
    kept = await store.invalidations()
    assert len(kept) == MAX_INVALIDATIONS
    assert kept[0].id == "id5" and kept[-1].id == f"id{MAX_INVALIDATIONS + 4}"
