"""An agent SIGKILLed in the middle of writing a blob, then restarted on the same data dir.

The agent is the real CLI process and really dies (SIGKILL, no clean-up of any kind); the
registry is real, behind the fault proxy only to slow the blob so the kill lands mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.workload import start_tracker
from testbed.agent import AgentProc
from testbed.faultproxy import FaultProxy
from testbed.images import Image, Layer
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

MiB = 1 << 20


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        data: bytes = r.read()
        return data


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def verified_cache(data: Path) -> dict[str, bool]:
    """Every file under blobs/, and whether its bytes hash to its name."""
    out = {}
    for p in (data / "blobs" / "sha256").iterdir():
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    return out


def test_sigkill_mid_write_then_restart_resumes_and_caches_only_verified_blobs(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory
) -> None:
    image = image_factory(layers=[2 * MiB, 8 * MiB])
    small, big = image.layers
    with FaultProxy(registry.url) as proxy:
        agent = AgentProc(
            tmp_path / "agent",
            {registry.host_port: proxy.url},
            default_upstream=registry.host_port,
            extra=["--no-p2p"],
        )
        try:
            run_scenario(agent, proxy, registry, image, small, big)
        finally:
            agent.stop()


def run_scenario(
    agent: AgentProc, proxy: FaultProxy, registry: Registry, image: Image, small: Layer, big: Layer
) -> None:
    agent.start()
    proc = agent.proc
    assert proc is not None
    base = f"{agent.url}/v2/{image.repo}/blobs/"
    assert fetch(base + small.digest) == image.blob(small.digest)

    proxy.throttle(2 * MiB)
    failures: list[BaseException] = []

    def client() -> None:
        try:
            fetch(base + big.digest)
        except BaseException as exc:  # the agent dies under it: any error is expected
            failures.append(exc)

    t = threading.Thread(target=client)
    t.start()
    partial = agent.data_dir / "partial" / f"sha256-{big.digest.split(':')[1]}"
    wait_until("a partial MiB", lambda: partial.exists() and partial.stat().st_size > MiB)
    os.kill(proc.pid, signal.SIGKILL)
    wait_until("the agent to die", lambda: not proc.running)
    t.join(60)
    assert proc.returncode == -signal.SIGKILL
    assert failures, "the client should have seen its download cut"
    left = partial.stat().st_size
    assert 0 < left < big.size
    # Nothing unverified is in the cache: the half blob is only in partial/.
    assert verified_cache(agent.data_dir) == {small.digest.split(":")[1]: True}

    # What a kill between writing a state file and renaming it leaves beside it.
    stray = agent.data_dir / "anonymous-grants.json.tmp"
    stray.write_text('{"half": ')
    proxy.throttle(None)
    before = len(proxy.blob_requests())
    agent.start()
    assert not stray.exists()
    assert fetch(base + big.digest) == image.blob(big.digest)
    resumed = proxy.blob_requests()[before:]
    assert len(resumed) == 1, resumed
    # The restarted agent asked only for what the killed one had not written.
    assert resumed[0].range == f"bytes={left}-", resumed
    ranged = registry.requests(kind="blobs", reference=big.digest, statuses=(206,))
    assert len(ranged) == 1 and ranged[0].bytes == big.size - left
    assert verified_cache(agent.data_dir) == {
        small.digest.split(":")[1]: True,
        big.digest.split(":")[1]: True,
    }
    assert not list((agent.data_dir / "partial").iterdir())
    assert not list((agent.data_dir / "tmp").iterdir())
    # The blob cached before the kill is still served from the cache.
    served_before = agent.metric("layerswarm_served_bytes_total", 'source="cache"')
    assert fetch(base + small.digest) == image.blob(small.digest)
    assert agent.metric("layerswarm_served_bytes_total", 'source="cache"') == (
        served_before + small.size
    )


@pytest.mark.parametrize("extra", [0, 1000], ids=["whole-blob", "longer-than-blob"])
def test_partial_holding_the_whole_blob_or_more_is_finished_not_stuck(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory, extra: int
) -> None:
    """Found by the soak: an agent stopped between the last write and the commit left the
    whole blob in partial/; after a restart every pull of it got 502 (the upstream answers a
    Range from the end with 416) and the partial stayed forever."""
    image = image_factory(layers=[MiB])
    layer = image.layers[0]
    agent = agent_proc(registry)
    agent.stop()
    partial = agent.data_dir / "partial" / f"sha256-{layer.digest.split(':')[1]}"
    partial.write_bytes(image.blob(layer.digest) + b"\0" * extra)
    agent.start()
    assert fetch(f"{agent.url}/v2/{image.repo}/blobs/{layer.digest}") == image.blob(layer.digest)
    refused = registry.requests(kind="blobs", reference=layer.digest, statuses=(416,))
    assert len(refused) == 1, registry.proc.log_tail()
    full = registry.requests(kind="blobs", reference=layer.digest, statuses=(200,))
    # Exactly the blob: nothing more to fetch. Longer: discarded and fetched once from zero.
    assert len(full) == (0 if extra == 0 else 1), registry.proc.log_tail()
    assert not partial.exists()
    assert verified_cache(agent.data_dir) == {layer.digest.split(":")[1]: True}


def test_sigterm_lets_a_blob_being_served_finish_within_the_shutdown_timeout(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory
) -> None:
    image = image_factory(layers=[3 * MiB])
    layer = image.layers[0]
    with FaultProxy(registry.url) as proxy:
        agent = AgentProc(
            tmp_path / "agent",
            {registry.host_port: proxy.url},
            default_upstream=registry.host_port,
            extra=["--no-p2p", "--shutdown-timeout", "40s"],
        )
        try:
            agent.start()
            proc = agent.proc
            assert proc is not None
            # About 2 s of streaming left when the signal comes.
            proxy.throttle(MiB)
            got: list[bytes] = []
            t = threading.Thread(
                target=lambda: got.append(
                    fetch(f"{agent.url}/v2/{image.repo}/blobs/{layer.digest}")
                )
            )
            t.start()
            partial = agent.data_dir / "partial" / f"sha256-{layer.digest.split(':')[1]}"
            wait_until("the first bytes", lambda: partial.exists() and partial.stat().st_size > 0)
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait_for_log("draining requests for up to 40s", stream="stderr")
            t.join(60)
            wait_until("the agent to exit", lambda: not proc.running, timeout=60)
            assert got == [image.blob(layer.digest)], "the response was cut, not drained"
            assert proc.returncode == 0, proc.log_tail()
        finally:
            agent.stop()


def test_whole_partial_of_a_blob_a_peer_holds_is_served_not_stalled(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory
) -> None:
    """The p2p soak's 30 s stall. An agent stopped between the last write and the commit
    left the whole blob in partial/; restarted, it is asked for the blob while another agent
    holds it, so the tracker says "follow a peer" and the relay finds nothing left to stream.
    Before, the blob was verified and cached but the client's request was never answered
    (it waited for a start no source announced) until the client's read timeout."""
    image = image_factory(layers=[MiB])
    layer = image.layers[0]
    tracker, peer = start_tracker(tmp_path)
    agents = [
        AgentProc(
            tmp_path / f"agent{i}",
            {registry.host_port: registry.url},
            default_upstream=registry.host_port,
            extra=peer,
        )
        for i in range(2)
    ]
    holder, restarted = agents
    try:
        holder.start()
        restarted.start()
        assert fetch(f"{holder.url}/v2/{image.repo}/blobs/{layer.digest}") == image.blob(
            layer.digest
        )
        restarted.stop()
        partial = restarted.data_dir / "partial" / f"sha256-{layer.digest.split(':')[1]}"
        partial.write_bytes(image.blob(layer.digest))
        restarted.start()
        # Its tracker link is up, so its lookup will say whom to follow (the tracker may
        # still know it from before the stop: a heartbeat, not a new registration, is the sign).
        wait_until("the restarted agent's heartbeat", lambda: heartbeat_ok(restarted))
        # The manifest tells the agent the blob's size, as in a real pull.
        fetch(f"{restarted.url}/v2/{image.repo}/manifests/{image.tag}")
        # A hang here is the fault: fetch() gives up after 60 s of silence.
        assert fetch(f"{restarted.url}/v2/{image.repo}/blobs/{layer.digest}") == image.blob(
            layer.digest
        )
        log = restarted.log()
        # The relay path was the one taken (not the lease, which asks the upstream with a
        # Range and was fixed before), and nothing was streamed again.
        assert "holds the lease" not in log, log
        assert "following parent" not in log, log
        assert registry.requests(kind="blobs", reference=layer.digest, statuses=(416,)) == []
        assert not partial.exists()
        assert verified_cache(restarted.data_dir) == {layer.digest.split(":")[1]: True}
    finally:
        for agent in agents:
            agent.stop()
        tracker.stop()


def heartbeat_ok(agent: AgentProc) -> bool:
    with urllib.request.urlopen(f"{agent.url}/healthz", timeout=10) as r:
        return bool(json.load(r)["tracker"]["state"] == "ok")
