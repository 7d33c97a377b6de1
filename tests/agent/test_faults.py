"""Faults a real registry cannot produce on demand, injected by small fake upstreams.

Each fake here is a fault injector (wrong bytes, a silent socket, a dead port), not a
stand-in for the registry: the registry's normal behaviour is tested against the real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.agent.conftest import AgentFactory

GOOD = b"good-bytes-" * 10_000
GOOD_DIGEST = "sha256:" + hashlib.sha256(GOOD).hexdigest()
REPO = "team/app"


class FaultyUpstream:
    """Answers every blob with ``body`` whatever the digest, counting requests."""

    def __init__(self, body: bytes, *, stall: bool = False) -> None:
        self.body = body
        self.stall = stall
        self.requests: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        if self.stall:
            await asyncio.sleep(3600)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(self.body))})
        return web.Response(body=self.body, content_type="application/octet-stream")


@pytest.fixture
async def faulty() -> AsyncIterator[tuple[FaultyUpstream, str]]:
    up = FaultyUpstream(b"evil-bytes-" * 10_000)
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    yield up, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_wrong_bytes_are_never_completed_nor_cached(
    agent_factory: AgentFactory, faulty: tuple[FaultyUpstream, str]
) -> None:
    up, url = faulty
    client, rt = await agent_factory(url)
    resp = await client.get(f"/v2/{REPO}/blobs/{GOOD_DIGEST}")
    assert resp.status == 200  # headers went out before the bytes could be checked
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert not list((rt.config.data_dir / "blobs" / "sha256").iterdir())
    assert not list((rt.config.data_dir / "partial").iterdir())
    # A later request goes upstream again instead of serving anything cached.
    before = len(up.requests)
    resp2 = await client.get(f"/v2/{REPO}/blobs/{GOOD_DIGEST}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp2.read()
    assert len(up.requests) == before + 1
    metrics = await (await client.get("/metrics")).text()
    assert 'layerswarm_verify_failures_total{source="upstream"} 2.0' in metrics


async def test_silent_upstream_times_out_with_504(agent_factory: AgentFactory) -> None:
    up = FaultyUpstream(GOOD, stall=True)
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    try:
        client, _ = await agent_factory(str(server.make_url("")).rstrip("/"), read_timeout=0.5)
        resp = await client.get(f"/v2/{REPO}/blobs/{GOOD_DIGEST}")
        assert resp.status == 504
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await server.close()


async def test_unreachable_upstream_is_503_with_oci_body(agent_factory: AgentFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on that port now: connection refused.
    client, _ = await agent_factory(f"http://127.0.0.1:{port}")
    for path in (f"/v2/{REPO}/blobs/{GOOD_DIGEST}", f"/v2/{REPO}/manifests/latest"):
        resp = await client.get(path)
        assert resp.status == 503, path
        assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", f"/v2/UPPER/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
        ("GET", f"/v2/{REPO}/blobs/sha256:123", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{REPO}/blobs/md5:{'a' * 32}", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{REPO}/manifests/-bad-tag", 400, "NAME_INVALID"),
        ("GET", f"/v2/{REPO}/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{REPO}/manifests/latest?ns=not%20a%20host", 400, "NAME_INVALID"),
        ("GET", f"/v2/{REPO}/manifests/latest?ns=elsewhere.io", 404, "NAME_UNKNOWN"),
        ("GET", f"/v2/{REPO}/manifests/latest?ns=a.io&ns=b.io", 400, "NAME_INVALID"),
        ("PUT", f"/v2/{REPO}/manifests/latest", 405, "UNSUPPORTED"),
        ("POST", f"/v2/{REPO}/blobs/uploads/", 405, "UNSUPPORTED"),
        ("DELETE", f"/v2/{REPO}/blobs/{GOOD_DIGEST}", 405, "UNSUPPORTED"),
        ("GET", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("GET", "/v2/../../etc/passwd/blobs/x", 404, "NAME_UNKNOWN"),
        ("GET", f"/v2/a/.hidden/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
        ("GET", f"/v2/{REPO}/tags/list?n=many", 400, "UNKNOWN"),
        ("GET", "/nothing-here", 404, "NAME_UNKNOWN"),
    ],
)
async def test_bad_input_gets_oci_errors_without_touching_upstream(
    agent_factory: AgentFactory,
    faulty: tuple[FaultyUpstream, str],
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    up, url = faulty
    client, rt = await agent_factory(url)
    resp = await client.request(method, path)
    assert resp.status == status
    doc = json.loads(await resp.read())
    assert doc["errors"][0]["code"] == code
    assert up.requests == []
    # Nothing was created outside the data directory's own layout.
    assert sorted(p.name for p in rt.config.data_dir.iterdir()) == [
        "agent-id",
        "agent-key",
        "blobs",
        "manifests",
        "partial",
        "tags",
        "tmp",
    ]


async def test_unsatisfiable_range_on_cached_blob_is_416(
    agent_factory: AgentFactory,
) -> None:
    up = FaultyUpstream(GOOD)
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    try:
        client, _ = await agent_factory(str(server.make_url("")).rstrip("/"))
        full = await client.get(f"/v2/{REPO}/blobs/{GOOD_DIGEST}")
        assert await full.read() == GOOD
        part = await client.get(f"/v2/{REPO}/blobs/{GOOD_DIGEST}", headers={"Range": "bytes=10-19"})
        assert part.status == 206 and await part.read() == GOOD[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(GOOD)}"
        bad = await client.get(
            f"/v2/{REPO}/blobs/{GOOD_DIGEST}", headers={"Range": f"bytes={len(GOOD)}-"}
        )
        assert bad.status == 416
        assert bad.headers["Content-Range"] == f"bytes */{len(GOOD)}"
        assert (await bad.json())["errors"][0]["code"] == "RANGE_INVALID"
    finally:
        await server.close()
