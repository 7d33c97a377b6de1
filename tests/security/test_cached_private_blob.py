"""A cached private blob is served only when an upstream it came from says yes for that
client, not when whichever upstream the client names does.

Upstream A is a real htpasswd docker-registry holding a private layer; upstream B is a fault
injector that answers yes to everything, as a lenient or hostile registry would.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from aiohttp import web

from testbed import ALICE
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory
from tests.security.fault_hosts import FaultHost

pytestmark = pytest.mark.integration


OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


async def says_yes(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, headers={"Content-Length": "2"})


async def test_other_upstream_cannot_vouch_for_cached_blob(
    tmp_path: Path,
    htpasswd_registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory("team/secret", registry=htpasswd_registry, layers=(64 * 1024,))
    layer = image.layers[0].digest
    alice = "Basic " + base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
    async with FaultHost("127.0.0.2", says_yes) as lenient:
        b_name = f"127.0.0.2:{lenient.port}"
        for run in range(2):  # the second run is a restarted agent on the same cache
            client, _ = await agent_factory(
                htpasswd_registry.url,
                name=htpasswd_registry.host_port,
                more_upstreams=[f"{b_name}={lenient.url}"],
                data_dir=tmp_path / "agent",
            )
            if run == 0:
                resp = await client.get(
                    f"/v2/team/secret/blobs/{layer}", headers={"Authorization": alice}
                )
                assert resp.status == 200 and await resp.read() == image.blob(layer)
            resp = await client.get(f"/v2/team/secret/blobs/{layer}", params={"ns": b_name})
            body = await resp.read()
            assert resp.status == 404, body[:300]
            assert image.blob(layer) not in body
            # The upstream it came from still decides for its own clients.
            resp = await client.get(f"/v2/team/secret/blobs/{layer}")
            assert resp.status == 401
            resp = await client.get(
                f"/v2/team/secret/blobs/{layer}", headers={"Authorization": alice}
            )
            assert resp.status == 200 and await resp.read() == image.blob(layer)
            await client.close()
    assert htpasswd_registry.blob_fetches(layer) == 1


async def test_other_upstream_cannot_vouch_for_cached_manifest(
    tmp_path: Path,
    htpasswd_registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    image = image_factory("team/secret", registry=htpasswd_registry, layers=(1024,))
    alice = "Basic " + base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()

    async def claims_it(request: web.Request) -> web.StreamResponse:
        """A lenient or hostile registry: says it has that manifest, under any tag."""
        return web.Response(
            text="{}",
            content_type="application/vnd.oci.image.manifest.v1+json",
            headers={"Docker-Content-Digest": image.manifest_digest},
        )

    async with FaultHost("127.0.0.2", claims_it) as lenient:
        b_name = f"127.0.0.2:{lenient.port}"
        client, _ = await agent_factory(
            htpasswd_registry.url,
            name=htpasswd_registry.host_port,
            more_upstreams=[f"{b_name}={lenient.url}"],
        )
        for ref in ("v1", image.manifest_digest):
            resp = await client.get(
                f"/v2/team/secret/manifests/{ref}", headers={"Authorization": alice, **OCI}
            )
            got = await resp.read()
            assert resp.status == 200 and got == image.manifest, (ref, got[:300])
        for ref in ("v1", image.manifest_digest):
            resp = await client.get(
                f"/v2/team/secret/manifests/{ref}", params={"ns": b_name}, headers=OCI
            )
            body = await resp.read()
            assert body != image.manifest and resp.status >= 400, (ref, resp.status, body[:200])
