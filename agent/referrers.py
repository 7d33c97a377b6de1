"""OCI 1.1 referrers: ``GET /v2/<name>/referrers/<digest>``, what points at a manifest
(signatures, SBOMs, attestations pushed as artifacts with a ``subject``).

Relayed to the upstream with the client's credentials. An upstream without the API
(distribution 2.x answers 404) is answered from the referrers tag schema the spec defines for
it: clients that push to such registries keep an image index under the tag
``<algorithm>-<hex>`` of the subject, read here through the mirror like any tag. Either way
the answer is an OCI image index, filtered by ``artifactType`` when asked, and an empty index
when nothing refers to the subject.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.config import Upstream
from agent.errors import ManifestInvalid, RegistryError
from agent.mirror import Mirror
from agent.oci import Digest
from agent.upstream import UpstreamClient, ensure_ok, read_limited

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
FILTERS_HEADER = "OCI-Filters-Applied"
# An index of referrers is a list of descriptors; a few MiB is tens of thousands of them.
_MAX_BODY = 4 << 20
# RFC 6838 media type names, as artifactType values are.
_MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


def check_artifact_type(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not _MEDIA_TYPE.match(raw):
        raise RegistryError("artifactType must be a media type", status=400)
    return raw


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _filtered(index: dict[str, Any], artifact_type: str | None) -> dict[str, Any]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestInvalid("upstream referrers answer has no manifests list", status=502)
    if artifact_type is not None:
        manifests = [
            m for m in manifests if isinstance(m, dict) and m.get("artifactType") == artifact_type
        ]
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise ManifestInvalid("upstream referrers answer is not JSON", status=502) from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("upstream referrers answer is not an index", status=502)
    return doc


async def referrers(
    client: UpstreamClient,
    mirror: Mirror,
    upstream: Upstream,
    repo: str,
    subject: Digest,
    artifact_type: str | None,
    auth: str | None,
) -> tuple[bytes, bool]:
    """The referrers index of ``subject`` (JSON) and whether ``artifactType`` was applied."""
    query = {"artifactType": artifact_type} if artifact_type else {}
    async with client.request(
        upstream,
        "GET",
        f"/v2/{repo}/referrers/{subject}",
        client_auth=auth,
        query=query,
        headers={"Accept": OCI_INDEX},
    ) as resp:
        if resp.status != 404:
            await ensure_ok(resp, upstream.name)
            index = _parse(await read_limited(resp, _MAX_BODY))
            # Filtering again is harmless when the upstream did, and needed when it did not.
            answer = _filtered(index, artifact_type)
            return json.dumps(answer).encode(), artifact_type is not None
    # No referrers API upstream: the tag schema, through the mirror (cached like any tag).
    tag = f"{subject.algorithm}-{subject.hex}"
    try:
        stored = await mirror.manifest(upstream, repo, tag, OCI_INDEX, auth)
    except RegistryError as exc:
        if exc.status != 404:
            raise
        return json.dumps(empty_index()).encode(), artifact_type is not None
    answer = _filtered(_parse(stored.body), artifact_type)
    return json.dumps(answer).encode(), artifact_type is not None
