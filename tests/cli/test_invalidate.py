"""Moved tags: ``layerswarm invalidate`` reaches every agent within a heartbeat, and
``--revalidate-tags`` makes matching tags always ask the upstream (stale only on error).

Real registry, real tracker, real agents; a tag is moved by pushing another image under it.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.images import Image
from testbed.registry import Registry
from tests.cli.conftest import Node, layerswarm
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_via(agent_url: str, image: Image) -> str:
    req = urllib.request.Request(
        f"{agent_url}/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["Docker-Content-Digest"])


def test_invalidate_reaches_the_agent_within_a_heartbeat(
    node: Node, image_factory: ImageFactory
) -> None:
    old = image_factory("team/moving", "stable", [1000], seed=1)
    assert digest_via(node.agent.url, old) == old.manifest_digest
    new = image_factory("team/moving", "stable", [2000], seed=2)
    # Within --tag-ttl (30 s) the agent answers from its tag record, as it should.
    assert digest_via(node.agent.url, new) == old.manifest_digest

    res = layerswarm(
        "invalidate", f"{node.registry.host_port}/team/moving:stable", *node.tracker_args
    )
    assert res.returncode == 0, res.stderr
    assert "invalidated" in res.stdout
    # Heartbeats come every second here (agent-ttl 3 s); a few are plenty.
    deadline = time.monotonic() + 15
    while digest_via(node.agent.url, new) != new.manifest_digest:
        assert time.monotonic() < deadline, node.logs()
        time.sleep(0.2)


def test_invalidate_refuses_a_digest_in_one_line(node: Node) -> None:
    ref = f"{node.registry.host_port}/team/moving@sha256:{'a' * 64}"
    res = layerswarm("invalidate", ref, *node.tracker_args)
    assert res.returncode == 2
    assert "a digest never changes" in res.stderr and "Traceback" not in res.stderr


def test_revalidate_tags_asks_the_upstream_for_matching_tags(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=["--no-p2p", "--tag-ttl", "1h", "--revalidate-tags", "latest"],
    ).start()
    try:
        check_revalidation(agent, registry, image_factory)
    finally:
        agent.stop()


def check_revalidation(agent: AgentProc, registry: Registry, image_factory: ImageFactory) -> None:
    latest_v1 = image_factory("team/live", "latest", [1000], seed=1)
    pinned_v1 = image_factory("team/live", "v1", [1000], seed=3)
    assert digest_via(agent.url, latest_v1) == latest_v1.manifest_digest
    assert digest_via(agent.url, pinned_v1) == pinned_v1.manifest_digest

    latest_v2 = image_factory("team/live", "latest", [2000], seed=2)
    pinned_v2 = image_factory("team/live", "v1", [2000], seed=4)
    # `latest` matches the pattern: asked every time. `v1` does not: its hour is not up.
    assert digest_via(agent.url, latest_v2) == latest_v2.manifest_digest
    assert digest_via(agent.url, pinned_v2) == pinned_v1.manifest_digest

    # The upstream down: the last known digest of `latest` is still served.
    registry.stop()
    try:
        assert digest_via(agent.url, latest_v2) == latest_v2.manifest_digest
    finally:
        registry.start()
