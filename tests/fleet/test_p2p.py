"""Agents on separate hosts (network namespaces) share layers peer-to-peer.

The upstream registry's access log is the judge: how many times each layer really crossed
from the upstream. Clients are real skopeo processes inside the agents' namespaces.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed import ALICE, HTPASSWD_USERS, PUSHER
from testbed.clients import compare_dir_with_image
from testbed.fleet import Fleet
from testbed.images import Image
from testbed.procs import Proc, wait_for_port
from tests.fleet.conftest import FleetFactory

pytestmark = [pytest.mark.integration, pytest.mark.netns]

MiB = 1 << 20
SEGMENT = ("--segment-size", "2M")
TORRENT = ("--peer-transport", "torrent")


def pull_all(fleet: Fleet, indexes: list[int], image: Image) -> list[Path]:
    with concurrent.futures.ThreadPoolExecutor(len(indexes)) as pool:
        futures = [pool.submit(fleet.pull, i, image) for i in indexes]
        return [f.result(timeout=280) for f in futures]


def wait_for_tracker_state(
    fleet: Fleet, index: int, ok: Callable[[dict[str, Any]], bool], timeout: float = 40.0
) -> dict[str, Any]:
    """Poll agent ``index``'s /healthz until its tracker link satisfies ``ok``."""
    deadline = time.monotonic() + timeout
    while True:
        state = fleet.agent_tracker_state(index)
        if ok(state):
            return state
        assert time.monotonic() < deadline, (state, logs(fleet))
        time.sleep(0.2)


def registrations(fleet: Fleet, index: int) -> int:
    """How often a tracker has taken agent ``index`` with all it holds (at least once)."""
    state = wait_for_tracker_state(fleet, index, lambda s: s["registrations"] >= 1)
    return int(state["registrations"])


def wait_until_reregistered(fleet: Fleet, index: int, before: int) -> None:
    """Until the tracker took agent ``index`` again, holdings included (its healthz says so
    only after the tracker accepted them)."""
    wait_for_tracker_state(
        fleet, index, lambda s: s["state"] == "ok" and s["registrations"] > before
    )


def logs(fleet: Fleet) -> str:
    out = [a.log() for a in fleet.agents.values()]
    if fleet.tracker is not None:
        out.append(fleet.tracker.log_tail(60))
    return "\n".join(out)


def test_one_region_fetches_each_layer_from_upstream_once(fleet: FleetFactory) -> None:
    f = fleet(3, upstream_rate="80mbit")
    image = f.push_image([6 * MiB, 3 * MiB])
    for i in (1, 2, 3):
        f.start_agent(i, extra=SEGMENT)
    dests = pull_all(f, [1, 2, 3], image)
    for d in dests:
        compare_dir_with_image(d, image)
    assert f.registry is not None
    for layer in image.layers:
        assert f.registry.blob_fetches(layer.digest) == 1, logs(f)
    peer_bytes = [f.metric(i, "layerswarm_peer_bytes_total") for i in (1, 2, 3)]
    # Two of the three agents got (most of) the layers from peers, not the upstream.
    assert sum(1 for b in peer_bytes if b >= 6 * MiB) >= 2, (peer_bytes, logs(f))


def test_second_region_fetches_once_more_and_restart_keeps_seeding(fleet: FleetFactory) -> None:
    f = fleet(3, upstream_rate="80mbit")
    image = f.push_image([4 * MiB])
    layer = image.layers[0].digest
    f.start_agent(1, region="east", extra=SEGMENT)
    f.start_agent(2, region="west", extra=SEGMENT)
    pull_all(f, [1, 2], image)
    assert f.registry is not None
    assert f.registry.blob_fetches(layer) == 2, logs(f)
    # Agent 1 restarts; agent 3 (east) still gets the layer from it, not the upstream.
    f.agents[1].stop()
    f.start_agent(1, region="east", extra=SEGMENT)
    f.start_agent(3, region="east", extra=SEGMENT)
    compare_dir_with_image(f.pull(3, image), image)
    assert f.registry.blob_fetches(layer) == 2, logs(f)
    assert f.metric(3, "layerswarm_peer_bytes_total") >= 4 * MiB


def test_pulls_succeed_with_the_tracker_down(fleet: FleetFactory) -> None:
    f = fleet(2)
    image = f.push_image([2 * MiB])
    for i in (1, 2):
        f.start_agent(i, extra=SEGMENT)
    assert f.tracker is not None
    f.tracker.stop()
    for d in pull_all(f, [1, 2], image):
        compare_dir_with_image(d, image)


def test_fetching_agent_killed_mid_layer(fleet: FleetFactory) -> None:
    """The agent fetching a layer from upstream dies after publishing its first segments;
    the agents following it still complete, with the right bytes."""
    f = fleet(3, upstream_rate="24mbit")
    image = f.push_image([12 * MiB])
    layer = image.layers[0].digest
    opts = (*SEGMENT, "--peer-wait", "3s")
    for i in (1, 2, 3):
        f.start_agent(i, extra=opts)
    first = concurrent.futures.ThreadPoolExecutor(1)
    try:
        first.submit(f.pull, 1, image, check=False)
        # Agent 1 holds the lease once its partial file grows: it is mid-layer.
        partial = f.agents[1].data_dir / "partial" / layer.replace(":", "-")
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size >= 2 * MiB):
            assert time.monotonic() < deadline, logs(f)
            time.sleep(0.1)
        others = concurrent.futures.ThreadPoolExecutor(2)
        futures = [others.submit(f.pull, i, image) for i in (2, 3)]
        # The kill must land while both followers stream the layer (from agent 1, which
        # holds the lease): their partial files have bytes.
        followers = [f.agents[i].data_dir / "partial" / layer.replace(":", "-") for i in (2, 3)]
        deadline = time.monotonic() + 60
        while not all(p.exists() and p.stat().st_size > 0 for p in followers):
            assert time.monotonic() < deadline, logs(f)
            time.sleep(0.05)
        agent1 = f.agents[1].proc
        assert agent1 is not None and agent1.pid is not None
        os.killpg(agent1.pid, signal.SIGKILL)  # a crash, not a shutdown
        for fut in futures:
            compare_dir_with_image(fut.result(timeout=240), image)
        others.shutdown()
    finally:
        first.shutdown(wait=True)
    for i in (2, 3):
        blobs = f.agents[i].data_dir / "blobs" / "sha256"
        assert (blobs / layer.split(":")[1]).read_bytes() == image.blob(layer)
    # One follower took over the dead agent's lease; the other followed it, so the region
    # still fetched the layer about once (the dead agent's partial fetch plus the rest).
    assert f.registry is not None
    assert f.registry.blob_fetches(layer) <= 2, logs(f)
    assert f.registry.blob_bytes_served(layer) < 1.6 * len(image.blob(layer)), logs(f)


def test_fleet_tls_swarm_excludes_outsiders(fleet: FleetFactory, tmp_path: Path) -> None:
    """With fleet TLS, members share layers over mutually authenticated TLS; an agent whose
    cert comes from another CA gets no bytes from the swarm (and still pulls, from upstream)."""
    f = fleet(3, upstream_rate="80mbit")
    image = f.push_image([4 * MiB])
    layer = image.layers[0].digest
    fleet_ca, other_ca = tmp_path / "fleet-ca", tmp_path / "other-ca"
    f.start_agent(1, extra=(*SEGMENT, *f.issue_certs(1, fleet_ca)))
    compare_dir_with_image(f.pull(1, image), image)
    f.start_agent(2, extra=(*SEGMENT, *f.issue_certs(2, fleet_ca)))
    compare_dir_with_image(f.pull(2, image), image)
    assert f.registry is not None
    assert f.registry.blob_fetches(layer) == 1, logs(f)
    assert f.metric(2, "layerswarm_peer_bytes_total") >= 4 * MiB
    outsider = (*SEGMENT, "--peer-wait", "3s", *f.issue_certs(3, other_ca))
    f.start_agent(3, extra=outsider)
    compare_dir_with_image(f.pull(3, image), image)
    assert f.metric(3, "layerswarm_peer_bytes_total") == 0
    assert f.registry.blob_fetches(layer) == 2


def test_private_layer_from_peers_only_for_allowed_clients(fleet: FleetFactory) -> None:
    """A layer a peer holds is served only after the upstream said yes to *this* client."""
    f = fleet(2)
    registry = f.start_registry(htpasswd=HTPASSWD_USERS)
    image = f.push_image([3 * MiB], repo="team/private", creds=PUSHER)
    layer = image.layers[0].digest
    for i in (1, 2):
        f.start_agent(i, extra=SEGMENT)
    compare_dir_with_image(f.pull(1, image, mirror_creds=ALICE), image)
    assert registry.blob_fetches(layer) == 1
    # On host 2 a client without credentials asks its agent for the layer agent 1 holds.
    host = f.topo.hosts[2]
    res = host.run(
        [
            sys.executable,
            "-c",
            "import sys,urllib.request,urllib.error\n"
            "try:\n urllib.request.urlopen(sys.argv[1], timeout=30); print(200)\n"
            "except urllib.error.HTTPError as e:\n print(e.code)",
            f"{f.agents[2].url}/v2/team/private/blobs/{layer}",
        ],
    )
    assert res.stdout.strip() == "401"
    assert f.metric(2, "layerswarm_peer_bytes_total") == 0
    # With alice's credentials the same request is served, from the peer.
    compare_dir_with_image(f.pull(2, image, mirror_creds=ALICE), image)
    assert registry.blob_fetches(layer) == 1, logs(f)
    assert f.metric(2, "layerswarm_peer_bytes_total") >= 3 * MiB


def test_corrupt_relay_parent_never_breaks_a_pull(fleet: FleetFactory) -> None:
    """A member that claims a layer and streams garbage of the right length: the pull still
    gets the right bytes (from the upstream, fetched again), the client never sees the bad
    ones, the bad parent is reported, and no bad byte reaches a cache."""
    f = fleet(3)
    image = f.push_image([6 * MiB])
    layer = image.layers[0].digest
    f.start_agent(1)
    compare_dir_with_image(f.pull(1, image), image)
    # The honest holder leaves: the only holder the tracker can hand out is the bad one.
    f.agents[1].stop()
    evil_host = f.topo.hosts[3]
    evil = evil_host.popen(
        [
            sys.executable,
            "-m",
            "tests.fleet.evil_relay",
            evil_host.ip,
            "6881",
            f.tracker_url,
            str(f.token_file),
            layer,
            str(len(image.blob(layer))),
        ],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert evil.stdout is not None
    assert evil.stdout.readline().strip() == b"ready"
    f.start_agent(2, extra=("--peer-wait", "5s"))
    compare_dir_with_image(f.pull(2, image), image)
    evil.send_signal(signal.SIGTERM)
    out, _ = evil.communicate(timeout=30)
    sent = int(out.decode().split("bytes_sent=")[1])
    assert sent >= len(image.blob(layer)), "the bad parent was never used: the test proved nothing"
    blob = f.agents[2].data_dir / "blobs" / "sha256" / layer.split(":")[1]
    assert blob.read_bytes() == image.blob(layer)
    assert f.metric(2, "layerswarm_verify_failures_total", 'source="peer"') >= 1, logs(f)
    assert f.tracker is not None
    assert "bad peer reported" in f.tracker.log_tail(200), logs(f)


def test_corrupt_peer_never_breaks_a_pull(fleet: FleetFactory) -> None:
    """Torrent transport: a member serving garbage for every segment: pulls still get the
    right bytes, the bad peer is banned and reported, and no bad byte reaches a cache."""
    f = fleet(3)
    image = f.push_image([6 * MiB])
    layer = image.layers[0].digest
    f.start_agent(1, extra=(*TORRENT, *SEGMENT))
    compare_dir_with_image(f.pull(1, image), image)
    meta = f.tracker_get(f"/v1/metainfo/{layer}")
    assert isinstance(meta, dict)
    # The honest seed leaves (its segment metainfo stays): the bad peer is then the only
    # holder, so the downloader asks it, whatever the timing.
    f.agents[1].stop()
    specs = [f"{s['info_hash']}:{-(-s['length'] // (256 << 10))}" for s in meta["segments"]]
    evil_host = f.topo.hosts[3]
    evil = evil_host.popen(
        [
            sys.executable,
            "-m",
            "tests.fleet.evil_peer",
            evil_host.ip,
            "6881",
            f.tracker_url,
            str(f.token_file),
            layer,
            *specs,
        ],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert evil.stdout is not None
    assert evil.stdout.readline().strip() == b"ready"
    f.start_agent(2, extra=(*TORRENT, *SEGMENT, "--peer-wait", "5s"))
    compare_dir_with_image(f.pull(2, image), image)
    evil.send_signal(signal.SIGTERM)
    out, _ = evil.communicate(timeout=30)
    sent = int(out.decode().split("blocks_sent=")[1])
    assert sent > 0, "the bad peer was never asked for data: the test proved nothing"
    blob = f.agents[2].data_dir / "blobs" / "sha256" / layer.split(":")[1]
    assert blob.read_bytes() == image.blob(layer)
    assert f.tracker is not None
    assert "bad peer reported" in f.tracker.log_tail(200), logs(f)


def test_after_a_tracker_restart_new_agents_still_use_peers(fleet: FleetFactory) -> None:
    """A tracker restart (memory store: everything forgotten): the holder re-registers and
    re-announces on its next heartbeat, and an agent started afterwards gets the layer from
    it, not from the upstream (agents started after a restart used to wait out --peer-wait on
    every blob and go upstream)."""
    f = fleet(2)
    assert f.tracker is not None and f.registry is not None
    f.tracker.stop()
    f.tracker = None
    # A short agent TTL makes heartbeats every second, so the test waits seconds, not tens.
    tracker = f.start_tracker("--agent-ttl", "3")
    image = f.push_image([4 * MiB])
    layer = image.layers[0].digest
    f.start_agent(1)
    compare_dir_with_image(f.pull(1, image), image)
    before = registrations(f, 1)
    tracker.stop()
    assert not tracker.running
    f.start_tracker()  # the same process again: same flags, nothing remembered
    wait_until_reregistered(f, 1, before)
    f.start_agent(2, extra=("--peer-wait", "30s"))
    compare_dir_with_image(f.pull(2, image), image)
    assert f.registry.blob_fetches(layer) == 1, logs(f)
    assert f.metric(2, "layerswarm_peer_bytes_total") >= 4 * MiB, logs(f)


def test_after_redis_restarts_empty_holders_serve_again(fleet: FleetFactory) -> None:
    """The tracker's Redis dies and comes back empty mid-fleet: agents re-register and
    re-announce what they hold within a heartbeat, and a newcomer gets the layer from them
    (with the relay there is no segment metainfo that would also need publishing again)."""
    f = fleet(2)
    assert f.tracker is not None and f.registry is not None
    host = f.upstream_host
    port = 6399
    redis = Proc(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(f.workdir)],
        f.workdir / "redis-logs", name="redis", netns=host.name,
    ).start()  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 20, netns=host.name, proc=redis)
        f.tracker.stop()
        f.tracker = None
        f.start_tracker("--agent-ttl", "3", "--store", f"redis://127.0.0.1:{port}/0")
        image = f.push_image([4 * MiB])
        layer = image.layers[0].digest
        f.start_agent(1)
        compare_dir_with_image(f.pull(1, image), image)
        before = registrations(f, 1)
        redis.stop()
        assert not redis.running  # the fault really happened
        # ... and reached the agent: its heartbeats fail (the tracker answers 503).
        wait_for_tracker_state(f, 1, lambda s: s["state"] == "unreachable")
        redis.start()
        wait_for_port("127.0.0.1", port, 20, netns=host.name, proc=redis)
        wait_until_reregistered(f, 1, before)
        f.start_agent(2, extra=("--peer-wait", "30s"))
        compare_dir_with_image(f.pull(2, image), image)
        assert f.registry.blob_fetches(layer) == 1, logs(f)
        assert f.metric(2, "layerswarm_peer_bytes_total") >= 4 * MiB, logs(f)
    finally:
        redis.stop()
