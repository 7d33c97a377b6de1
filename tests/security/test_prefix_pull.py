"""A private image pulls through a path-prefix mirror entry while the default upstream is
public (once, the ping named the default upstream's answer, so the client never sent its
credentials)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import mirror_prefix
from testbed import ALICE
from testbed.agent import AgentProc
from testbed.clients import compare_dir_with_image, skopeo_copy_logged_in
from testbed.registry import Registry
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_private_prefix_pull_with_public_default(
    tmp_path: Path,
    registry: Registry,
    image_factory: ImageFactory,
    request: pytest.FixtureRequest,
    auth: str,
) -> None:
    """With a token registry the client sends Basic credentials (the mirror's challenge), and
    the agent trades them for a token at the realm that registry's own /v2/ names."""
    private: Registry = request.getfixturevalue(f"{auth}_registry")
    repo = "private/secret"  # alice may pull private/* from the token issuer
    image = image_factory(repo, registry=private, layers=(64 * 1024,))
    htpasswd_registry = private
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url, htpasswd_registry.host_port: htpasswd_registry.url},
        default_upstream=registry.host_port,
        extra=["--no-p2p"],
    ).start()
    try:
        mirror = f"{agent.host_port}/{mirror_prefix(htpasswd_registry.host_port)}"
        conf = tmp_path / "r.conf"
        conf.write_text(
            "unqualified-search-registries = []\n\n[[registry]]\n"
            f'location = "{htpasswd_registry.host_port}"\ninsecure = true\n\n'
            f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'
        )
        # Credentials only for the mirror entry: the registry itself would refuse this client,
        # so only a pull through the agent can succeed.
        skopeo_copy_logged_in(image.ref, tmp_path / "out", conf, ALICE, [mirror])
        compare_dir_with_image(tmp_path / "out", image)
        assert htpasswd_registry.blob_fetches(image.layers[0].digest) == 1
        assert "kind=blob status=200" in agent.log()
    finally:
        agent.stop()
