"""What one fleet-token holder can make the tracker keep is bounded, on both stores. Each
test drives one abuse the review measured and asserts a
bound on the store's own count of entries (``usage``), not on process memory."""

from __future__ import annotations

import secrets

import pytest
import redis

from core.trackererrors import InvalidRequest, NotFound
from core.wire import Counters
from tests.tracker.helpers import agent, digest_of, segment
from tracker import service
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.service import Tracker
from tracker.store import RedisStore, TrackerStore
from tracker.store.base import MAX_HOT

TTL = 30.0


@pytest.fixture
def tracker(store: TrackerStore, clock: ManualClock) -> Tracker:
    return Tracker(store, clock, TrackerConfig(agent_ttl=TTL, lease_ttl=TTL))


async def join(tracker: Tracker, agent_id: str, **kw: object) -> str:
    key = secrets.token_urlsafe(24)
    await tracker.heartbeat(agent(agent_id, **kw), key)  # type: ignore[arg-type]
    return key


async def test_metainfo_capped_per_digest_and_expires(
    tracker: Tracker, store: TrackerStore, clock: ManualClock
) -> None:
    k = await join(tracker, "rogue")
    big = 512 << 10
    size = 100 * big
    accepted = 0
    with pytest.raises(InvalidRequest):
        for i in range(60):
            payload = bytes([i]) * big
            await tracker.put_metainfo(
                "rogue", k, digest_of("L"), size, segment(i, i * big, big, payload)
            )
            accepted += 1
    assert accepted * big <= service.MAX_METAINFO_BYTES
    meta = await tracker.get_metainfo(digest_of("L"))
    assert sum(len(s.torrent) for s in meta.segments) <= service.MAX_METAINFO_BYTES
    # Metainfo nobody republishes goes away.
    clock.advance(service.METAINFO_TTL + 1)
    await tracker.heartbeat(agent("rogue"), k)
    await tracker.prune()
    assert (await store.usage())["metainfo"] == 0
    with pytest.raises(NotFound):
        await tracker.get_metainfo(digest_of("L"))


async def test_first_writer_does_not_lock_a_digest(tracker: Tracker) -> None:
    """A rogue publishes made-up metainfo first; the honest publisher's still lands."""
    kr, kh = await join(tracker, "rogue"), await join(tracker, "honest")
    d = digest_of("contested")
    await tracker.put_metainfo("rogue", kr, d, 999_999, segment(0, 0, 999_999, b"lie"))
    meta = await tracker.put_metainfo("honest", kh, d, 100, segment(0, 0, 100, b"truth"))
    assert meta.total_size == 100 and meta.segments == (segment(0, 0, 100, b"truth"),)
    meta = await tracker.put_metainfo("honest", kh, d, 100, segment(0, 0, 100, b"truth"))
    assert meta.total_size == 100


async def test_lookups_of_many_digests_leave_bounded_state(
    tracker: Tracker, store: TrackerStore, clock: ManualClock, request: pytest.FixtureRequest
) -> None:
    k = await join(tracker, "rogue", region="r")
    for i in range(MAX_HOT + 2000):
        await tracker.lookup("rogue", k, digest_of(f"d{i}"))
    clock.advance(TTL + 1)
    await tracker.heartbeat(agent("rogue", region="r"), k)
    await tracker.prune()
    usage = await store.usage()
    assert usage["lookups"] <= MAX_HOT
    if "leases" in usage:
        assert usage["leases"] == 0
    if isinstance(store, RedisStore):
        # Each lease key carries a Redis TTL, so none outlives its lease by more than a minute.
        r = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            keys = list(r.scan_iter("layerswarm:lease:*", count=1000))
            assert keys and all(0 < r.pttl(key) <= (TTL + 60) * 1000 for key in keys[:200])
        finally:
            r.close()


async def test_bad_peer_reports_bounded_and_scoped(
    tracker: Tracker, store: TrackerStore, clock: ManualClock
) -> None:
    kr = await join(tracker, "rogue")
    kv = await join(tracker, "victim")
    kh = await join(tracker, "honest")
    d = digest_of("layer")
    await tracker.announce("victim", kv, d)
    for i in range(2000):
        with pytest.raises(NotFound):
            await tracker.report_bad_peer("rogue", kr, f"ghost-{i}", digest_of(f"x{i}"))
    usage = await store.usage()
    assert usage["bad_reports"] == 0 and usage["bad_counts"] == 0
    # Reports on a real agent, for many layers: all expire (more than one prune batch).
    for i in range(1500):
        await tracker.report_bad_peer("rogue", kr, "victim", digest_of(f"y{i}"))
    # One report silences the victim for the reporter only, and only for a while.
    await tracker.report_bad_peer("rogue", kr, "victim", d)
    assert [p.agent_id for p in (await tracker.lookup("honest", kh, d)).peers] == ["victim"]
    assert [p.agent_id for p in (await tracker.lookup("rogue", kr, d)).peers] == []
    clock.advance(service.BAD_PEER_TTL + 1)
    for a, key in (("rogue", kr), ("victim", kv), ("honest", kh)):
        await tracker.heartbeat(agent(a), key)
    await tracker.prune()
    assert [p.agent_id for p in (await tracker.lookup("rogue", kr, d)).peers] == ["victim"]
    assert (await store.usage())["bad_reports"] == 0


async def test_ghost_agents_leave_bounded_state(
    tracker: Tracker, store: TrackerStore, clock: ManualClock
) -> None:
    keys = [secrets.token_urlsafe(24) for _ in range(2000)]
    for i, key in enumerate(keys):
        ghost = agent(f"ghost-{i}", region="eu", counters=Counters(upstream_bytes=1))
        await tracker.heartbeat(ghost, key)
    clock.advance(TTL + 1)
    await tracker.prune()
    usage = await store.usage()
    assert usage["agents"] == 0 and usage["counters"] == 0
    # The fleet's totals never go backwards: the ghosts' bytes are kept, as one sum per region.
    assert (await store.counter_totals()).upstream_bytes == 2000
    assert (await store.region_totals())["eu"].upstream_bytes == 2000
    # One that comes back under its key (agents keep key and counts across restarts) counts once.
    back = agent("ghost-0", region="eu", counters=Counters(upstream_bytes=5))
    await tracker.heartbeat(back, keys[0])
    assert (await store.counter_totals()).upstream_bytes == 2004


async def test_holdings_per_agent_and_preheat_jobs_capped(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real cap (100 000 holdings) would take long to fill; the rule is the same.
    monkeypatch.setattr(service, "MAX_HOLDINGS_PER_AGENT", 50)
    k = await join(tracker, "rogue")
    for i in range(50):
        await tracker.announce("rogue", k, digest_of(f"h{i}"))
    with pytest.raises(InvalidRequest):
        await tracker.announce("rogue", k, digest_of("one too many"))
    await tracker.create_preheats([f"reg/img:{i}" for i in range(service.MAX_PREHEAT_JOBS)])
    with pytest.raises(InvalidRequest):
        await tracker.create_preheat("reg/img:more")
