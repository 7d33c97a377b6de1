"""The relay's contract, with in-process agents on loopback (see conftest for the parts)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from agent.fetch import FetchJob
from agent.relay.server import AGENT_HEADER, LINEAGE_HEADER
from core.wire import AgentInfo
from tests.relay.conftest import (
    UPSTREAM,
    Node,
    NodeFactory,
    ScriptedUpstream,
    SilentPeer,
    announce_held,
    make_blob,
)
from tracker.service import Tracker

MiB = 1 << 20


def uploaded(node: Node) -> float:
    return node.metrics.registry.get_sample_value("layerswarm_peer_sent_bytes_total") or 0.0


def received(node: Node) -> float:
    return node.metrics.registry.get_sample_value("layerswarm_peer_received_bytes_total") or 0.0


async def test_followers_of_a_holder_form_chains(make_node: NodeFactory) -> None:
    """Four followers of one holder all get the blob; with one child per parent the holder
    sends it exactly once, and every follower but the last passes it on once."""
    data, digest = make_blob(3 * MiB)
    up = ScriptedUpstream({digest: data})
    # Links of 20 MB/s: slow enough that the followers overlap, as on a real network.
    rate = 20_000_000
    holder = await make_node("holder", up, upload_rate=rate)
    holder.seed(digest, data)
    await announce_held(holder, digest, len(data))
    followers = [await make_node(f"f{i}", up, upload_rate=rate) for i in range(4)]
    got = await asyncio.gather(*(f.pull(digest, len(data)) for f in followers))
    assert all(g == data for g in got)
    assert up.served == [], "no byte may come from the upstream when a holder has it"
    # Each follower received the blob exactly once, and no parent ever split its upload.
    assert sum(received(f) for f in followers) == 4 * len(data)
    # Uploads beyond that are the first chunks of parents that lost the race to admit a
    # follower who asked several at once: a few chunks at most.
    sent = sum(uploaded(n) for n in [holder, *followers])
    assert 4 * len(data) <= sent <= 4 * len(data) + 4 * (256 << 10)
    assert max(n.relay.state.peak_children for n in [holder, *followers]) == 1
    # Followers fed each other: the holder did not serve everyone itself.
    assert uploaded(holder) <= 2 * len(data)
    assert sum(uploaded(f) for f in followers) >= 2 * len(data)


async def test_cold_blob_is_fetched_upstream_once_and_streamed_on(make_node: NodeFactory) -> None:
    """Nobody holds it: one agent gets the lease and fetches from the upstream; the others
    stream it from that agent (or each other) as it arrives."""
    data, digest = make_blob(4 * MiB)
    up = ScriptedUpstream({digest: data}, rate=8e6)
    nodes = [await make_node(f"n{i}", up) for i in range(3)]
    got = await asyncio.gather(*(n.pull(digest, len(data)) for n in nodes))
    assert all(g == data for g in got)
    assert sum(b for _, _, b in up.served) == len(data), up.served
    # Tracker requests per follower for the whole blob: announce, lookup, holding.
    for n in nodes:
        assert len(n.coordinator.calls) <= 5, n.coordinator.calls


async def test_lease_holder_stalls_and_a_follower_takes_over(make_node: NodeFactory) -> None:
    """The agent fetching upstream stops mid-blob: its child reports it, gets the lease and
    continues from the upstream at its own offset; the region fetches the blob about once."""
    data, digest = make_blob(4 * MiB)
    up = ScriptedUpstream({digest: data}, rate=16e6, stall_at=MiB, stall_for={"root"})
    root = await make_node("root", up, peer_wait=1.0)
    started = asyncio.create_task(root.pull(digest, len(data)))
    while not any(d.written for d in root.fetcher.downloads()):
        await asyncio.sleep(0.01)
    others = [await make_node(f"f{i}", up, peer_wait=1.0) for i in range(2)]
    got = await asyncio.gather(*(n.pull(digest, len(data)) for n in others))
    assert all(g == data for g in got)
    # The root is still stalled (its fetch never ends, so it is not in ``served``): the
    # region fetched its first MiB and then the rest once, from where the root stopped.
    assert all(agent != "root" for agent, _, _ in up.served), up.served
    assert len(up.served) == 1, up.served
    _, offset, count = up.served[0]
    assert MiB - (64 << 10) <= offset <= MiB and offset + count == len(data), up.served
    assert sum("report" in c for n in others for c in n.coordinator.calls) >= 1
    started.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await started


async def test_corrupt_parent_blob_is_fetched_again_from_upstream(
    make_node: NodeFactory, tracker: Tracker
) -> None:
    """A parent that streams a wrong blob of the right length: nothing wrong is cached, the
    blob comes again from the upstream, and the parent is reported."""
    data, digest = make_blob(2 * MiB)
    up = ScriptedUpstream({digest: data})
    now = [1000.0]
    liar = await make_node("liar", up)
    liar.seed(digest, data)
    # Damage the liar's cached copy behind its back (its disk went bad).
    blob = liar.store.get(digest)
    assert blob is not None
    blob.path.write_bytes(b"\x01" * len(data))
    await announce_held(liar, digest, len(data))
    victim = await make_node("victim", up, clock=lambda: now[0])
    assert await victim.pull(digest, len(data)) == data
    assert received(victim) == len(data), "the liar was never used: the test proved nothing"
    assert sum(b for _, _, b in up.served) == len(data)
    assert "report" in victim.coordinator.calls
    # The victim now holds the right bytes and the liar is no longer handed out to it.
    view = await tracker.store.peer_view(str(digest), count_lookup=False, asker="victim")
    assert "liar" in view.bad_peers
    # For a while (on the agent's clock) that blob comes from the upstream without asking
    # the fleet; then peers are asked again.
    lookups = victim.coordinator.calls.count("lookup")
    victim.store.remove(digest)
    assert await victim.pull(digest, len(data)) == data
    assert victim.coordinator.calls.count("lookup") == lookups
    now[0] += victim.relay.source().distrust_seconds + 1
    victim.store.remove(digest)
    assert await victim.pull(digest, len(data)) == data
    assert victim.coordinator.calls.count("lookup") == lookups + 1


async def test_black_holed_peers_cost_one_header_timeout(
    make_node: NodeFactory, tracker: Tracker
) -> None:
    """Peers that accept and say nothing: the agent asks them together, gives up after one
    header timeout and goes to the upstream."""
    data, digest = make_blob(MiB)
    up = ScriptedUpstream({digest: data})
    silent = [SilentPeer() for _ in range(3)]
    for i, s in enumerate(silent):
        await s.start()
        key = f"k{i}" * 8
        await tracker.heartbeat(AgentInfo(f"bh{i}", "127.0.0.1", s.port, region="r1"), key)
        await tracker.announce(f"bh{i}", key, str(digest), "holding", progress_bytes=len(data))
    try:
        node = await make_node("n", up, peer_wait=1.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await node.pull(digest, len(data)) == data
        took = loop.time() - t0
        assert all(s.connections >= 1 for s in silent), "the black holes were never asked"
        # Asked at once, not one after another (3 x 1.5 s): bounded by the header timeout
        # plus a few lookups, with room for a slow machine.
        assert took < 6.0, took
        assert sum(b for _, _, b in up.served) == len(data)
        # The next blob they claim is not asked of them again: they are remembered as dead.
        data2, digest2 = make_blob(MiB)
        up.blobs[digest2] = data2
        for i in range(3):
            await tracker.announce(
                f"bh{i}", f"k{i}" * 8, str(digest2), "holding", progress_bytes=MiB
            )
        asked = [s.connections for s in silent]
        assert await node.pull(digest2, len(data2)) == data2
        assert [s.connections for s in silent] == asked
    finally:
        for s in silent:
            await s.close()


async def test_parent_refuses_its_ancestor_and_a_second_child(make_node: NodeFactory) -> None:
    """The admission rule that keeps chains acyclic and every link at full speed."""
    data, digest = make_blob(4 * MiB)
    up = ScriptedUpstream({digest: data}, rate=2e6)
    root = await make_node("root", up)
    tasks = [asyncio.create_task(root.pull(digest, len(data)))]
    while not any(d.written for d in root.fetcher.downloads()):
        await asyncio.sleep(0.01)
    follower = await make_node("f", up)
    tasks.append(asyncio.create_task(follower.pull(digest, len(data))))
    while digest not in follower.relay.state.feeds:
        await asyncio.sleep(0.01)
    root_url = f"http://127.0.0.1:{root.relay.peer_port}/v1/blobs/{digest}"
    url = f"http://127.0.0.1:{follower.relay.peer_port}/v1/blobs/{digest}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(root_url, headers={AGENT_HEADER: "z"}) as busy:
                assert busy.status == 503  # the root's one child slot is the follower's
            async with http.get(url, headers={AGENT_HEADER: "root"}) as ancestor:
                assert ancestor.status == 409  # the root would wait on its own descendant
            async with http.get(url, headers={AGENT_HEADER: "z"}) as child:
                assert child.status == 200
                assert child.headers[LINEAGE_HEADER] == "root,f"
                async with http.get(url, headers={AGENT_HEADER: "y"}) as second:
                    assert second.status == 503
            async with http.get(url, headers={AGENT_HEADER: "y", "Range": "bytes=x"}) as bad:
                assert bad.status == 416
            bad_digest = url.replace("sha256:", "sha256:0")
            async with http.get(bad_digest, headers={AGENT_HEADER: "y"}) as r:
                assert r.status == 400
            async with http.get(url, headers={AGENT_HEADER: "no spaces"}) as r:
                assert r.status == 400
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@pytest.mark.parametrize("offset", [0, 12345])
async def test_resume_from_an_offset(make_node: NodeFactory, offset: int) -> None:
    data, digest = make_blob(MiB)
    up = ScriptedUpstream({digest: data})
    holder = await make_node("holder", up)
    holder.seed(digest, data)
    url = f"http://127.0.0.1:{holder.relay.peer_port}/v1/blobs/{digest}"
    headers = {AGENT_HEADER: "x"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == (206 if offset else 200)
        assert await resp.read() == data[offset:]


async def test_small_blobs_go_to_every_asker_at_once(make_node: NodeFactory) -> None:
    """A config or a tiny layer: no chain is worth its round trips."""
    data, digest = make_blob(MiB)
    up = ScriptedUpstream({digest: data})
    # Paced so the first child is still being served when the second asks.
    holder = await make_node("holder", up, upload_rate=1_000_000)
    holder.seed(digest, data)
    url = f"http://127.0.0.1:{holder.relay.peer_port}/v1/blobs/{digest}"
    async with aiohttp.ClientSession() as http:
        first = await http.get(url, headers={AGENT_HEADER: "a"})
        second = await http.get(url, headers={AGENT_HEADER: "b"})
        try:
            assert (first.status, second.status) == (200, 200)
            assert holder.relay.state.peak_children == 2
            assert await first.read() == data and await second.read() == data
        finally:
            first.close()
            second.close()


@pytest.mark.parametrize(("fanout", "admitted"), [("upload", 2), ("depth", 1)])
async def test_children_share_the_upload_of_a_parent_downloading_two_layers(
    make_node: NodeFactory, fanout: str, admitted: int
) -> None:
    """A node fetching two layers receives each at half its link, so its upload feeds two
    streams at that rate: two children of one layer ("upload" fan-out), never a third. The
    "depth" rule gives a parent this shallow one child per layer."""
    a, da = make_blob(4 * MiB)
    b, db = make_blob(4 * MiB)
    # Slow enough that both downloads are still in flight while the children ask.
    up = ScriptedUpstream({da: a, db: b}, rate=2e6)
    parent = await make_node("parent", up, fanout=fanout)
    pulls = [asyncio.ensure_future(parent.pull(d, len(x))) for d, x in ((da, a), (db, b))]
    url = f"http://127.0.0.1:{parent.relay.peer_port}/v1/blobs/{da}"
    async with aiohttp.ClientSession() as http:
        answers = [await http.get(url, headers={AGENT_HEADER: f"c{i}"}) for i in range(3)]
        try:
            assert [r.status for r in answers] == [200] * admitted + [503] * (3 - admitted)
            assert parent.relay.state.child_count(da) == admitted
            for r in answers[:admitted]:
                assert await r.read() == a
        finally:
            for r in answers:
                r.close()
    assert [await p for p in pulls] == [a, b]


async def test_a_parent_waiting_for_its_upstream_is_not_taken_for_dead(
    make_node: NodeFactory,
) -> None:
    """The lease holder's upstream takes a while to answer: its followers wait for it
    (told "no source yet") instead of reporting it and fetching the blob themselves."""
    data, digest = make_blob(4 * MiB)
    up = ScriptedUpstream({digest: data}, start_delay=2.5)
    root = await make_node("root", up)
    first = asyncio.create_task(root.pull(digest, len(data)))
    while not root.fetcher.downloads():
        await asyncio.sleep(0.01)
    follower = await make_node("f", up, peer_wait=10.0)
    assert await follower.pull(digest, len(data)) == data
    assert await first == data
    assert [agent for agent, _, _ in up.served] == ["root"], up.served
    assert "report" not in follower.coordinator.calls


async def test_a_partial_already_whole_when_peers_hold_the_blob(make_node: NodeFactory) -> None:
    """An agent stopped between its last write and the commit left the whole blob in
    partial/; after its restart a client asks for it while another agent holds it (so the
    tracker says "follow", not "fetch"). The download has nothing left to stream: it must
    still tell its waiters it started. Before, it verified and cached the blob without ever
    resolving ``started``, so the client that asked (the registry handler awaits ``started``)
    got no byte until its read timeout: the soak's unexplained 30 s stall."""
    data, digest = make_blob(MiB)
    up = ScriptedUpstream({digest: data})
    holder = await make_node("holder", up)
    holder.seed(digest, data)
    await announce_held(holder, digest, len(data))
    restarted = await make_node("restarted", up)
    restarted.store.partial_path(digest).write_bytes(data)
    dl, created = restarted.fetcher.start(
        FetchJob(UPSTREAM, "team/app", digest, None, size=len(data))
    )
    assert created
    while not dl.finished:
        await dl.wait_changed()
    assert dl.error is None
    assert dl.started.done() and dl.started.exception() is None
    assert restarted.store.path_for(digest).read_bytes() == data
    # Nothing was streamed again: the partial's bytes were the blob.
    assert up.served == [] and received(restarted) == 0


def _attachments(caplog: pytest.LogCaptureFixture, digest: object) -> list[dict[str, str]]:
    """The "following parent=..." lines of the run, as fields."""
    out = []
    for rec in caplog.records:
        msg = rec.getMessage()
        if msg.startswith("following parent=") and f"digest={digest}" in msg:
            out.append(dict(kv.split("=", 1) for kv in msg.split()[1:]))
    return out


async def test_tracker_chosen_parents_line_up_without_walking(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Six followers ask at once: the tracker hands each a free slot of the blob's tree, so
    they form one chain below the holder, each asking exactly the one parent it was given."""
    caplog.set_level("INFO", logger="agent.relay.source")
    data, digest = make_blob(4 * MiB)
    up = ScriptedUpstream({digest: data})
    rate = 8_000_000
    holder = await make_node("holder", up, upload_rate=rate)
    holder.seed(digest, data)
    await announce_held(holder, digest, len(data))
    followers = [
        await make_node(f"f{i}", up, upload_rate=rate, parent_choice="tracker") for i in range(6)
    ]
    got = await asyncio.gather(*(f.pull(digest, len(data)) for f in followers))
    assert all(g == data for g in got)
    assert up.served == []
    seen = _attachments(caplog, digest)
    assert len(seen) == 6, seen
    assert all(a["chosen_by"] == "tracker" and a["asked"] == "1" for a in seen), seen
    # One chain: every depth from 1 to 6 once, every parent feeding one child.
    assert sorted(int(a["depth"]) for a in seen) == list(range(1, 7)), seen
    assert len({a["parent"] for a in seen}) == 6
    assert sum(received(f) for f in followers) == 6 * len(data)


async def test_dead_parent_chosen_by_the_tracker_is_replaced(
    make_node: NodeFactory, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    """The tracker's choice is an agent that took the holder's slot and then died without a
    word (its port closed): the follower reports it, the tracker takes it out of the tree,
    and the next lookup hands the follower the holder's freed slot."""
    caplog.set_level("INFO", logger="agent.relay.source")
    data, digest = make_blob(3 * MiB)
    up = ScriptedUpstream({digest: data})
    holder = await make_node("holder", up)
    holder.seed(digest, data)
    await announce_held(holder, digest, len(data))
    ghost = await make_node("ghost", up)
    # The ghost announces and is placed below the holder, as a follower would be ...
    await ghost.coordinator.announce(str(digest), "fetching", 0, len(data))
    placed = await ghost.coordinator.lookup(str(digest), assign=True)
    assert placed.parent == "holder"
    # ... then its peer port goes away (a real closed port: connections are refused).
    await ghost.relay.server.close()
    follower = await make_node("f", up, parent_choice="tracker")
    assert await follower.pull(digest, len(data)) == data
    assert up.served == []
    assert follower.coordinator.calls.count("report") == 1, follower.coordinator.calls
    seen = _attachments(caplog, digest)
    assert [(a["parent"], a["chosen_by"]) for a in seen] == [("holder", "tracker")], seen
