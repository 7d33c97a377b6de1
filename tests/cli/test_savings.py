"""Savings that add up: the tracker's fleet totals are cumulative and never go backwards, not
when an agent restarts (it keeps its counts in its data dir) and not when it leaves; they are
also kept per region. Real tracker, real agent, real registry; figures read from /metrics.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from tests.cli.conftest import Node
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


def tracker_metric(node: Node, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{node.tracker_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    m = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def wait_for_metric(node: Node, name: str, at_least: float, labels: str = "") -> float:
    deadline = time.monotonic() + 30
    while True:
        value = tracker_metric(node, name, labels)
        if value >= at_least:
            return value
        assert time.monotonic() < deadline, (name, value, node.logs())
        time.sleep(0.2)


def wait_for_heartbeat(node: Node) -> None:
    """Until the restarted agent's /healthz says its tracker took a heartbeat."""
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{node.agent.url}/healthz", timeout=10) as r:
            if json.loads(r.read())["tracker"]["state"] == "ok":
                return
        assert time.monotonic() < deadline, node.logs()
        time.sleep(0.1)


def test_fleet_totals_survive_agent_restarts_and_departures(
    node: Node, image_factory: ImageFactory
) -> None:
    image = image_factory("team/savings", "v1", [300_000])
    layer = image.layers[0]
    with urllib.request.urlopen(
        f"{node.agent.url}/v2/team/savings/blobs/{layer.digest}", timeout=30
    ) as r:
        assert len(r.read()) == layer.size
    fetched = wait_for_metric(node, "layerswarm_fleet_upstream_bytes_total", layer.size)
    region = wait_for_metric(
        node, "layerswarm_fleet_region_upstream_bytes_total", fetched, 'region="r1"'
    )
    assert region == fetched
    saved = json.loads((node.agent.data_dir / "counters.json").read_text())
    assert saved["upstream_bytes"] == fetched

    # A restart starts the agent's Prometheus counters from zero; the fleet keeps its bytes.
    node.agent.stop()
    node.agent.start()
    wait_for_heartbeat(node)
    assert tracker_metric(node, "layerswarm_fleet_upstream_bytes_total") == fetched
    upstream = f'upstream="{node.registry.host_port}"'
    assert node.agent.metric("layerswarm_upstream_bytes_total", upstream) == 0

    # The agent leaves and is pruned: what it fetched is still part of what the fleet fetched.
    node.agent.stop()
    node.tracker.wait_for_log("pruned expired agents", stream="stderr", timeout=30)
    assert tracker_metric(node, "layerswarm_fleet_upstream_bytes_total") == fetched
    assert tracker_metric(node, "layerswarm_fleet_region_upstream_bytes_total", 'region="r1"') == (
        fetched
    )
