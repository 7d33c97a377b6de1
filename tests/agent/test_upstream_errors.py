"""An upstream's unexpected answer reaches the client named: which upstream, where, what.

The real registry sits behind the fault proxy, which answers the blob request with a 500 a
real registry will not give on demand.
"""

from __future__ import annotations

from collections.abc import Iterator

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


async def test_a_500_names_the_upstream_and_where_it_answered(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory("team/err", "v1", [1000])
    client, _ = await agent_factory(proxy.url, name="up.test:5000")
    proxy.fail_blobs(1, status=500)
    resp = await client.get(f"/v2/{image.repo}/blobs/{image.layers[0].digest}")
    assert resp.status == 502
    message = (await resp.json())["errors"][0]["message"]
    assert message == f"upstream up.test:5000 answered 500 at {proxy.url}", message
    metrics = await (await client.get("/metrics")).text()
    assert 'layerswarm_upstream_errors_total{reason="status",upstream="up.test:5000"} 1.0' in (
        metrics
    )
