"""The fleet benchmark's own code path, small: 3 nodes, an 8 MiB image, layerswarm-cold.

Counts, not times: the upstream served the image about once for the whole rollout, and every
node's skopeo copy holds exactly the bytes that were built.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fleet import Params, run

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def test_layerswarm_cold_rollout_crosses_the_wan_once(tmp_path: Path) -> None:
    params = Params(
        nodes=3,
        image_mib=8,
        layers=2,
        upstream_mbit=100,
        node_mbit=200,
        segment_size="2M",
        scenarios=("layerswarm-cold",),
        timeout=120,
        capacity=False,
    )
    doc = run(params, tmp_path / "out")
    (scenario,) = doc["scenarios"]
    assert scenario["scenario"] == "layerswarm-cold"
    assert len(scenario["nodes"]) == 3
    failed = [n for n in scenario["nodes"] if not n["verified"]]
    assert not failed, failed
    assert scenario["summary"]["upstream_ratio"] <= 1.1, scenario["upstream_by_remote"]
    # Someone did fetch it: a ratio of 0 would mean the log was not read at all.
    assert scenario["summary"]["upstream_ratio"] >= 0.99, scenario["upstream_by_remote"]
    # The instruments read something: every node received at least the image, the tracker
    # counted requests, and the data dirs hold one copy of what they cached.
    image = scenario["image_bytes"]
    for idx in (3, 4, 5):
        assert scenario["timeline"][str(idx)][-1][1] >= image, scenario["timeline"][str(idx)]
    assert scenario["summary"]["tracker_requests_per_node"] > 0
    assert scenario["summary"]["disk_ratio"] is not None
    assert 1.0 <= scenario["summary"]["disk_ratio"] <= 1.05
    for name in ("results.json", "results.md", "cdf.png", "timeline.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == json.loads(
        json.dumps(doc)
    )
