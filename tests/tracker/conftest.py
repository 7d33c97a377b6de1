"""Fixtures for the tracker: a real redis-server, stores of both kinds, apps on real sockets."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from testbed.redis_server import RedisServer
from tracker.app import build_app
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.store import MemoryStore, RedisStore, TrackerStore

TOKEN = "fleet-token-" + "x" * 20


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database 0 on the shared server for each test."""
    url = redis_server.url + "/0"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TrackerStore]:
    s: TrackerStore
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = RedisStore.from_url(request.getfixturevalue("redis_url"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def config(token_file: Path) -> TrackerConfig:
    return TrackerConfig(token_file=token_file, max_body=64 << 10)


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    """Start tracker apps on real loopback sockets (port 0); all are stopped at the end."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(
        config: TrackerConfig, **kwargs: object
    ) -> TestClient[web.Request, web.Application]:
        app = build_app(config, **kwargs)  # type: ignore[arg-type]  # keyword pass-through
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


def new_key() -> str:
    return secrets.token_urlsafe(24)
