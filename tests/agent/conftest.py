from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.app import AGENT_KEY, AgentRuntime, build_app
from agent.config import AgentConfig, parse_upstream
from testbed.agent import AgentProc
from testbed.registry import Registry

AgentFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], AgentRuntime]]]


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Agents built by the real composition root, served on a real loopback port."""
    clients: list[TestClient[Any, Any]] = []

    async def make(
        upstream_url: str,
        name: str = "up.test:5000",
        *,
        more_upstreams: Sequence[str] = (),
        **overrides: Any,
    ) -> tuple[TestClient[Any, Any], AgentRuntime]:
        """``more_upstreams``: further ``NAME=URL`` upstreams, reached by ``?ns=`` or prefix."""
        cfg = AgentConfig(
            data_dir=overrides.pop("data_dir", tmp_path / f"agent{len(clients)}"),
            upstream=(
                parse_upstream(f"{name}={upstream_url}"),
                *(parse_upstream(u) for u in more_upstreams),
            ),
            default_upstream=name,
            **overrides,
        )
        app = await build_app(cfg, registry=CollectorRegistry())
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, app[AGENT_KEY]

    yield make
    for c in clients:
        await c.close()


AgentProcFactory = Callable[..., AgentProc]


@pytest.fixture
def agent_proc(tmp_path: Path) -> Iterator[AgentProcFactory]:
    """Real agents (the CLI as a subprocess) mirroring a real registry; stopped by PID."""
    started: list[AgentProc] = []

    def start(registry: Registry, *extra: str, default: bool = True) -> AgentProc:
        a = AgentProc(
            tmp_path / f"agent{len(started)}",
            {registry.host_port: registry.url},
            default_upstream=registry.host_port if default else None,
            extra=["--no-p2p", *extra],
        )
        started.append(a)
        return a.start()

    try:
        yield start
    finally:
        for a in started:
            a.stop()
