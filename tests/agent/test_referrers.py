"""OCI 1.1 referrers and artifacts through the mirror, against the real distribution registry.

distribution 2.8 has no referrers API, which is the case the spec's referrers tag schema is
for: the test pushes, as an artifact client would, an SBOM and a signature whose ``subject``
is an image, and the index of them under the tag ``sha256-<subject hex>``. The agent answers
``GET /v2/<name>/referrers/<digest>`` from that, filters by ``artifactType``, and serves the
artifacts themselves (any media type) like any manifest and blob.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/spdx+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(registry: Registry, repo: str, data: bytes) -> dict[str, Any]:
    """A monolithic upload through the distribution API (POST, then PUT with the digest)."""
    start = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=30) as resp:
        location = urllib.parse.urljoin(registry.url, resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{sep}digest={digest(data)}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 201
    return {"digest": digest(data), "size": len(data)}


def put_manifest(registry: Registry, repo: str, ref: str, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    req = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{ref}",
        data=body,
        method="PUT",
        headers={"Content-Type": doc["mediaType"]},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
    return body


@dataclass
class Artifact:
    manifest: bytes
    blob: bytes
    descriptor: dict[str, Any]


def push_artifact(
    registry: Registry, repo: str, artifact_type: str, payload: bytes, subject: dict[str, Any]
) -> Artifact:
    config = {"mediaType": EMPTY, **put_blob(registry, repo, b"{}")}
    layer = {"mediaType": artifact_type, **put_blob(registry, repo, payload)}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config,
        "layers": [layer],
        "subject": subject,
    }
    body = put_manifest(
        registry, repo, digest(json.dumps(doc, separators=(",", ":")).encode()), doc
    )
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": digest(body),
        "size": len(body),
        "artifactType": artifact_type,
    }
    return Artifact(body, payload, descriptor)


async def get(
    client: TestClient[Any, Any], path: str, accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    resp = await client.get(path, headers={"Accept": accept} if accept else {})
    return resp.status, dict(resp.headers), await resp.read()


async def test_referrers_and_artifacts_through_the_mirror(
    registry: Registry, image_factory: ImageFactory, agent_factory: AgentFactory
) -> None:
    image = image_factory("team/signed", "v1", [1000])
    subject = {
        "mediaType": OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": len(image.manifest),
    }
    sbom = push_artifact(registry, "team/signed", SBOM, b'{"spdxVersion":"SPDX-2.3"}', subject)
    sig = push_artifact(registry, "team/signed", SIG, b"signature bytes", subject)
    tag = image.manifest_digest.replace(":", "-")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [sbom.descriptor, sig.descriptor],
    }
    put_manifest(registry, "team/signed", tag, index)

    client, _ = await agent_factory(registry.url, name=registry.host_port)
    url = f"/v2/team/signed/referrers/{image.manifest_digest}"

    status, headers, body = await get(client, url)
    assert status == 200, body
    assert headers["Content-Type"] == OCI_INDEX
    assert json.loads(body)["manifests"] == [sbom.descriptor, sig.descriptor]

    status, headers, body = await get(client, f"{url}?artifactType={urllib.parse.quote(SBOM)}")
    assert status == 200 and headers.get("OCI-Filters-Applied") == "artifactType"
    assert json.loads(body)["manifests"] == [sbom.descriptor]

    # Nothing refers to the SBOM itself: an empty index, not an error.
    status, _, body = await get(client, f"/v2/team/signed/referrers/{sbom.descriptor['digest']}")
    assert status == 200 and json.loads(body) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }
    status, _, body = await get(client, f"{url}?artifactType=not%20a%20type")
    assert status == 400 and b"artifactType" in body

    # The artifacts pull like images: manifest by digest, then its blob of whatever type.
    for art in (sbom, sig):
        status, headers, body = await get(
            client, f"/v2/team/signed/manifests/{art.descriptor['digest']}", OCI_MANIFEST
        )
        assert status == 200 and body == art.manifest
        layer = json.loads(body)["layers"][0]
        status, _, blob = await get(client, f"/v2/team/signed/blobs/{layer['digest']}")
        assert status == 200 and blob == art.blob
