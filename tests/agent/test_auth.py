"""Credentials pass through the agent to the upstream, and cached content is never served
to a client the upstream would refuse (htpasswd and bearer-token registries, both real)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed import ALICE, BOB
from testbed.clients import (
    compare_dir_with_image,
    skopeo_copy,
    skopeo_copy_logged_in,
    write_registries_conf,
)
from testbed.registry import Registry
from testbed.tokenissuer import TokenIssuer
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


def get(url: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_htpasswd_upstream(
    tmp_path: Path,
    htpasswd_registry: Registry,
    image_factory: ImageFactory,
    agent_proc: AgentProcFactory,
) -> None:
    image = image_factory("team/secret", registry=htpasswd_registry, layers=(1 << 20,))
    agent = agent_proc(htpasswd_registry)
    conf = write_registries_conf(tmp_path / "r.conf", htpasswd_registry.host_port, agent.host_port)
    skopeo_copy_logged_in(image.ref, tmp_path / "alice", conf, ALICE, [agent.host_port])
    compare_dir_with_image(tmp_path / "alice", image)
    layer = image.layers[0].digest
    assert htpasswd_registry.blob_fetches(layer) == 1
    assert "kind=blob status=200" in agent.log()

    # The blob is now in the agent's cache; a client without credentials still gets the
    # upstream's challenge, unchanged, and no bytes.
    status, headers, body = get(f"{agent.url}/v2/team/secret/blobs/{layer}")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert len(body) < 1000
    status, _, _ = get(f"{agent.url}/v2/team/secret/blobs/{layer}", basic("alice", "wrong"))
    assert status == 401
    # With the right credentials it comes from the cache, not the upstream again.
    status, _, body = get(f"{agent.url}/v2/team/secret/blobs/{layer}", basic(*ALICE))
    assert status == 200 and body == image.blob(layer)
    assert htpasswd_registry.blob_fetches(layer) == 1
    # The credentials never reached the agent's disk or log.
    assert "alice-pw" not in agent.log()
    for p in agent.data_dir.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 << 20:
            assert b"alice-pw" not in p.read_bytes(), p
            assert base64.b64encode(b"alice:alice-pw") not in p.read_bytes(), p


def test_token_upstream_private_layer_not_leaked(
    tmp_path: Path,
    token_registry: Registry,
    token_issuer: TokenIssuer,
    image_factory: ImageFactory,
    agent_proc: AgentProcFactory,
) -> None:
    image = image_factory("private/app", registry=token_registry, layers=(1 << 20,))
    agent = agent_proc(token_registry)
    conf = write_registries_conf(tmp_path / "r.conf", token_registry.host_port, agent.host_port)
    skopeo_copy_logged_in(image.ref, tmp_path / "alice", conf, ALICE, [agent.host_port])
    compare_dir_with_image(tmp_path / "alice", image)
    layer = image.layers[0].digest
    assert token_registry.blob_fetches(layer) == 1
    assert "kind=blob status=200" in agent.log()
    assert token_issuer.token_count("alice") >= 1

    # bob has a valid login but no grant on private/*: refused though the layer is cached.
    # bob may not fall back to the registry itself: only the agent can answer him here.
    bob = skopeo_copy_logged_in(
        image.ref, tmp_path / "bob", conf, BOB, [agent.host_port], check=False
    )
    assert bob.returncode != 0
    assert not (tmp_path / "bob" / layer.split(":")[1]).exists()
    # Anonymous: the registry's own bearer challenge comes back through the agent.
    status, headers, _ = get(f"{agent.url}/v2/private/app/blobs/{layer}")
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=") and token_issuer.realm in challenge
    # Asking for the cached layer under a repository bob may read doesn't work either.
    status, _, _ = get(f"{agent.url}/v2/public/anything/blobs/{layer}")
    assert status in (401, 403, 404)
    # The agent never asked the token issuer for anything itself: it holds no credentials.
    assert {i.user for i in token_issuer.issued} <= {"alice", "bob", "pusher", None}
    served = agent.metric("layerswarm_served_bytes_total", 'source="cache"')
    assert served == 0, "nothing may have been served from the cache to bob or anonymous"


def test_configured_credentials_used_when_client_sends_none(
    tmp_path: Path,
    htpasswd_registry: Registry,
    image_factory: ImageFactory,
    agent_proc: AgentProcFactory,
) -> None:
    image = image_factory("team/ops", registry=htpasswd_registry, layers=(256 * 1024,))
    creds = tmp_path / "creds.yaml"
    creds.write_text(
        json.dumps({htpasswd_registry.host_port: {"username": ALICE[0], "password": ALICE[1]}})
    )
    agent = agent_proc(htpasswd_registry, "--credentials-file", str(creds))
    conf = write_registries_conf(tmp_path / "r.conf", htpasswd_registry.host_port, agent.host_port)
    skopeo_copy(image.ref, tmp_path / "out", conf)
    compare_dir_with_image(tmp_path / "out", image)
    assert htpasswd_registry.blob_fetches(image.layers[0].digest) == 1
    assert ALICE[1] not in agent.log()
