"""Configured and client credentials go only to the upstream's own host and to the token
realm its own ``/v2/`` challenge names; never to a host a redirect reached, never to a
plain-http realm on another host.

The upstream is a real docker-registry; its "redirect" storage middleware sends blob GETs to
another loopback host, as S3/CDN-backed registries do. That host, and any realm it names, is
a fault injector (tests/security/fault_hosts.py) recording what reaches it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from aiohttp import web

from testbed import ALICE, HTPASSWD_USERS
from testbed.procs import require_binary
from testbed.registry import Registry
from testbed.tokenissuer import TokenIssuer
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory
from tests.security.fault_hosts import FaultHost, challenge, storage, token_grabber

pytestmark = pytest.mark.integration


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def creds_file(path: Path, upstream: str) -> Path:
    path.write_text(json.dumps({upstream: {"username": ALICE[0], "password": ALICE[1]}}))
    return path


def redirecting_registry(tmp_path: Path, target: FaultHost) -> Registry:
    require_binary("docker-registry")
    return Registry(
        tmp_path / "reg", htpasswd=HTPASSWD_USERS, redirect_baseurl=target.url + "/"
    ).start()


async def test_redirect_target_challenge_gets_no_credentials(
    tmp_path: Path, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    async with (
        FaultHost("127.0.0.3", token_grabber()) as realm,
        FaultHost("127.0.0.2", challenge(realm.url + "/token")) as hostile,
    ):
        reg = redirecting_registry(tmp_path, hostile)
        try:
            image = image_factory("team/app", registry=reg, layers=(64 * 1024,))
            layer = image.layers[0].digest
            client, _ = await agent_factory(
                reg.url,
                name=reg.host_port,
                credentials_file=creds_file(tmp_path / "creds.yaml", reg.host_port),
            )
            for auth in (None, basic(*ALICE)):
                headers = {"Authorization": auth} if auth else {}
                resp = await client.get(f"/v2/team/app/blobs/{layer}", headers=headers)
                body = await resp.read()
                # The storage host's refusal is the upstream's failure, not a challenge for
                # our client to answer (relaying it would send the client to that realm).
                assert resp.status == 502, body
                assert "WWW-Authenticate" not in resp.headers
        finally:
            reg.stop()
    assert hostile.seen, "the registry should have redirected the blob GET"
    assert hostile.credentials_seen() == []
    assert realm.seen == [], "the hostile realm must never be asked for a token"


async def test_storage_redirect_followed_without_credentials(
    tmp_path: Path, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    reg_data = tmp_path / "reg" / "data"
    async with FaultHost("127.0.0.2", storage(reg_data)) as store:
        reg = redirecting_registry(tmp_path, store)
        try:
            image = image_factory("team/app", registry=reg, layers=(64 * 1024, 32 * 1024))
            client, _ = await agent_factory(
                reg.url,
                name=reg.host_port,
                credentials_file=creds_file(tmp_path / "creds.yaml", reg.host_port),
            )
            first, second = (layer.digest for layer in image.layers)
            # Configured credentials (client sends none) and the client's own.
            resp = await client.get(f"/v2/team/app/blobs/{first}")
            assert resp.status == 200 and await resp.read() == image.blob(first)
            resp = await client.get(
                f"/v2/team/app/blobs/{second}", headers={"Authorization": basic(*ALICE)}
            )
            assert resp.status == 200 and await resp.read() == image.blob(second)
        finally:
            reg.stop()
    assert len([s for s in store.seen if s.method == "GET"]) >= 2
    assert store.credentials_seen() == []


async def test_token_realm_must_be_the_one_v2_names(
    tmp_path: Path, agent_factory: AgentFactory
) -> None:
    """A hostile upstream names another realm on a repository path than on ``/v2/``.

    Both realms are on the upstream's own host name, so only the ``/v2/`` rule refuses it.
    """
    async with (
        FaultHost("127.0.0.2", token_grabber()) as own_realm,
        FaultHost("127.0.0.2", token_grabber()) as other_realm,
    ):

        async def two_faced(request: web.Request) -> web.StreamResponse:
            realm = own_realm.url if request.path.rstrip("/") == "/v2" else other_realm.url
            return await challenge(realm + "/token")(request)

        async with FaultHost("127.0.0.2", two_faced) as upstream:
            name = f"127.0.0.2:{upstream.port}"
            client, _ = await agent_factory(
                upstream.url,
                name=name,
                credentials_file=creds_file(tmp_path / "creds.yaml", name),
            )
            resp = await client.get(f"/v2/team/app/blobs/sha256:{'a' * 64}")
            assert resp.status == 401
    assert other_realm.seen == []


async def test_plain_http_realm_on_other_host_gets_no_credentials(
    tmp_path: Path, agent_factory: AgentFactory
) -> None:
    async with FaultHost("127.0.0.3", token_grabber()) as evil_realm:
        handler = challenge(evil_realm.url + "/token")
        async with FaultHost("127.0.0.2", handler) as upstream:
            name = f"127.0.0.2:{upstream.port}"
            client, _ = await agent_factory(
                upstream.url,
                name=name,
                credentials_file=creds_file(tmp_path / "creds.yaml", name),
            )
            resp = await client.get(f"/v2/team/app/blobs/sha256:{'a' * 64}")
            assert resp.status == 401
    assert evil_realm.credentials_seen() == []


async def test_configured_credentials_reach_the_named_realm(
    tmp_path: Path,
    token_registry: Registry,
    token_issuer: TokenIssuer,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
) -> None:
    """The legitimate flow still works: the realm /v2/ names gets the configured login."""
    image = image_factory("private/app", registry=token_registry, layers=(64 * 1024,))
    layer = image.layers[0].digest
    client, _ = await agent_factory(
        token_registry.url,
        name=token_registry.host_port,
        credentials_file=creds_file(tmp_path / "creds.yaml", token_registry.host_port),
    )
    resp = await client.get(f"/v2/private/app/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == image.blob(layer)
    assert token_issuer.token_count("alice") >= 1
