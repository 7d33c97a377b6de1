"""Real libtorrent engines on 127.0.0.1, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.p2p.engine import FleetTLS
from agent.p2p.libtorrent_impl import EngineOptions, LibtorrentEngine

EngineFactory = Callable[..., Awaitable[LibtorrentEngine]]


@pytest.fixture
async def make_engine() -> AsyncIterator[EngineFactory]:
    engines: list[LibtorrentEngine] = []

    async def make(*, tls: FleetTLS | None = None, upload_rate: int = 0) -> LibtorrentEngine:
        engine = LibtorrentEngine(
            # Small thread pools: several engines share a 2-core machine in one test.
            EngineOptions(upload_rate=upload_rate, aio_threads=2, hashing_threads=1),
            tls=tls,
        )
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()
