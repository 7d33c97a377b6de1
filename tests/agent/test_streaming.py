"""One upstream download feeds every waiting client as bytes arrive, and outlives them.

The upstream here is a fault injector: it sends a blob chunk by chunk, each chunk released
by the test, which a real registry can't do on demand. That makes "the first byte reached
the client before the upstream finished" an assertion about order, not about time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.agent.conftest import AgentFactory

CHUNK = 256 * 1024
CHUNKS = 16
BLOB = os.urandom(CHUNK * CHUNKS)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
REPO = "team/app"


class GatedUpstream:
    def __init__(self) -> None:
        self.gets = 0
        self.sent = 0
        self.release = asyncio.Semaphore(0)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(BLOB))})
        self.gets += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(BLOB)
        await resp.prepare(request)
        for i in range(CHUNKS):
            await self.release.acquire()
            await resp.write(BLOB[i * CHUNK : (i + 1) * CHUNK])
            self.sent += 1
        await resp.write_eof()
        return resp


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedUpstream, str]]:
    up = GatedUpstream()
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    yield up, str(server.make_url("")).rstrip("/")
    await server.close()


async def read_at_least(resp: object, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await resp.content.readany()  # type: ignore[attr-defined]  # aiohttp ClientResponse
        assert chunk, "response ended early"
        buf += chunk
    return buf


async def test_clients_stream_before_the_upstream_finishes(
    agent_factory: AgentFactory, gated: tuple[GatedUpstream, str]
) -> None:
    up, url = gated
    client, _ = await agent_factory(url)
    first = await client.get(f"/v2/{REPO}/blobs/{DIGEST}")
    second = await client.get(f"/v2/{REPO}/blobs/{DIGEST}")
    assert first.status == second.status == 200
    assert first.headers["Content-Length"] == str(len(BLOB))
    up.release.release()  # one chunk only
    up.release.release()
    head1 = await asyncio.wait_for(read_at_least(first, CHUNK), 30)
    head2 = await asyncio.wait_for(read_at_least(second, CHUNK), 30)
    # Both clients have bytes while the upstream has sent 2 of its 16 chunks.
    assert up.sent <= 2
    for _ in range(CHUNKS):
        up.release.release()
    rest1 = await asyncio.wait_for(first.read(), 30)
    rest2 = await asyncio.wait_for(second.read(), 30)
    assert head1 + rest1 == BLOB and head2 + rest2 == BLOB
    assert up.gets == 1


async def test_download_survives_the_client_that_started_it(
    agent_factory: AgentFactory, gated: tuple[GatedUpstream, str]
) -> None:
    up, url = gated
    client, rt = await agent_factory(url)
    leaver = await client.get(f"/v2/{REPO}/blobs/{DIGEST}")
    up.release.release()
    await asyncio.wait_for(read_at_least(leaver, 1), 30)
    leaver.close()  # the client that caused the download goes away mid-blob
    for _ in range(CHUNKS):
        up.release.release()
    for _ in range(300):
        if rt.store.digests():
            break
        await asyncio.sleep(0.05)
    blob_path = rt.store.path_for(rt.store.digests()[0])
    assert blob_path.read_bytes() == BLOB
    later = await client.get(f"/v2/{REPO}/blobs/{DIGEST}")
    assert await later.read() == BLOB
    assert up.gets == 1


async def test_client_range_on_a_download_in_progress(
    agent_factory: AgentFactory, gated: tuple[GatedUpstream, str]
) -> None:
    up, url = gated
    client, _ = await agent_factory(url)
    start, end = 3 * CHUNK + 17, 5 * CHUNK + 99
    resp = await client.get(f"/v2/{REPO}/blobs/{DIGEST}", headers={"Range": f"bytes={start}-{end}"})
    for _ in range(CHUNKS):
        up.release.release()
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert await asyncio.wait_for(resp.read(), 30) == BLOB[start : end + 1]
