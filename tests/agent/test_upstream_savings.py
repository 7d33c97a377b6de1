"""Per upstream: bytes fetched from it, bytes saved (served from the cache instead), and the
rate-limit headroom it states.

The upstream is the real registry; the rate-limit headers are added by the fault proxy in
front of it, since distribution does not send Docker Hub's ``ratelimit-*`` headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.faultproxy import FaultProxy
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


def sample(metrics: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", metrics, re.M)
    return float(m.group(1)) if m else None


async def test_fetched_saved_and_rate_limit_headroom_per_upstream(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory("team/saved", "v1", [200_000, 100_000])
    name = registry.host_port
    client, runtime = await agent_factory(proxy.url, name=name)
    up = f'upstream="{name}"'

    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "layerswarm_upstream_saved_bytes_total", up) == 0.0
    # No answer stated a rate limit yet: no headroom is claimed, not even 0.
    assert sample(metrics, "layerswarm_upstream_ratelimit_remaining", up) is None

    proxy.state_rate_limit(remaining=76, limit=100)
    layers = sum(layer.size for layer in image.layers)
    for _ in range(3):
        resp = await client.get(
            f"/v2/{image.repo}/manifests/{image.tag}",
            headers={"Accept": image.local.manifest_media_type},
        )
        assert resp.status == 200, await resp.text()
        for layer in image.layers:
            resp = await client.get(f"/v2/{image.repo}/blobs/{layer.digest}")
            assert resp.status == 200
            assert len(await resp.read()) == layer.size

    metrics = await (await client.get("/metrics")).text()
    fetched = sample(metrics, "layerswarm_upstream_bytes_total", up)
    saved = sample(metrics, "layerswarm_upstream_saved_bytes_total", up)
    assert fetched is not None and saved is not None
    # Each layer came from the upstream once and from the cache twice after that.
    assert fetched >= layers
    assert saved >= 2 * layers
    assert sample(metrics, "layerswarm_upstream_ratelimit_remaining", up) == 76.0
    assert sample(metrics, "layerswarm_upstream_ratelimit_limit", up) == 100.0
    assert registry.blob_fetches(image.layers[0].digest) == 1
    # The heartbeat reports the very counts the metrics export, each response counted once.
    counters = runtime.peer_side.describe().counters
    served = {
        s: sample(metrics, "layerswarm_served_bytes_total", f'source="{s}"')
        for s in ("cache", "upstream")
    }
    assert (counters.served_cache, counters.served_upstream) == (
        served["cache"],
        served["upstream"],
    )
    assert counters.served_cache == saved and counters.upstream_bytes == fetched
    assert counters.served_upstream >= layers and counters.served_cache >= 2 * layers


async def test_preheat_fetches_an_images_layers_concurrently_in_manifest_order(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    """Three 256 KiB layers sent at 512 KiB/s each: one at a time, the proxy would never be
    sending two bodies at once."""
    from agent.preheat import preheat_image

    image = image_factory("team/preheat", "v1", [256 << 10, 256 << 10, 256 << 10])
    _, runtime = await agent_factory(proxy.url, name=registry.host_port)
    proxy.throttle(512 << 10)
    reports: list[list[tuple[str, str, str]]] = []

    async def hook(items: list[Any]) -> None:
        reports.append([(i.digest, i.kind, i.source) for i in items])

    items = await preheat_image(
        runtime.mirror, runtime.config.upstreams, image.ref, on_progress=hook
    )
    assert proxy.max_blob_bodies >= 2
    # Manifest order, the config named as such, every blob from the upstream this time.
    assert [(i.digest, i.kind, i.source) for i in items] == [
        (image.config_digest, "config", "upstream"),
        *((layer.digest, "layer", "upstream") for layer in image.layers),
    ]
    assert all(i.done_bytes == i.size for i in items)
    # Reports always list every blob, in the same order.
    assert all([r[0] for r in rep] == [i.digest for i in items] for rep in reports)
