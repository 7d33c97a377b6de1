"""Agent timers run on the monotonic clock: a wall-clock jump moves no tag or access decision.

The agent is built by the real composition root with its monotonic clock injected (so the
test advances time instead of sleeping) and pulls from the real registry, whose access log
shows every revalidation and access check the agent made. The wall-clock jump reaches every
runtime call of ``time.time``; what binds it earlier (the wall time persisted with anonymous
grants and LRU mtimes, meaningful only across restarts) is not a timer and is not jumped.

Before tag freshness moved to the monotonic clock this failed: a tag stayed fresh whatever
the agent's clock said, so a wall clock set back kept a moved tag for as long as it was back.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.app import build_app
from agent.config import AgentConfig, parse_upstream
from testbed.clockjump import WallClockJump
from testbed.registry import Registry
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

DAY = 86400.0
TAG_TTL = 30.0
AUTH_TTL = 60.0


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
async def agent(tmp_path: Path, registry: Registry) -> AsyncIterator[tuple[TestClient, Monotonic]]:  # type: ignore[type-arg]
    mono = Monotonic()
    cfg = AgentConfig(
        data_dir=tmp_path / "agent",
        upstream=(parse_upstream(f"{registry.host_port}={registry.url}"),),
        default_upstream=registry.host_port,
        tag_ttl=TAG_TTL,
        auth_ttl=AUTH_TTL,
    )
    app = await build_app(cfg, registry=CollectorRegistry(), clock=mono)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, mono
    await client.close()


async def test_wall_clock_jumps_move_no_tag_or_access_decision(
    registry: Registry,
    image_factory: ImageFactory,
    agent: tuple[TestClient, Monotonic],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, mono = agent
    image = image_factory("team/app", "v1")
    layer = image.layers[0].digest
    accept = {"Accept": image.local.manifest_media_type}

    def upstream_calls() -> int:
        return len(registry.requests(repo=image.repo, methods=("GET", "HEAD")))

    async def pull() -> None:
        resp = await client.get(f"/v2/{image.repo}/manifests/v1", headers=accept)
        assert resp.status == 200 and await resp.read() == image.manifest
        resp = await client.get(f"/v2/{image.repo}/blobs/{layer}")
        assert resp.status == 200
        assert "sha256:" + hashlib.sha256(await resp.read()).hexdigest() == layer

    await pull()
    first = upstream_calls()
    assert first >= 2

    wall = WallClockJump(monkeypatch)
    # A day forward, no time passed: the tag is fresh and the client's access still granted.
    wall.jump(DAY)
    await pull()
    assert upstream_calls() == first, "a forward jump expired a tag or an access grant"

    # Two days back, then the tag TTL passes: the tag is revalidated all the same (a wall
    # clock behind would otherwise keep a moved tag fresh for two days).
    wall.jump(-2 * DAY)
    mono.advance(TAG_TTL + 1)
    await pull()
    revalidated = upstream_calls()
    heads = registry.requests(kind="manifests", repo=image.repo, methods=("HEAD",))
    assert revalidated > first and len(heads) == 2, [r.path for r in heads]

    # Past the access TTL, the upstream is asked again, whatever the wall clock says.
    mono.advance(AUTH_TTL + 1)
    await pull()
    assert upstream_calls() > revalidated
