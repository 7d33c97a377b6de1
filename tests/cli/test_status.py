"""``layerswarm status`` shows the live fleet from a real tracker."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.conftest import Node, layerswarm

pytestmark = pytest.mark.integration


def wait_for_agents(node: Node, count: int = 1, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        res = layerswarm("status", "--json", *node.tracker_args)
        assert res.returncode == 0, res.stderr
        fleet: dict[str, object] = json.loads(res.stdout)
        agents = fleet["agents"]
        assert isinstance(agents, list)
        if len(agents) >= count:
            return fleet
        assert time.monotonic() < deadline, (fleet, node.logs())
        time.sleep(0.2)


def test_status_lists_the_seed_agent(node: Node) -> None:
    fleet = wait_for_agents(node)
    agents = fleet["agents"]
    assert isinstance(agents, list)
    agent = agents[0]
    res = layerswarm("status", *node.tracker_args)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("1 live agents (1 seeds)")
    row = next(line for line in out.splitlines() if line.startswith(agent["agent_id"]))
    assert f"127.0.0.1:{agent['peer_port']}" in row
    assert row.split()[2:5] == ["r1", "z1", "seed"], row
    assert "s ago" in row
    zones = out[out.index("Zones") :]
    assert any(line.split() == ["r1", "z1", "1"] for line in zones.splitlines()), zones
    assert "savings 0.0%" in out


def test_status_json_is_the_trackers_fleet(node: Node) -> None:
    fleet = wait_for_agents(node)
    assert set(fleet) >= {"agents", "zones", "hottest", "totals", "savings_ratio"}


def test_status_unreachable_tracker_exits_1(node: Node) -> None:
    from testbed.procs import free_port

    res = layerswarm(
        "status",
        "--tracker",
        f"http://127.0.0.1:{free_port()}",
        "--tracker-token-file",
        str(node.token_file),
        "--http-timeout",
        "2s",
    )
    assert res.returncode == 1
    assert "no tracker answered" in res.stderr
