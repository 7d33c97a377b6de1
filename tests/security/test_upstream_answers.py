"""What the agent does with the upstream's answers: a HEAD for an uncached
blob is the upstream's HEAD, not a download; a tag list's next-page link keeps ``?ns=``; a
manifest answered with a media type that is not a manifest's is refused, not relayed."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory
from tests.security.fault_hosts import FaultHost

pytestmark = pytest.mark.integration


async def test_head_of_uncached_blob_downloads_nothing(
    registry: Registry, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    image = image_factory("head/app", layers=(512 * 1024,))
    layer = image.layers[0].digest
    client, runtime = await agent_factory(registry.url, name=registry.host_port)
    resp = await client.head(f"/v2/head/app/blobs/{layer}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(image.blob(layer)))
    assert resp.headers["Docker-Content-Digest"] == layer
    assert registry.blob_fetches(layer) == 0, "a HEAD must not download the blob"
    heads = registry.requests(kind="blobs", reference=layer, methods=("HEAD",))
    assert len([h for h in heads if "aiohttp" in h.user_agent]) == 1, "one HEAD by the agent"
    # Absent blobs are the upstream's 404.
    missing = "sha256:" + "0" * 64
    resp = await client.head(f"/v2/head/app/blobs/{missing}")
    assert resp.status == 404
    assert not list((runtime.config.data_dir / "partial").iterdir())


async def test_tag_list_link_keeps_ns(
    registry: Registry, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    for tag in ("a", "b", "c"):
        image_factory("tags/app", tag=tag, layers=(1024,))
    client, _ = await agent_factory(registry.url, name=registry.host_port)
    resp = await client.get("/v2/tags/app/tags/list", params={"n": "1", "ns": registry.host_port})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["tags"] == ["a"]
    link = resp.headers["Link"]
    url = link[link.index("<") + 1 : link.index(">")]
    query = parse_qs(urlsplit(url).query)
    assert query["ns"] == [registry.host_port]
    assert urlsplit(url).path == "/v2/tags/app/tags/list"
    resp = await client.get(url)
    assert (await resp.json())["tags"] == ["b"]


async def html_manifests(request: web.Request) -> web.StreamResponse:
    """A fault injector: a captive portal that answers everything with an HTML page."""
    if request.path.rstrip("/") == "/v2":
        return web.json_response({})
    return web.Response(text="<html>please log in</html>", content_type="text/html")


async def test_non_manifest_media_type_refused(agent_factory: AgentFactory) -> None:
    async with FaultHost("127.0.0.2", html_manifests) as portal:
        client, runtime = await agent_factory(portal.url, name=f"127.0.0.2:{portal.port}")
        for ref in ("v1", "sha256:" + "1" * 64):
            resp = await client.get(f"/v2/some/app/manifests/{ref}")
            body = await resp.json()
            assert resp.status == 502, body
            assert body["errors"][0]["code"] == "MANIFEST_INVALID"
            assert "text/html" in body["errors"][0]["message"]
    assert not any((runtime.config.data_dir).rglob("*please*"))
