"""The tracker's logic through its Python API (what the embedded tracker uses)."""

from __future__ import annotations

import asyncio
import random

import pytest

from core.trackererrors import Forbidden, InvalidRequest, UnknownAgent
from core.wire import Announcement, Counters, LayerProgress
from tests.tracker.conftest import new_key
from tests.tracker.helpers import agent, digest_of, segment
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.embedded import embedded_tracker, local_client
from tracker.handout import order_peers
from tracker.model import Holding
from tracker.service import FLEET_COUNT_SECONDS, Tracker
from tracker.store import TrackerStore

D = digest_of("layer")


@pytest.fixture
def tracker(store: TrackerStore, clock: ManualClock) -> Tracker:
    return Tracker(store, clock, TrackerConfig(agent_ttl=30, lease_ttl=20, max_peers=4))


async def join(tracker: Tracker, agent_id: str, **kw: object) -> str:
    key = new_key()
    await tracker.heartbeat(agent(agent_id, **kw), key)  # type: ignore[arg-type]
    return key


def test_handout_order_zone_region_seed_rest() -> None:
    asker = agent("me", zone="z1", region="r1")
    h = Holding("x", "holding", 10, 10, 0.0)
    f = Holding("x", "fetching", 5, 10, 0.0)
    cands = [
        (agent("other"), h),
        (agent("seed", role="seed", region="r9"), h),
        (agent("region-fetch", zone="z2", region="r1"), f),
        (agent("region-hold", zone="z2", region="r1"), h),
        (agent("zone", zone="z1", region="r1"), h),
        (agent("zone-elsewhere", zone="z1", region="r2"), h),
    ]
    got = [i.agent_id for i, _ in order_peers(asker, cands, 10, random.Random(1))]
    assert got[:4] == ["zone", "region-hold", "region-fetch", "seed"]
    assert set(got[4:]) == {"other", "zone-elsewhere"}
    assert len(order_peers(asker, cands, 3, random.Random(1))) == 3


def test_handout_spreads_ties() -> None:
    asker = agent("me", region="r1")
    cands = [
        (agent(f"p{i}", region="r1"), Holding(f"p{i}", "holding", 1, 1, 0.0)) for i in range(20)
    ]
    rng = random.Random(7)
    firsts = {order_peers(asker, cands, 1, rng)[0][0].agent_id for _ in range(200)}
    # With random tie-breaks, many different holders get picked first.
    assert len(firsts) > 10
    # Lower load wins over random order.
    cands[3] = (agent("p3", region="r1", load=0.0), cands[3][1])
    busy = [
        (agent(i.agent_id, region="r1", load=5.0), hh) if i.agent_id != "p3" else (i, hh)
        for i, hh in cands
    ]
    assert order_peers(asker, busy, 1, rng)[0][0].agent_id == "p3"


async def test_key_binding(tracker: Tracker) -> None:
    key = await join(tracker, "a1")
    with pytest.raises(Forbidden):
        await tracker.heartbeat(agent("a1"), new_key())
    with pytest.raises(Forbidden):
        await tracker.announce("a1", new_key(), D)
    with pytest.raises(UnknownAgent):
        await tracker.announce("nobody", key, D)
    await tracker.announce("a1", key, D)
    other = await join(tracker, "a2")
    reply = await tracker.lookup("a2", other, D)
    assert [p.agent_id for p in reply.peers] == ["a1"]


async def test_cold_fetch_lease_then_peers(tracker: Tracker, clock: ManualClock) -> None:
    keys = {a: await join(tracker, a, region="eu") for a in ("a1", "a2", "a3")}
    first = await tracker.lookup("a1", keys["a1"], D)
    assert (first.action, first.peers) == ("fetch", ())
    wait = await tracker.lookup("a2", keys["a2"], D)
    # Waiters get the lease holder as a parent at once, before its first announcement.
    assert (wait.action, wait.lease_holder) == ("wait", "a1")
    assert [(p.agent_id, p.state, p.progress_bytes) for p in wait.peers] == [("a1", "fetching", 0)]
    # Once the holder announces progress, waiters get it as a peer to pipeline from.
    await tracker.announce("a1", keys["a1"], D, "fetching", progress_bytes=10, total_bytes=100)
    wait = await tracker.lookup("a2", keys["a2"], D)
    assert wait.action == "wait" and [p.agent_id for p in wait.peers] == ["a1"]
    assert wait.peers[0].state == "fetching"
    await tracker.announce("a1", keys["a1"], D, "holding", progress_bytes=100, total_bytes=100)
    done = await tracker.lookup("a3", keys["a3"], D)
    assert done.action == "peers" and [p.agent_id for p in done.peers] == ["a1"]
    # A lookup that read the holders before that announce asks for the lease after it: the
    # complete copy kept the lease, so it is told to follow a1, not to fetch upstream again.
    late = await tracker.store.acquire_lease("eu", D, "a3", clock.now(), clock.now() + 20)
    assert (late.granted, late.holder) == (False, "a1")
    # The kept lease ends like any other: lease_ttl after the last announce.
    clock.advance(21)
    later = await tracker.store.acquire_lease("eu", D, "a3", clock.now(), clock.now() + 20)
    assert later.granted


async def test_dead_lease_holder_is_not_handed_out(tracker: Tracker, clock: ManualClock) -> None:
    keys = {a: await join(tracker, a, region="eu") for a in ("a1", "a2")}
    assert (await tracker.lookup("a1", keys["a1"], D)).action == "fetch"
    clock.advance(tracker.config.agent_ttl + 1)
    await tracker.heartbeat(agent("a2", region="eu"), keys["a2"])
    reply = await tracker.lookup("a2", keys["a2"], D)
    # The lease passes to the asker; the dead holder is nobody's parent.
    assert reply.action == "fetch" and reply.peers == ()


async def test_lease_per_region(tracker: Tracker) -> None:
    eu = await join(tracker, "eu1", region="eu")
    us = await join(tracker, "us1", region="us")
    us2 = await join(tracker, "us2", region="us")
    assert (await tracker.lookup("eu1", eu, D)).action == "fetch"
    await tracker.announce("eu1", eu, D)
    us_reply = await tracker.lookup("us1", us, D)
    # The other region fetches once more, and still sees the EU holder as a peer.
    assert us_reply.action == "fetch" and [p.agent_id for p in us_reply.peers] == ["eu1"]
    assert (await tracker.lookup("us2", us2, D)).action == "wait"


async def test_concurrent_cold_lookups_grant_one_lease(tracker: Tracker) -> None:
    keys = {f"a{i}": await join(tracker, f"a{i}", region="eu") for i in range(200)}
    replies = await asyncio.gather(*(tracker.lookup(a, k, D) for a, k in keys.items()))
    assert sum(r.action == "fetch" for r in replies) == 1
    assert sum(r.action == "wait" for r in replies) == 199


async def test_lease_takeover_when_holder_goes_or_stalls(
    tracker: Tracker, clock: ManualClock
) -> None:
    k1 = await join(tracker, "a1")
    k2 = await join(tracker, "a2")
    k3 = await join(tracker, "a3")
    assert (await tracker.lookup("a1", k1, D)).action == "fetch"
    await tracker.announce("a1", k1, D, "fetching", progress_bytes=1, total_bytes=100)
    # a1 keeps heartbeating but makes no progress for lease_ttl: stalled.
    clock.advance(15)
    for aid, k in (("a1", k1), ("a2", k2), ("a3", k3)):
        await tracker.heartbeat(agent(aid), k)
    assert (await tracker.lookup("a2", k2, D)).action == "wait"
    clock.advance(6)
    taken = await tracker.lookup("a2", k2, D)
    assert taken.action == "fetch"
    # a2 then stops heartbeating (last at t=15, gone at t=45) but announced progress at t=40,
    # so its lease runs to t=60: the lease must still pass on once a2 is gone.
    clock.advance(19)
    await tracker.announce("a2", k2, D, "fetching", progress_bytes=5, total_bytes=100)
    await tracker.heartbeat(agent("a3"), k3)
    assert (await tracker.lookup("a3", k3, D)).action == "wait"
    clock.advance(6)
    await tracker.heartbeat(agent("a3"), k3)
    reply = await tracker.lookup("a3", k3, D)
    assert reply.action == "fetch"
    assert "a2" not in [p.agent_id for p in reply.peers]


async def test_bad_peer_excluded(tracker: Tracker) -> None:
    k1, k2, k3 = [await join(tracker, a) for a in ("a1", "a2", "a3")]
    await tracker.announce("a1", k1, D)
    await tracker.announce("a2", k2, D)
    await tracker.report_bad_peer("a3", k3, "a1", D)
    assert [p.agent_id for p in (await tracker.lookup("a3", k3, D)).peers] == ["a2"]
    # Only for that digest.
    other = digest_of("other")
    await tracker.announce("a1", k1, other)
    assert [p.agent_id for p in (await tracker.lookup("a3", k3, other)).peers] == ["a1"]


async def test_metainfo_validation(tracker: Tracker) -> None:
    k = await join(tracker, "a1")
    meta = await tracker.put_metainfo("a1", k, D, 100, segment(0, 0, 60))
    assert not meta.complete
    with pytest.raises(InvalidRequest):
        await tracker.put_metainfo("a1", k, D, 100, segment(1, 60, 50))  # past the end
    with pytest.raises(InvalidRequest):
        await tracker.put_metainfo("a1", k, D, 100, segment(1, 60, 40, b"x" * (1 << 20)))
    # A conflicting publish (overlap, other total size) replaces what was there.
    meta = await tracker.put_metainfo("a1", k, D, 100, segment(1, 50, 50))  # overlaps segment 0
    assert [s.index for s in meta.segments] == [1]
    meta = await tracker.put_metainfo("a1", k, D, 200, segment(1, 60, 40))  # other total size
    assert meta.total_size == 200 and [s.index for s in meta.segments] == [1]
    meta = await tracker.put_metainfo("a1", k, D, 100, segment(0, 0, 60))
    meta = await tracker.put_metainfo("a1", k, D, 100, segment(1, 60, 40))
    assert meta.complete and [s.index for s in meta.segments] == [0, 1]
    k2 = await join(tracker, "a2")
    assert (await tracker.lookup("a2", k2, D)).metainfo == meta


async def test_preheat_assignment_and_status(tracker: Tracker, clock: ManualClock) -> None:
    kp = await join(tracker, "peer1", region="eu")
    job = await tracker.create_preheat("127.0.0.1:5000/app:v1", "seeds", region="eu")
    # No seed in scope: every agent in scope gets the job.
    assert [j.id for j in await tracker.agent_tasks("peer1", kp)] == [job]
    ks = await join(tracker, "seed1", region="eu", role="seed")
    ku = await join(tracker, "seed-us", region="us", role="seed")
    clock.advance(6)  # past the seed cache
    for aid, k, kw in (
        ("peer1", kp, {"region": "eu"}),
        ("seed1", ks, {"region": "eu", "role": "seed"}),
    ):
        await tracker.heartbeat(agent(aid, **kw), k)  # type: ignore[arg-type]
    await tracker.heartbeat(agent("seed-us", region="us", role="seed"), ku)
    assert await tracker.agent_tasks("peer1", kp) == []
    assert [j.id for j in await tracker.agent_tasks("seed1", ks)] == [job]
    assert await tracker.agent_tasks("seed-us", ku) == []
    pending = await tracker.preheat_status(job)
    assert pending["state"] == "pending"
    assert pending["reason"].startswith("waiting for 1 agent(s) in scope to pick it up")

    # Reported in manifest order (not the digests' order), the config blob apart.
    d2, cfg = digest_of("l2"), digest_of("config")
    first = [LayerProgress(cfg, 5, 5, "config", "upstream"), LayerProgress(d2, 10, 0)]
    await tracker.report_preheat(
        "seed1", ks, job, [*first, LayerProgress(D, 100, 50, source="peer")], "running"
    )
    status = await tracker.preheat_status(job)
    assert status["state"] == "running" and status["reason"] == ""
    assert status["layers"] == [
        {"digest": d2, "kind": "layer", "size": 10, "done_bytes": 0, "agents_done": 0,
         "sources": {}},
        {"digest": D, "kind": "layer", "size": 100, "done_bytes": 50, "agents_done": 0,
         "sources": {"peer": 1}},
    ]  # fmt: skip
    assert status["config"]["digest"] == cfg and status["config"]["agents_done"] == 1
    done = [
        LayerProgress(cfg, 5, 5, "config", "upstream"),
        LayerProgress(d2, 10, 10, source="upstream"),
        LayerProgress(D, 100, 100, source="peer"),
    ]
    await tracker.report_preheat("seed1", ks, job, done, "done")
    status = await tracker.preheat_status(job)
    assert status["state"] == "done" and [a["agent_id"] for a in status["agents"]] == ["seed1"]
    assert all(x["agents_done"] == 1 for x in status["layers"])
    # The summary says where the bytes came from and which agents finished.
    assert status["bytes_by_source"] == {"upstream": 15, "peer": 100}
    assert status["agents_done"] == ["seed1"]
    assert await tracker.agent_tasks("seed1", ks) == []
    with pytest.raises(InvalidRequest):
        await tracker.create_preheat("bad image name", "seeds")


async def test_fleet_view(tracker: Tracker) -> None:
    k1 = await join(
        tracker, "a1", zone="z", region="r", counters=Counters(upstream_bytes=100, peer_bytes=300)
    )
    await join(tracker, "a2", zone="z", region="r", role="seed")
    await tracker.announce("a1", k1, D)
    await tracker.lookup("a1", k1, D)
    fleet = await tracker.fleet()
    assert [a["agent_id"] for a in fleet["agents"]] == ["a1", "a2"]
    assert fleet["zones"] == [{"region": "r", "zone": "z", "agents": 2}]
    assert fleet["hottest"] == [
        # No preheat job named its image, and the holding stated no size.
        {"digest": D, "image": None, "size": 0, "lookups": 1, "holders": 1, "fetchers": 0}
    ]
    assert fleet["savings_ratio"] == 0.75


async def test_embedded_local_client() -> None:
    clock = ManualClock()
    tracker = embedded_tracker(clock=clock)
    c1 = local_client(tracker, "a1")
    c2 = local_client(tracker, "a2")
    await c1.heartbeat(agent("a1"))
    await c2.heartbeat(agent("a2"))
    assert (await c1.lookup(D)).action == "fetch"
    await c1.announce(D, "holding", progress_bytes=10, total_bytes=10)
    assert [p.agent_id for p in (await c2.lookup(D)).peers] == ["a1"]
    assert await c2.get_metainfo(D) is None
    with pytest.raises(InvalidRequest):
        await c1.heartbeat(agent("a2"))


async def test_reporting_the_lease_holder_hands_its_lease_on(tracker: Tracker) -> None:
    """Followers of a holder that stopped delivering: the first to report it gets the lease,
    the others are told to wait for that one (not to go upstream each)."""
    keys = {a: await join(tracker, a, region="r1") for a in ("holder", "f1", "f2")}
    assert (await tracker.lookup("holder", keys["holder"], D)).action == "fetch"
    await tracker.announce("holder", keys["holder"], D, "fetching", progress_bytes=1, total_bytes=9)
    assert (await tracker.lookup("f1", keys["f1"], D)).action == "wait"
    await tracker.report_bad_peer("f1", keys["f1"], "holder", D)
    assert (await tracker.lookup("f1", keys["f1"], D)).action == "fetch"
    reply = await tracker.lookup("f2", keys["f2"], D)
    assert reply.action == "wait" and reply.lease_holder == "f1"
    # The reported holder is not handed out to its reporter; to everyone once a second agent
    # reports it too (one token holder alone must not silence another agent).
    await tracker.announce("f1", keys["f1"], D, "fetching", progress_bytes=1, total_bytes=9)
    assert "holder" not in {p.agent_id for p in (await tracker.lookup("f1", keys["f1"], D)).peers}
    await tracker.report_bad_peer("f2", keys["f2"], "holder", D)
    k3 = await join(tracker, "f3", region="r1")
    assert "holder" not in {p.agent_id for p in (await tracker.lookup("f3", k3, D)).peers}


async def test_preheat_with_no_agent_in_scope_says_why_then_ends(
    tracker: Tracker, clock: ManualClock
) -> None:
    await join(tracker, "peer1", region="eu")
    job = await tracker.create_preheat("127.0.0.1:5000/app:v1", "seeds", region="us-west")
    status = await tracker.preheat_status(job)
    assert status["state"] == "pending"
    assert status["reason"] == (
        "no live agent in scope (seeds, or every agent when no seed is live, in region us-west) yet"
    )
    clock.advance(tracker.no_agent_grace + 1)
    status = await tracker.preheat_status(job)
    assert status["state"] == "no_agents"
    assert status["reason"].startswith("no live agent in scope (") and "within" in status["reason"]


async def test_heartbeat_interval_follows_the_fleet_size(
    store: TrackerStore, clock: ManualClock
) -> None:
    tracker = Tracker(store, clock, TrackerConfig(agent_ttl=30, heartbeat_rate=2))
    first = await tracker.heartbeat(agent("a0"), new_key())
    assert (first.heartbeat_interval, first.agent_ttl) == (10.0, 30.0)
    for i in range(1, 50):
        await join(tracker, f"a{i}")
    clock.advance(FLEET_COUNT_SECONDS)  # counted at most that often
    key = await join(tracker, "late")
    reply = await tracker.heartbeat(agent("late"), key)
    assert (reply.heartbeat_interval, reply.agent_ttl) == (25.0, 75.0)
    # Its record lives three of those intervals, so a slower-beating fleet stays registered.
    clock.advance(70)
    assert (await tracker.lookup("late", key, D)).action == "fetch"
    fixed = Tracker(store, clock, TrackerConfig(agent_ttl=30, heartbeat_rate=0))
    assert (await fixed.heartbeat(agent("late"), key)).heartbeat_interval == 10.0


async def test_an_upstream_fetchers_heartbeat_keeps_or_claims_the_lease(tracker: Tracker) -> None:
    keys = {a: await join(tracker, a, region="r1") for a in ("root", "f1", "f2")}
    assert (await tracker.lookup("root", keys["root"], D)).action == "fetch"
    # The lease is lost (Redis came back empty): the root's next heartbeat, announcing its
    # upstream fetch, claims it again, so the region's next asker follows the root instead
    # of fetching the layer from the upstream a second time.
    await tracker.store.release_leases("r1", [D], "root")
    upstream = Announcement(D, "fetching", 5, 10, upstream=True)
    await tracker.announce_many("root", keys["root"], [upstream])
    reply = await tracker.lookup("f1", keys["f1"], D)
    assert (reply.action, reply.lease_holder) == ("wait", "root")
    # Another agent fetching from the upstream (it gave up on peers) does not take a live lease.
    await tracker.announce_many("f2", keys["f2"], [upstream])
    assert (await tracker.lookup("f1", keys["f1"], D)).lease_holder == "root"
    # Only a digest being fetched can say so.
    with pytest.raises(InvalidRequest):
        Announcement.from_json({"digest": D, "state": "holding", "upstream": True})


async def test_one_reporter_moves_a_lease_once(tracker: Tracker) -> None:
    keys = {a: await join(tracker, a, region="r1") for a in ("root", "f1", "f2", "rogue")}
    assert (await tracker.lookup("root", keys["root"], D)).action == "fetch"
    # Its first report on the layer voids the lease, as a follower of a stalled root needs.
    await tracker.report_bad_peer("rogue", keys["rogue"], "root", D)
    assert (await tracker.lookup("f1", keys["f1"], D)).action == "fetch"
    # Its next report does not: the lease stays with f1 ...
    await tracker.report_bad_peer("rogue", keys["rogue"], "f1", D)
    reply = await tracker.lookup("f2", keys["f2"], D)
    assert (reply.action, reply.lease_holder) == ("wait", "f1")
    # ... until a second agent reports f1 too.
    await tracker.report_bad_peer("f2", keys["f2"], "f1", D)
    assert (await tracker.lookup("f2", keys["f2"], D)).action == "fetch"
