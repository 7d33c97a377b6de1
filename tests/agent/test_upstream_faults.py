"""An upstream that says "not now" (429/503 with Retry-After) or resets connections mid-blob.

The upstream is the real registry; the fault proxy in front of it injects only the answers
and resets a real registry cannot give on demand, and records every request it saw, so each
case asserts the fault really happened, how often the agent came back, and when.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.fetch import parse_retry_after
from testbed.faultproxy import FaultProxy
from testbed.images import Image
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


async def pull_ok(client: TestClient[Any, Any], image: Image, digest: str) -> None:
    resp = await client.get(f"/v2/{image.repo}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_is_honoured_then_the_pull_completes(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
    status: int,
) -> None:
    image = image_factory(layers=[MiB])
    digest = image.layers[0].digest
    client, _ = await agent_factory(proxy.url, name=registry.host_port)
    proxy.fail_blobs(2, status=status, retry_after="1")
    await pull_ok(client, image, digest)
    tries = proxy.blob_requests()
    assert [e.status for e in tries] == [status, status, 200]
    assert proxy.count("status") == 2
    # The agent came back no sooner than the upstream asked, each time.
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert all(gap >= 1.0 for gap in gaps), gaps
    metrics = await (await client.get("/metrics")).text()
    assert f'reason="http_{status}"' in metrics


async def test_resets_mid_blob_resume_by_range(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory(layers=[4 * MiB])
    layer = image.layers[0]
    client, rt = await agent_factory(proxy.url, name=registry.host_port)
    proxy.reset_blobs(1, after_bytes=0)  # dropped before any answer
    proxy.reset_blobs(2, after_bytes=MiB + 4321)  # cut mid-body, twice
    await pull_ok(client, image, layer.digest)
    tries = proxy.blob_requests()
    assert proxy.count("reset") == 3
    assert [e.fault for e in tries] == ["reset", "reset", "reset", ""]
    # The first mid-body cut came with no Range; each later try asked for the rest only.
    assert tries[1].range == ""
    offsets = [int(e.range.removeprefix("bytes=").rstrip("-")) for e in tries[2:]]
    assert offsets[0] > 0 and offsets[1] > offsets[0], tries
    ranged = registry.requests(kind="blobs", reference=layer.digest, statuses=(206,))
    assert len(ranged) == 2, registry.proc.log_tail()
    cached = rt.store.get(rt.store.digests()[0])
    assert cached is not None
    assert hashlib.sha256(cached.path.read_bytes()).hexdigest() == layer.digest.split(":")[1]


async def test_retry_after_beyond_the_budget_goes_to_the_client_at_once(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory(layers=[MiB])
    digest = image.layers[0].digest
    client, _ = await agent_factory(proxy.url, name=registry.host_port, upstream_retry_wait=5.0)
    proxy.fail_blobs(1, status=429, retry_after="3600")
    resp = await client.get(f"/v2/{image.repo}/blobs/{digest}")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3600"
    assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert len(proxy.blob_requests()) == 1
    # Nothing was left half-done: the next pull (the upstream willing again) completes.
    await pull_ok(client, image, digest)


async def test_an_upstream_that_keeps_failing_is_retried_a_bounded_number_of_times(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory(layers=[MiB])
    digest = image.layers[0].digest
    client, _ = await agent_factory(proxy.url, name=registry.host_port, upstream_retry_wait=3.0)
    proxy.fail_blobs(50, status=503)  # no Retry-After: the agent's own back-off
    resp = await client.get(f"/v2/{image.repo}/blobs/{digest}")
    assert resp.status == 503
    assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
    seen = len(proxy.blob_requests())
    # Back-off 0.25, 0.5, 1, 2 s (halved at most by jitter) fits 3-6 tries in a 3 s budget.
    assert 3 <= seen <= 6, proxy.blob_requests()
    assert proxy.count("status") == seen


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # an HTTP date 10 s after "now"
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=lambda: now) == seconds


async def test_manifests_wait_out_429_and_503_unless_a_last_known_digest_can_answer(
    proxy: FaultProxy,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory("team/app", "v1")
    accept = {"Accept": image.local.manifest_media_type}
    client, _ = await agent_factory(proxy.url, name=registry.host_port, tag_ttl=0.0)
    # Cold: nothing to fall back on, so the tag's HEAD and GET are retried as asked.
    proxy.fail_manifests(1, status=429, retry_after="1")
    proxy.fail_manifests(1, status=503, retry_after="1")
    resp = await client.get(f"/v2/{image.repo}/manifests/v1", headers=accept)
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    tries = proxy.manifest_requests()
    assert [(e.method, e.status) for e in tries][:3] == [
        ("HEAD", 429),
        ("HEAD", 503),
        ("HEAD", 200),
    ], tries
    assert all(b.at - a.at >= 1.0 for a, b in itertools.pairwise(tries[:3]))
    # Warm (tag TTL 0: every pull revalidates): a 429 is answered with the last known
    # digest at once instead of being waited out or passed on.
    before = len(proxy.manifest_requests())
    proxy.fail_manifests(1, status=429, retry_after="30")
    resp = await client.get(f"/v2/{image.repo}/manifests/v1", headers=accept)
    assert resp.status == 200 and await resp.read() == image.manifest
    assert [e.status for e in proxy.manifest_requests()[before:]] == [429]
