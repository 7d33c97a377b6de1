"""200 concurrent clients on one real agent, and clients spread over a p2p fleet whose seed
restarts: zero errors, memory and descriptors bounded.

Times are reported (``-s`` shows them; docs/reliability.md records a run), never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import FleetLoad, LoadParams, report, run_load
from testbed.agent import AgentProc
from testbed.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20
# The agent's upstream connection pool keeps up to this many idle keep-alive sockets.
UPSTREAM_POOL = 64


async def test_200_clients_mixed_cached_and_uncached(tmp_path: Path, registry: Registry) -> None:
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=["--no-p2p"],
    )
    try:
        agent.start()
        assert agent.proc is not None
        params = LoadParams(clients=200, rounds=5)
        result = await run_load(agent.url, agent.proc.pid, registry.url, params)
    finally:
        agent.stop()
    print("\n" + report(result))
    assert result.errors == [], result.errors[:5]
    assert result.requests == 1000
    # Each uncached blob came from the upstream once, however many clients asked at once.
    for_upstream = registry.requests(kind="blobs", repo="load/blobs")
    assert len(for_upstream) == params.cached_blobs + params.uncached_blobs
    # Bounds: per client its socket and the cache or partial file its response reads, one
    # partial file per download, the upstream pool, and the agent's own few.
    downloads = params.uncached_blobs
    assert result.fds_peak <= 2 * params.clients + downloads + UPSTREAM_POOL + 50, result
    # Once the clients are gone, only the idle upstream pool may remain.
    assert result.fds_after <= result.fds_before + UPSTREAM_POOL + 16, result
    assert result.rss_peak <= 256 * MiB, result


async def test_clients_over_a_p2p_fleet_whose_seed_restarts(
    tmp_path: Path, registry: Registry
) -> None:
    """Peer-to-peer on: three agents stream the cached half from a seed that is killed or
    stopped and started again all along, with caches smaller than the working set."""
    params = LoadParams(clients=90, rounds=3, p2p_agents=3)
    fleet = FleetLoad(tmp_path, registry, params)
    try:
        result = await fleet.run()
    finally:
        fleet.stop()
    print("\n" + report(result))
    assert result.errors == [], result.errors[:5]
    assert result.problems == [], result.problems
    assert result.restarts >= 1
    # The seed's layers really went peer to peer (and the sources add up: no problem above).
    assert result.served_by_source["peer"] > 0, report(result)
    # Besides the upstream pool: kept-alive connections to the other agents' peer ports
    # (parents and children of the relay, a few each) and the tracker's.
    assert result.fds_after <= result.fds_before + UPSTREAM_POOL + 48, result
    assert result.rss_peak <= 256 * MiB, result
