"""Odd client input gets a 4xx with an OCI (or tracker) error body, never a 500: a
Range with a 5000-digit number, a tag-list ``n`` of ``²`` or 5000 digits, tracker
JSON nested 30 000 deep (50 000 was seen to crash it; the test config caps bodies at 64 KiB)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory
from tests.tracker.conftest import TOKEN, AppFactory
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.store import MemoryStore


@pytest.mark.integration
async def test_agent_refuses_odd_numbers(
    registry: Registry, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    image = image_factory("odd/app", layers=(4096,))
    layer = image.layers[0].digest
    client, _ = await agent_factory(registry.url, name=registry.host_port)
    resp = await client.get(f"/v2/odd/app/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == image.blob(layer)
    huge = "9" * 5000
    for rng in (f"bytes={huge}-", f"bytes=0-{huge}", f"bytes=-{huge}", "bytes=\u0661-\u0662"):
        resp = await client.get(f"/v2/odd/app/blobs/{layer}", headers={"Range": rng})
        body = await resp.text()
        assert 400 <= resp.status < 500, (rng[:20], resp.status, body[:200])
        assert "Traceback" not in body
    for n in ("\u00b2", huge, "-1", "1e3", "\u0661"):
        resp = await client.get("/v2/odd/app/tags/list", params={"n": n})
        body = await resp.text()
        assert resp.status == 400, (n[:20], resp.status, body[:200])
        assert '"errors"' in body


async def test_tracker_refuses_deep_json(
    make_app: AppFactory, config: TrackerConfig, clock: ManualClock
) -> None:
    app = await make_app(config, clock=clock, store=MemoryStore(), registry=CollectorRegistry())
    deep = "[" * 30_000 + "]" * 30_000
    for path in (
        "/v1/agents/a1/heartbeat",
        "/v1/agents/a1/lookup",
        "/v1/agents/a1/bad-peer",
        "/preheat",
        "/webhooks/distribution",
    ):
        resp = await app.post(
            path,
            data=deep,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "X-Layerswarm-Agent-Key": "k" * 32,
                "Content-Type": "application/json",
            },
        )
        body = await resp.text()
        assert resp.status == 400, (path, resp.status, body[:200])
