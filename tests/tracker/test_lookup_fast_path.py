"""The lookup's fast paths: Redis's one-step authenticated view with its per-replica record
cache, and the memory store's sampling. Two Tracker instances on one real redis-server stand for
two replicas; the clock is injected, so expiry is exact."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.trackererrors import Forbidden, UnknownAgent
from tests.tracker.conftest import new_key
from tests.tracker.helpers import agent, digest_of
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.service import Tracker
from tracker.store import RedisStore
from tracker.store.base import AuthenticatedLookup
from tracker.store.memory import MemoryStore, sample

D = digest_of("cached")
CFG = TrackerConfig(agent_ttl=30.0, lease_ttl=30.0)


@pytest.fixture
async def replicas(redis_url: str, clock: ManualClock) -> AsyncIterator[tuple[Tracker, Tracker]]:
    s1, s2 = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    try:
        yield Tracker(s1, clock, CFG), Tracker(s2, clock, CFG)
    finally:
        await s1.close()
        await s2.close()


async def test_redis_store_offers_the_one_step_lookup(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        assert isinstance(store, AuthenticatedLookup)
        # The memory store offers it too: the asker must be known to leave out the peers it
        # reported itself.
        assert isinstance(MemoryStore(), AuthenticatedLookup)
    finally:
        await store.close()


async def test_cached_holder_that_expired_is_never_handed_out(
    replicas: tuple[Tracker, Tracker], clock: ManualClock
) -> None:
    t1, t2 = replicas
    hk, ak = new_key(), new_key()
    await t1.heartbeat(agent("holder", region="eu"), hk)
    await t1.announce("holder", hk, D, "holding")
    await t2.heartbeat(agent("asker", region="eu"), ak)
    first = await t2.lookup("asker", ak, D)
    assert [p.agent_id for p in first.peers] == ["holder"]  # now cached on replica 2

    clock.advance(20)
    await t2.heartbeat(agent("asker", region="eu"), ak)
    clock.advance(15)  # holder expired (35 s since its heartbeat); asker alive
    again = await t2.lookup("asker", ak, D)
    assert again.peers == () and again.action == "fetch"


async def test_replicas_agree_after_a_heartbeat_changes_the_record(
    replicas: tuple[Tracker, Tracker], clock: ManualClock
) -> None:
    t1, t2 = replicas
    hk, ak = new_key(), new_key()
    await t1.heartbeat(agent("holder", zone="z1", region="eu"), hk)
    await t1.announce("holder", hk, D, "holding")
    await t2.heartbeat(agent("asker", zone="z1", region="eu"), ak)
    before = await t2.lookup("asker", ak, D)
    assert before.peers[0].zone == "z1"
    # Same instant, different content (a ManualClock does not move): the record's version
    # must still change, or replica 2 would keep serving the cached zone.
    moved = dataclasses.replace(agent("holder", zone="z2", region="eu"), address="192.0.2.7")
    await t1.heartbeat(moved, hk)
    on_r2 = await t2.lookup("asker", ak, D)
    on_r1 = await t1.lookup("asker", ak, D)
    assert on_r2.peers == on_r1.peers
    assert (on_r2.peers[0].zone, on_r2.peers[0].address) == ("z2", "192.0.2.7")


async def test_restarted_holder_under_a_new_key_loses_its_cached_holdings(
    replicas: tuple[Tracker, Tracker], clock: ManualClock
) -> None:
    t1, t2 = replicas
    ak = new_key()
    await t1.heartbeat(agent("holder", region="eu"), new_key())
    await t1.announce("holder", (await _key_of(t1, "holder")), D, "holding")
    await t2.heartbeat(agent("asker", region="eu"), ak)
    assert len((await t2.lookup("asker", ak, D)).peers) == 1
    clock.advance(31)
    await t2.heartbeat(agent("asker", region="eu"), ak)
    await t1.heartbeat(agent("holder", region="eu"), new_key())  # a new incarnation
    reply = await t2.lookup("asker", ak, D)
    assert reply.peers == () and reply.action == "fetch"


async def _key_of(t: Tracker, agent_id: str) -> str:
    rec = await t.store.get_agent(agent_id)
    assert rec is not None
    return rec.key


async def test_one_step_lookup_refuses_like_the_plain_path_and_counts_nothing(
    replicas: tuple[Tracker, Tracker], clock: ManualClock
) -> None:
    t1, t2 = replicas
    ak = new_key()
    with pytest.raises(UnknownAgent):
        await t2.lookup("asker", ak, D)
    await t1.heartbeat(agent("asker", region="eu"), ak)
    with pytest.raises(Forbidden):
        await t2.lookup("asker", new_key(), D)
    clock.advance(31)
    with pytest.raises(UnknownAgent):
        await t2.lookup("asker", ak, D)
    assert await t2.store.hottest(5) == []
    await t2.heartbeat(agent("asker", region="eu"), ak)
    assert (await t2.lookup("asker", ak, D)).action == "fetch"
    assert await t1.store.hottest(5) == [(D, 1)]


async def test_records_written_before_versions_are_still_served(
    replicas: tuple[Tracker, Tracker], redis_url: str
) -> None:
    t1, t2 = replicas
    hk, ak = new_key(), new_key()
    await t1.heartbeat(agent("holder", region="eu"), hk)
    await t1.announce("holder", hk, D, "holding")
    await t2.heartbeat(agent("asker", region="eu"), ak)
    # Stands in for records an older tracker wrote: the same hash without its version field.
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.hdel("layerswarm:agent:holder", "ver")
        await raw.hdel("layerswarm:agent:asker", "ver")
    finally:
        await raw.aclose()
    reply = await t2.lookup("asker", ak, D)
    assert [p.agent_id for p in reply.peers] == ["holder"]


def test_sample_is_a_subset_of_distinct_items_covering_the_population() -> None:
    rng = random.Random(3)
    seq = tuple(range(250))
    seen: set[int] = set()
    for _ in range(200):
        got = sample(rng, seq, 64)
        assert len(got) == 64 == len(set(got))
        assert set(got) <= set(seq)
        seen.update(got)
    assert seen == set(seq)
    # More than half wanted: the exact standard-library path.
    big = sample(rng, seq, 200)
    assert len(set(big)) == 200


async def test_memory_lookup_sees_holders_change_after_the_sequence_was_cached(
    clock: ManualClock,
) -> None:
    t = Tracker(MemoryStore(), clock, dataclasses.replace(CFG, max_candidates=8, max_peers=8))
    keys = {f"h{i}": new_key() for i in range(20)}
    for aid, k in keys.items():
        await t.heartbeat(agent(aid, region="eu"), k)
        await t.announce(aid, k, D, "holding")
    ak = new_key()
    await t.heartbeat(agent("asker", region="eu"), ak)
    assert len((await t.lookup("asker", ak, D)).peers) == 8
    for aid, k in keys.items():
        if aid != "h0":
            await t.withdraw(aid, k, D)
    reply = await t.lookup("asker", ak, D)
    assert [p.agent_id for p in reply.peers] == ["h0"]
