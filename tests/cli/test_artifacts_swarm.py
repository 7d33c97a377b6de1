"""An OCI artifact (an SBOM-sized model file of a media type no runtime knows) pulled by two
agents of one region: the upstream serves its blob once, the second agent gets it from the
first over the swarm. Real registry, real tracker, two real agents on loopback.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from testbed.agent import AgentProc
from tests.agent.test_referrers import EMPTY, OCI_MANIFEST, put_blob, put_manifest
from tests.cli.conftest import Node

pytestmark = pytest.mark.integration

MiB = 1 << 20
MODEL = "application/vnd.example.model.v1+tar"


def pull(agent_url: str, repo: str, digest: str, accept: str | None = None) -> bytes:
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request(f"{agent_url}/v2/{repo}/{digest}", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        body: bytes = resp.read()
        return body


def test_an_artifact_blob_crosses_the_wan_once_and_the_swarm_after(node: Node) -> None:
    repo = "team/models"
    payload = os.urandom(4 * MiB)
    config = {"mediaType": EMPTY, **put_blob(node.registry, repo, b"{}")}
    layer = {"mediaType": MODEL, **put_blob(node.registry, repo, payload)}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODEL,
        "config": config,
        "layers": [layer],
    }
    manifest = put_manifest(node.registry, repo, "v1", doc)

    peer = AgentProc(
        node.agent.workdir.parent / "peer",
        {node.registry.host_port: node.registry.url},
        default_upstream=node.registry.host_port,
        extra=[
            *node.tracker_args,
            "--zone", "z1", "--region", "r1",
            # The seed's segment size (the default): it must be the same across a fleet.
            "--peer-listen", "127.0.0.1:0", "--advertise-address", "127.0.0.1",
        ],
    ).start()  # fmt: skip
    try:
        for agent in (node.agent.url, peer.url):
            assert pull(agent, repo, "manifests/v1", OCI_MANIFEST) == manifest
            got = json.loads(manifest)["layers"][0]["digest"]
            assert pull(agent, repo, f"blobs/{got}") == payload
        assert node.registry.blob_fetches(layer["digest"]) == 1, node.logs()
        assert peer.metric("layerswarm_peer_received_bytes_total") >= len(payload), peer.log()
    finally:
        peer.stop()
