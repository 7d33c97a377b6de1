"""Which upstream a request goes to: a path-prefix login never hands the password to the
default upstream, and an unknown prefix is refused by name instead of being sent to the
default upstream.

The mirrored registry is a real htpasswd docker-registry reached by path prefix; the default
upstream is a fault injector that records the Authorization headers it receives (a real
registry's log does not show which credentials it was sent).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import mirror_prefix
from testbed import ALICE
from testbed.procs import run_checked
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.security.fault_hosts import FaultHost

pytestmark = pytest.mark.integration


async def lenient_registry(request: web.Request) -> web.StreamResponse:
    """Asks for Basic credentials and accepts any: a login there "succeeds" with anything."""
    headers = {"Docker-Distribution-API-Version": "registry/2.0"}
    if "Authorization" not in request.headers:
        headers["WWW-Authenticate"] = 'Basic realm="default"'
        return web.json_response({"errors": []}, status=401, headers=headers)
    return web.json_response({}, headers=headers)


async def test_path_prefix_login_sends_nothing_to_default_upstream(
    tmp_path: Path, htpasswd_registry: Registry, agent_factory: AgentFactory
) -> None:
    async with FaultHost("127.0.0.2", lenient_registry) as default:
        client, _ = await agent_factory(
            default.url,
            name=f"127.0.0.2:{default.port}",
            more_upstreams=[f"{htpasswd_registry.host_port}={htpasswd_registry.url}"],
        )
        mirror = f"127.0.0.1:{client.port}/{mirror_prefix(htpasswd_registry.host_port)}"
        await asyncio.to_thread(
            run_checked,
            ["skopeo", "login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], mirror],
            env={"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")},
            check=False,
        )
        assert json.loads((tmp_path / "auth.json").read_text())["auths"], "login stored nothing"
    assert default.credentials_seen() == [], "the password went to the default upstream"


async def test_unknown_path_prefix_is_named(
    registry: Registry, agent_factory: AgentFactory
) -> None:
    client, _ = await agent_factory(registry.url, name=registry.host_port)
    for path in (
        "/v2/127.0.0.1_18000/team/app/manifests/v1",
        "/v2/10.1.2.3/team/app/blobs/sha256:" + "a" * 64,
        "/v2/localhost/team/app/tags/list",
    ):
        resp = await client.get(path)
        body = await resp.json()
        assert resp.status == 404, body
        assert body["errors"][0]["code"] == "NAME_UNKNOWN"
        assert registry.host_port in body["errors"][0]["message"]
    assert registry.requests(methods=("GET", "HEAD")) == [], "nothing may reach the default"
