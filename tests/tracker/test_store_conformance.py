"""One contract, every store: the same tests run against MemoryStore and a real Redis."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import redis

from core.trackererrors import StoreUnavailable
from core.wire import Counters, LayerProgress, PreheatJob, SegmentMeta
from testbed.procs import free_port
from tests.tracker.helpers import agent, digest_of, segment
from tracker.clock import ManualClock
from tracker.model import Holding, PreheatReport
from tracker.store import TrackerStore
from tracker.store.base import BadReport
from tracker.store.redis_store import INDEX_TTL_MS, RedisStore

TTL = 30.0
D1 = digest_of("one")
D2 = digest_of("two")


def holding(agent_id: str, state: str = "holding", now: float = 0.0) -> Holding:
    return Holding(agent_id, state, 5, 10, now)  # type: ignore[arg-type]  # valid literal


async def bind(
    store: TrackerStore, clock: ManualClock, agent_id: str, key: str, **kw: object
) -> str:
    now = clock.now()
    return await store.bind_agent(agent(agent_id, **kw), key, now, now + TTL)  # type: ignore[arg-type]


async def test_agent_binding_and_expiry(store: TrackerStore, clock: ManualClock) -> None:
    assert await bind(store, clock, "a1", "key-a" * 4) == "new"
    assert await bind(store, clock, "a1", "key-a" * 4) == "renewed"
    # Alive under another key: refused, and the stored key is unchanged.
    assert await bind(store, clock, "a1", "key-b" * 4) == "conflict"
    rec = await store.get_agent("a1")
    assert rec is not None and rec.key == "key-a" * 4
    assert [r.info.agent_id for r in await store.live_agents(clock.now())] == ["a1"]

    clock.advance(TTL - 1)
    assert [r.info.agent_id for r in await store.live_agents(clock.now())] == ["a1"]
    clock.advance(1)
    assert await store.live_agents(clock.now()) == []
    # Expired: a new key may take the id over.
    assert await bind(store, clock, "a1", "key-b" * 4) == "new"
    rec = await store.get_agent("a1")
    assert rec is not None and rec.key == "key-b" * 4 and rec.alive(clock.now())


async def test_new_incarnation_forgets_old_holdings(
    store: TrackerStore, clock: ManualClock
) -> None:
    await bind(store, clock, "a1", "k" * 20)
    await store.put_holdings("a1", [(D1, holding("a1")), (D2, holding("a1"))])
    clock.advance(TTL + 1)
    # Same key coming back (a partition healed): holdings kept.
    assert await bind(store, clock, "a1", "k" * 20) == "new"
    assert len((await store.peer_view(D1, count_lookup=False)).holders) == 1
    clock.advance(TTL + 1)
    # A restarted agent (new key) must re-announce what it really has.
    assert await bind(store, clock, "a1", "j" * 20) == "new"
    assert (await store.peer_view(D1, count_lookup=False)).holders == ()
    assert (await store.peer_view(D2, count_lookup=False)).holders == ()


async def test_holdings_view_and_withdraw(store: TrackerStore, clock: ManualClock) -> None:
    await bind(store, clock, "a1", "k" * 20, zone="z1")
    await bind(store, clock, "a2", "k" * 20)
    await store.put_holdings("a1", [(D1, holding("a1"))])
    await store.put_holdings("a2", [(D1, holding("a2", "fetching")), (D2, holding("a2"))])
    view = await store.peer_view(D1, count_lookup=True)
    got = {h.agent_id: (h.state, r.info.zone if r else None) for h, r in view.holders}
    assert got == {"a1": ("holding", "z1"), "a2": ("fetching", "")}
    assert view.metainfo is None and view.bad_peers == frozenset()

    await store.remove_holding("a2", D1)
    assert [h.agent_id for h, _ in (await store.peer_view(D1, count_lookup=True)).holders] == ["a1"]
    assert [h.agent_id for h, _ in (await store.peer_view(D2, count_lookup=False)).holders] == [
        "a2"
    ]
    assert await store.hottest(5) == [(D1, 2)]

    # An expired agent's holdings are still returned (the caller filters) until pruned.
    clock.advance(TTL + 1)
    await bind(store, clock, "a2", "k" * 20)
    view = await store.peer_view(D1, count_lookup=False)
    assert [(h.agent_id, r is not None and r.alive(clock.now())) for h, r in view.holders] == [
        ("a1", False)
    ]
    assert await store.prune(clock.now()) == 1
    assert (await store.peer_view(D1, count_lookup=False)).holders == ()
    assert await store.get_agent("a1") is None
    assert await store.get_agent("a2") is not None


async def test_lease_grant_wait_and_region(store: TrackerStore, clock: ManualClock) -> None:
    for a in ("a1", "a2", "b1"):
        await bind(store, clock, a, "k" * 20)
    now = clock.now()
    first = await store.acquire_lease("eu", D1, "a1", now, now + 30)
    assert (first.granted, first.holder, first.took_over) == (True, "a1", False)
    second = await store.acquire_lease("eu", D1, "a2", now, now + 30)
    assert (second.granted, second.holder) == (False, "a1")
    # The holder asking again keeps it.
    assert (await store.acquire_lease("eu", D1, "a1", now, now + 30)).granted
    # Another region and another digest have their own leases.
    assert (await store.acquire_lease("us", D1, "b1", now, now + 30)).granted
    assert (await store.acquire_lease("eu", D2, "a2", now, now + 30)).granted


async def test_lease_takeover_after_stall_renewal_and_release(
    store: TrackerStore, clock: ManualClock
) -> None:
    await bind(store, clock, "a1", "k" * 20)
    await bind(store, clock, "a2", "k" * 20)
    now = clock.now()
    assert (await store.acquire_lease("", D1, "a1", now, now + 10)).granted
    clock.advance(8)
    now = clock.now()
    # Only the holder renews.
    assert not await store.renew_lease("", D1, "a2", now, now + 10)
    assert await store.renew_lease("", D1, "a1", now, now + 10)
    clock.advance(8)
    now = clock.now()
    assert not (await store.acquire_lease("", D1, "a2", now, now + 10)).granted
    clock.advance(2)  # no progress for the full lease time: stalled
    now = clock.now()
    taken = await store.acquire_lease("", D1, "a2", now, now + 10)
    assert (taken.granted, taken.holder, taken.took_over) == (True, "a2", True)
    # The old holder cannot release the new holder's lease; the new one can.
    await store.release_leases("", [D1], "a1")
    assert not (await store.acquire_lease("", D1, "a1", now, now + 10)).granted
    await store.release_leases("", [D1], "a2")
    assert (await store.acquire_lease("", D1, "a1", now, now + 10)).granted


async def test_lease_takeover_when_holder_expired(store: TrackerStore, clock: ManualClock) -> None:
    await bind(store, clock, "a1", "k" * 20)
    now = clock.now()
    assert (await store.acquire_lease("", D1, "a1", now, now + 1000)).granted
    clock.advance(TTL + 1)  # a1 stops heartbeating; its lease has not run out
    await bind(store, clock, "a2", "k" * 20)
    now = clock.now()
    taken = await store.acquire_lease("", D1, "a2", now, now + 1000)
    assert (taken.granted, taken.took_over) == (True, True)


async def test_concurrent_lease_requests_grant_once(
    store: TrackerStore, clock: ManualClock
) -> None:
    ids = [f"a{i}" for i in range(50)]
    for a in ids:
        await bind(store, clock, a, "k" * 20)
    now = clock.now()
    results = await asyncio.gather(*(store.acquire_lease("r", D1, a, now, now + 30) for a in ids))
    granted = [r.holder for r in results if r.granted]
    assert len(granted) == 1
    assert {r.holder for r in results} == set(granted)


TREE_TTL = 3600.0


async def _fleet_fetching(store: TrackerStore, clock: ManualClock, n: int) -> list[str]:
    """A seed holding D1 and ``n`` agents fetching it, all in region "r"."""
    await bind(store, clock, "seed", "k" * 20, region="r")
    await store.put_holdings("seed", [(D1, holding("seed"))])
    ids = [f"n{i}" for i in range(1, n + 1)]
    for a in ids:
        await bind(store, clock, a, "k" * 20, region="r")
        await store.put_holdings(a, [(D1, holding(a, "fetching"))])
    return ids


async def _assign(
    store: TrackerStore, clock: ManualClock, child: str, candidates: list[tuple[str, bool]]
) -> str | None:
    now = clock.now()
    return await store.assign_parent("r", D1, child, candidates, now, now + TREE_TTL)


async def test_assigned_parents_form_one_chain(store: TrackerStore, clock: ManualClock) -> None:
    """Newcomers asking at the same moment get distinct parents, each a member of the tree:
    one chain from the seed, in whatever order their claims landed."""
    ids = await _fleet_fetching(store, clock, 12)
    cands = [("seed", True), *((a, False) for a in ids)]
    got = await asyncio.gather(*(_assign(store, clock, a, cands) for a in ids))
    assert None not in got
    parent = {a: str(p) for a, p in zip(ids, got, strict=True)}
    assert len(set(parent.values())) == len(ids)  # one child per parent
    # Following parents up from any node reaches the seed: a single chain, no cycle.
    for a in ids:
        node, hops = a, 0
        while node != "seed":
            node = parent[node]
            hops += 1
            assert hops <= len(ids)
    # The chain's end is the only free slot: the next newcomer goes below it.
    await bind(store, clock, "late", "k" * 20, region="r")
    await store.put_holdings("late", [(D1, holding("late", "fetching"))])
    tail = next(a for a in ids if a not in parent.values())
    assert await _assign(store, clock, "late", [*cands, ("late", False)]) == tail


async def test_only_tree_members_and_free_slots_are_assigned(
    store: TrackerStore, clock: ManualClock
) -> None:
    n1, n2, n3 = await _fleet_fetching(store, clock, 3)
    # A fetcher nobody placed has no source the tracker knows of: never a parent.
    assert await _assign(store, clock, n2, [(n1, False)]) is None
    assert await _assign(store, clock, n1, [("seed", True)]) == "seed"
    assert await _assign(store, clock, n2, [("seed", True), (n1, False)]) == n1
    # Asking again keeps one's own slot rather than taking another.
    assert await _assign(store, clock, n2, [(n1, False)]) == n1
    # Below oneself is never offered: n1 re-placed cannot go under n2.
    assert await _assign(store, clock, n1, [(n2, False)]) is None
    # A slot frees when its child completes ...
    await store.put_holdings(n2, [(D1, holding(n2))])
    assert await _assign(store, clock, n3, [(n1, False)]) == n1
    # ... when it withdraws ...
    await store.remove_holding(n3, D1)
    await store.put_holdings(n2, [(D1, holding(n2, "fetching"))])
    assert await _assign(store, clock, n2, [(n1, False)]) == n1
    # ... and when it dies (n2 stops heartbeating; the others go on).
    clock.advance(TTL - 1)
    for a in ("seed", n1, n3):
        await bind(store, clock, a, "k" * 20, region="r")
    clock.advance(2)
    assert await _assign(store, clock, n3, [(n1, False)]) == n1


async def test_void_parent_frees_the_failed_parents_slot(
    store: TrackerStore, clock: ManualClock
) -> None:
    n1, n2, n3 = await _fleet_fetching(store, clock, 3)
    assert await _assign(store, clock, n1, [("seed", True)]) == "seed"
    assert await _assign(store, clock, n2, [("seed", True), (n1, False)]) == n1
    now = clock.now()
    # Only n1's child may say n1 failed it.
    assert not await store.void_parent("r", D1, n3, n1, now)
    assert await store.void_parent("r", D1, n2, n1, now)
    # The seed's slot is free again, and n1 is no parent until it is placed anew.
    assert await _assign(store, clock, n3, [(n1, False)]) is None
    assert await _assign(store, clock, n2, [(n1, False), ("seed", True)]) == "seed"
    assert not await store.void_parent("r", D1, n2, n1, now)


async def test_newcomers_who_do_not_see_each_other_still_form_one_chain(
    store: TrackerStore, clock: ManualClock
) -> None:
    """Each newcomer offers only the seed (its peer view was read before the others had
    announced): the tree's open ends still place every one below the previous one."""
    ids = await _fleet_fetching(store, clock, 8)
    got = await asyncio.gather(*(_assign(store, clock, a, [("seed", True)]) for a in ids))
    parent = {a: str(p) for a, p in zip(ids, got, strict=True)}
    assert None not in got and len(set(parent.values())) == len(ids), parent
    for a in ids:
        node, hops = a, 0
        while node != "seed":
            node = parent[node]
            hops += 1
            assert hops <= len(ids)
    # A dead open end is passed over: the newcomer waits for a live one instead.
    tail = next(a for a in ids if a not in parent.values())
    clock.advance(TTL - 1)
    for a in ["seed", *ids]:
        if a != tail:
            await bind(store, clock, a, "k" * 20, region="r")
    clock.advance(2)
    await bind(store, clock, "late", "k" * 20, region="r")
    await store.put_holdings("late", [(D1, holding("late", "fetching"))])
    assert await _assign(store, clock, "late", [("seed", True)]) is None


async def test_parent_tree_expires(store: TrackerStore, clock: ManualClock) -> None:
    n1, n2 = await _fleet_fetching(store, clock, 2)
    now = clock.now()
    assert await store.assign_parent("r", D1, n1, [("seed", True)], now, now + 5) == "seed"
    # Another region's tree of the same digest is its own.
    assert await store.assign_parent("q", D1, n2, [("seed", True)], now, now + 5) == "seed"
    clock.advance(5)
    for a in ("seed", n1, n2):
        await bind(store, clock, a, "k" * 20, region="r")
    now = clock.now()
    await store.prune(now)
    # Memory drops expired trees at prune; Redis keys carry TTLs a minute past expiry.
    assert (await store.usage()).get("parent_trees", 0) == 0
    # Forgotten: n1 is no member any more, and the seed's slot is free.
    assert await store.assign_parent("r", D1, n2, [(n1, False)], now, now + 5) is None
    assert await store.assign_parent("r", D1, n2, [("seed", True)], now, now + 5) == "seed"


async def test_metainfo_segments(store: TrackerStore) -> None:
    assert await store.get_metainfo(D1) is None
    s0, s1 = segment(0, 0, 60), segment(1, 60, 40)
    assert await store.put_segment(D1, 100, s0) == "stored"
    assert await store.put_segment(D1, 100, s0) == "same"
    assert await store.put_segment(D1, 100, segment(0, 0, 60, b"other")) == "conflict"
    assert await store.put_segment(D1, 99, s1) == "conflict"
    meta = await store.get_metainfo(D1)
    assert meta is not None and meta.segments == (s0,) and not meta.complete
    assert await store.put_segment(D1, 100, s1) == "stored"
    meta = await store.get_metainfo(D1)
    assert meta is not None and meta.segments == (s0, s1) and meta.complete
    assert (await store.peer_view(D1, count_lookup=False)).metainfo == meta


async def test_bad_peers(store: TrackerStore, clock: ManualClock) -> None:
    now = clock.now()
    assert await store.add_bad_peer(D1, "p1", "r1", now, now + 60) == BadReport(1, True)
    # The same reporter again: not its first report on that digest.
    assert await store.add_bad_peer(D1, "p1", "r1", now, now + 60) == BadReport(1, False)
    assert await store.add_bad_peer(D2, "p2", "r1", now, now + 60) == BadReport(1, True)
    # One reporter: left out for the reporter only.
    assert (await store.peer_view(D1, count_lookup=False)).bad_peers == frozenset()
    assert (await store.peer_view(D1, count_lookup=False, asker="r1")).bad_peers == {"p1"}
    # A second reporter: left out for everyone.
    assert await store.add_bad_peer(D1, "p1", "r2", now, now + 30) == BadReport(2, True)
    assert (await store.peer_view(D1, count_lookup=False)).bad_peers == {"p1"}
    assert await store.bad_peer_counts() == {"p1": 2, "p2": 1}
    # Reports expire.
    clock.advance(31)
    await store.prune(clock.now())
    assert (await store.peer_view(D1, count_lookup=False)).bad_peers == frozenset()
    assert (await store.peer_view(D1, count_lookup=False, asker="r1")).bad_peers == {"p1"}
    clock.advance(30)
    # Expired reports count for nothing, even before a prune.
    now = clock.now()
    assert await store.add_bad_peer(D2, "p2", "r9", now, now + 60) == BadReport(1, True)
    assert await store.add_bad_peer(D2, "p2", "r1", now, now + 60) == BadReport(2, True)
    await store.prune(clock.now())
    assert (await store.peer_view(D1, count_lookup=False, asker="r1")).bad_peers == frozenset()


async def test_conflicting_metainfo_replaced(store: TrackerStore, clock: ManualClock) -> None:
    now = clock.now()
    s0, s1 = segment(0, 0, 60), segment(1, 60, 40)
    assert await store.put_segment(D1, 100, s0, now=now, expires=now + 60) == "stored"
    assert await store.put_segment(D1, 100, s1, now=now, expires=now + 60) == "stored"
    # Another torrent file of the same content (same info hash) is the same segment.
    other_file = SegmentMeta(0, 0, 60, s0.info_hash, b"d8:announce1:xe")
    assert await store.put_segment(D1, 100, other_file, now=now, expires=now + 60) == "same"
    rogue = segment(0, 0, 99, b"rogue")
    assert await store.put_segment(D1, 99, rogue, now=now, expires=now + 60) == "conflict"
    status = await store.put_segment(D1, 99, rogue, now=now, expires=now + 60, replace=True)
    assert status == "stored"
    meta = await store.get_metainfo(D1)
    assert meta is not None and meta.total_size == 99 and meta.segments == (rogue,)
    # Metainfo expires.
    clock.advance(61)
    await store.prune(clock.now())
    assert await store.get_metainfo(D1) is None


async def test_counters_survive_restart(store: TrackerStore, clock: ManualClock) -> None:
    c1 = Counters(upstream_bytes=100, peer_bytes=300)
    now = clock.now()
    await store.bind_agent(agent("a1", counters=c1), "k" * 20, now, now + TTL)
    await store.bind_agent(agent("a2", counters=Counters(peer_bytes=5)), "k" * 20, now, now + TTL)
    assert await store.counter_totals() == Counters(upstream_bytes=100, peer_bytes=305)
    clock.advance(TTL + 1)
    now = clock.now()
    # a1 restarts from zero under a new key: the fleet's total must not go backwards.
    await store.bind_agent(
        agent("a1", counters=Counters(upstream_bytes=1)), "j" * 20, now, now + TTL
    )
    assert await store.counter_totals() == Counters(upstream_bytes=101, peer_bytes=305)


async def test_totals_by_region_outlive_the_agents(store: TrackerStore, clock: ManualClock) -> None:
    now = clock.now()
    eu = Counters(upstream_bytes=100, peer_bytes=700)
    await store.bind_agent(agent("a1", region="eu", counters=eu), "k" * 20, now, now + TTL)
    await store.bind_agent(
        agent("a2", region="eu", counters=Counters(peer_bytes=50)), "k" * 20, now, now + TTL
    )
    await store.bind_agent(
        agent("a3", region="us", counters=Counters(upstream_bytes=100)), "k" * 20, now, now + TTL
    )
    await store.bind_agent(agent("a4", counters=Counters(peer_bytes=1)), "k" * 20, now, now + TTL)
    expected = {
        "eu": Counters(upstream_bytes=100, peer_bytes=750),
        "us": Counters(upstream_bytes=100),
        "": Counters(peer_bytes=1),
    }
    assert await store.region_totals() == expected
    # Every agent leaves and is pruned: what the fleet moved stays moved.
    clock.advance(TTL + 1)
    await store.prune(clock.now())
    assert await store.live_agents(clock.now()) == []
    assert await store.region_totals() == expected
    assert await store.counter_totals() == Counters(upstream_bytes=200, peer_bytes=751)


async def test_preheat_jobs_and_reports(store: TrackerStore) -> None:
    job = PreheatJob("j1", "127.0.0.1:5000/app:v1", "seeds", None, "eu", 10.0)
    await store.put_job(job)
    assert await store.get_job("j1") == job
    assert await store.list_jobs() == [job]
    rep = PreheatReport("a1", "running", (LayerProgress(D1, 100, 40),), None, 11.0)
    await store.put_report("j1", rep)
    await store.put_report(
        "j1", PreheatReport("a1", "done", (LayerProgress(D1, 100, 100),), None, 12.0)
    )
    got = await store.reports("j1")
    assert len(got) == 1 and got[0].state == "done" and got[0].layers[0].done_bytes == 100
    await store.delete_job("j1")
    assert await store.get_job("j1") is None and await store.reports("j1") == []


async def test_ping_answers_from_a_live_redis(redis_url: str) -> None:
    # A hung ping would hang /healthz. Redis only: the memory store has nothing to reach, so
    # a memory case here could not fail.
    live = RedisStore.from_url(redis_url)
    try:
        await asyncio.wait_for(live.ping(), timeout=5)
    finally:
        await live.close()


async def test_ping_reports_an_unreachable_redis() -> None:
    """What /healthz relies on: a store that can't be reached says so as StoreUnavailable."""
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await dead.ping()
    finally:
        await dead.close()


async def test_peer_view_samples_popular_digests(store: TrackerStore, clock: ManualClock) -> None:
    for i in range(30):
        await bind(store, clock, f"a{i}", "k" * 20)
        await store.put_holdings(f"a{i}", [(D1, holding(f"a{i}"))])
    assert len((await store.peer_view(D1, count_lookup=False)).holders) == 30
    seen: set[str] = set()
    for _ in range(20):
        view = await store.peer_view(D1, count_lookup=False, limit=5)
        ids = [h.agent_id for h, _ in view.holders]
        assert len(ids) == len(set(ids)) == 5
        seen.update(ids)
    assert len(seen) > 10  # a random sample each time, not the same five


async def fill_regions(store: TrackerStore, clock: ManualClock, regions: int, each: int) -> None:
    for r in range(regions):
        for i in range(each):
            aid = f"r{r}-{i}"
            await bind(store, clock, aid, "k" * 20, region=f"r{r}", zone=f"z{i % 3}")
            await store.put_holdings(aid, [(D1, holding(aid, "holding" if i == 0 else "fetching"))])


async def test_lookup_samples_the_askers_region_first(
    store: TrackerStore, clock: ManualClock
) -> None:
    # 20 regions x 20 holders, a sample of 16: fleet-wide, a region's one complete copy would
    # be missed in most lookups (the region then looks cold and fetches upstream again).
    await fill_regions(store, clock, 20, 20)
    await bind(store, clock, "me", "m" * 20, region="r7")
    for _ in range(10):
        rec, view = await store.lookup_view("me", "m" * 20, D1, clock.now(), 16)  # type: ignore[attr-defined]
        assert rec is not None and view is not None
        ids = [h.agent_id for h, _ in view.holders]
        assert len(ids) == len(set(ids)) == 16
        assert "r7-0" in ids
        # A quarter of the sample is the region's fetchers, the rest comes from the fleet.
        assert sum(i.startswith("r7-") for i in ids) >= 1 + 4
        assert any(not i.startswith("r7-") for i in ids)
    # peer_view takes the region explicitly; without one it samples the fleet.
    view = await store.peer_view(D1, count_lookup=False, limit=16, region="r3")
    assert "r3-0" in [h.agent_id for h, _ in view.holders]
    assert len((await store.peer_view(D1, count_lookup=False, limit=16)).holders) == 16


async def test_region_index_follows_every_change(store: TrackerStore, clock: ManualClock) -> None:
    await fill_regions(store, clock, 4, 20)

    async def always(agent_id: str, region: str) -> bool:
        for _ in range(5):
            view = await store.peer_view(D1, count_lookup=False, limit=4, region=region)
            if agent_id not in [h.agent_id for h, _ in view.holders]:
                return False
        return True

    # A fetcher that completes moves to the region's complete copies (2 of a sample of 4).
    await bind(store, clock, "x", "k" * 20, region="r1")
    await store.put_holdings("x", [(D1, holding("x", "fetching"))])
    await store.put_holdings("x", [(D1, holding("x", "holding"))])
    assert await always("x", "r1")
    # The same incarnation re-registered in another region: its holdings go with it.
    await bind(store, clock, "x", "k" * 20, region="r2")
    assert await always("x", "r2")
    assert await always("r2-0", "r2")
    # Withdrawn: gone; announced again: back.
    await store.remove_holding("x", D1)
    assert not await always("x", "r2")
    await store.put_holdings("x", [(D1, holding("x"))])
    assert await always("x", "r2")
    # Expired and pruned: gone from the region's sample too (the sample still fills up).
    clock.advance(TTL + 1)
    await bind(store, clock, "x", "k" * 20, region="r2")
    assert await store.prune(clock.now()) == 80
    view = await store.peer_view(D1, count_lookup=False, limit=4, region="r2")
    assert [h.agent_id for h, _ in view.holders] == ["x"]


async def test_redis_region_index_keys_carry_ttls_and_go_with_holdings(
    redis_url: str, clock: ManualClock
) -> None:
    store = RedisStore.from_url(redis_url)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)

    def keys_like(pattern: str) -> list[str]:
        return sorted(cast(list[str], raw.keys(pattern)))

    try:
        await fill_regions(store, clock, 2, 3)
        keys = keys_like("layerswarm:r[hf]:*")
        assert [k.split(":")[1:3] for k in keys] == [
            ["rf", "r0"],
            ["rf", "r1"],
            ["rh", "r0"],
            ["rh", "r1"],
        ]
        assert all(0 < raw.pttl(k) <= INDEX_TTL_MS for k in keys)
        # A new incarnation (another key) forgets its holdings, index included.
        clock.advance(TTL + 1)
        await bind(store, clock, "r0-0", "j" * 20, region="r0")
        await bind(store, clock, "r0-1", "k" * 20, region="r0")
        await store.remove_holding("r0-1", D1)
        assert keys_like("layerswarm:r[hf]:r0:*") == ["layerswarm:rf:r0:" + D1]
        await store.prune(clock.now())
        assert keys_like("layerswarm:r[hf]:*") == keys_like("layerswarm:holders:*") == []
    finally:
        raw.close()
        await store.close()


async def test_redis_parent_tree_keys_carry_ttls(redis_url: str, clock: ManualClock) -> None:
    store = RedisStore.from_url(redis_url)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        n1, n2 = await _fleet_fetching(store, clock, 2)
        assert await _assign(store, clock, n1, [("seed", True)]) == "seed"
        assert await _assign(store, clock, n2, []) == n1  # the open end
        keys = sorted(cast(list[str], raw.keys("layerswarm:t*")))
        assert [k.split(":")[1] for k in keys] == ["tails", "tree"]
        # A minute past the tree's expiry, whatever prune does.
        assert all(0 < raw.pttl(k) <= (TREE_TTL + 60) * 1000 for k in keys)
    finally:
        raw.close()
        await store.close()
