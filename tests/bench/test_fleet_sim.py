"""The fleet simulator's own path, small: 40 simulated agents, 2 real trackers on a real Redis.

Counts, not times: every node gets every layer, each region fetches each layer from the
upstream about once, the relay's request pattern stays within its budget per layer, killing
a replica mid-rollout fails no node (its agents fail over to the other one), and neither does
a Redis that comes back empty (every node registers again).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet_sim import Params, run

pytestmark = pytest.mark.integration


def test_simulated_rollout_cold_replica_killed_and_redis_restarted(tmp_path: Path) -> None:
    params = Params(
        agents=40,
        regions=4,
        zones=2,
        layers=2,
        layer_mib=8,
        # Slow enough that holding announces come after the kill: 8 MiB takes 0.7 s a hop.
        peer_mbit=100,
        upstream_mbit=100,
        trackers=2,
        procs=2,
        scenarios=("cold", "kill-tracker", "restart-redis"),
        kill_at=0.2,
        timeout=60,
        warmup=1.0,
    )
    doc = run(params, tmp_path / "out")
    cold, killed, restarted = doc["scenarios"]
    for s in (cold, killed, restarted):
        assert s["nodes"] == 40, s
        assert s["nodes_failed"] == 0, s["failed_sample"]
        assert s["crashed"] == [], s["crashed"]
        assert s["handout_kinds"].get("none", 0) == 0, s["handout_kinds"]
        # announce(fetching), lookup, announce(holding), and at most 3 more lookups.
        assert 3 <= s["requests_per_node_per_layer"] <= 6, s["rollout_requests"]
        assert s["heartbeat_requests"]["heartbeat"] >= 40
    # Cold: every region and layer got a lease, and the upstream served each about once.
    leases = cold["leases_per_region_layer"]
    assert leases["zero"] == 0 and leases["of"] == 8, leases
    assert cold["sources"]["upstream"] <= 12, cold["sources"]
    assert cold["sources"]["peer"] >= 68, cold["sources"]
    # The replica really died while agents still needed it: their requests to it broke
    # and went on with the other replica.
    assert killed["killed_at_s"] is not None
    assert sum(killed["client_errors"].values()) > 0, killed["client_errors"]
    assert killed["after_kill"]["first_failed_request_s"]["n"] > 0, killed["after_kill"]
    assert killed["after_kill"]["never_answered_again"] == 0, killed["after_kill"]
    # Redis came back empty: every live node registered again, none failed (checked above).
    again = restarted["after_kill"]
    assert again["not_registered_again"] == 0 and again["registered_again_s"]["n"] == 40, again
    assert (tmp_path / "out" / "results.md").stat().st_size > 0
