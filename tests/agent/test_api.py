"""The registry read API through the agent, against a real registry: HEAD answers, tag
lists, nested names, Docker's request shape (no ns), multi-platform indexes, preheat."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed.clients import compare_dir_with_image, skopeo_copy, write_registries_conf
from testbed.images import build_index, push_index
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_head_and_get_answers_match(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory("org/team/app", layers=(300 * 1024,))
    agent = agent_proc(registry)
    base = f"{agent.url}/v2/org/team/app"
    accept = {"Accept": OCI_MANIFEST}
    status, head, body = request(f"{base}/manifests/v1", "HEAD", accept)
    assert status == 200 and body == b""
    assert head["Docker-Content-Digest"] == image.manifest_digest
    assert head["Content-Type"] == OCI_MANIFEST
    assert int(head["Content-Length"]) == len(image.manifest)
    status, got, body = request(f"{base}/manifests/v1", headers=accept)
    assert status == 200 and body == image.manifest
    assert got["Docker-Content-Digest"] == image.manifest_digest
    status, _, body = request(f"{base}/manifests/{image.manifest_digest}", headers=accept)
    assert status == 200 and body == image.manifest
    layer = image.layers[0]
    status, head, body = request(f"{base}/blobs/{layer.digest}", "HEAD")
    assert status == 200 and body == b"" and int(head["Content-Length"]) == layer.size
    assert head["Docker-Content-Digest"] == layer.digest
    status, _, body = request(f"{base}/blobs/{layer.digest}")
    assert body == image.blob(layer.digest)
    # The tag is asked for with a HEAD upstream: its 404 has no body to relay, so the code
    # is the agent's, the spec's for what was asked.
    status, _, body = request(f"{base}/manifests/nope", headers=accept)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    missing = "sha256:" + "0" * 64
    status, _, body = request(f"{base}/blobs/{missing}")
    assert status == 404 and b"BLOB_UNKNOWN" in body


def test_tags_list_with_pagination(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    for tag in ("a", "b", "c"):
        image_factory("test/tags", tag=tag, layers=(1024,))
    agent = agent_proc(registry)
    status, _, body = request(f"{agent.url}/v2/test/tags/tags/list")
    assert status == 200 and sorted(json.loads(body)["tags"]) == ["a", "b", "c"]
    status, headers, body = request(f"{agent.url}/v2/test/tags/tags/list?n=2")
    first = json.loads(body)["tags"]
    assert len(first) == 2
    # The upstream's Link header (next page) is passed through.
    assert f"last={first[-1]}" in headers.get("Link", ""), headers
    status, _, body = request(f"{agent.url}/v2/test/tags/tags/list?n=2&last={first[-1]}")
    assert sorted(first + json.loads(body)["tags"]) == ["a", "b", "c"]


def test_docker_request_shape_goes_to_default_upstream(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    """Docker's registry-mirrors sends /v2/library/alpine/... with no ns for Docker Hub
    images; here the default upstream plays Docker Hub."""
    image = image_factory("library/alpine", tag="3.20", layers=(2048,))
    agent = agent_proc(registry)
    status, _, body = request(
        f"{agent.url}/v2/library/alpine/manifests/3.20", headers={"Accept": OCI_MANIFEST}
    )
    assert status == 200 and body == image.manifest


def test_multi_platform_index_through_agent(
    tmp_path: Path, registry: Registry, agent_proc: AgentProcFactory
) -> None:
    index = push_index(
        build_index(tmp_path / "idx", (200 * 1024,), tag="v1"), registry, "test/multi"
    )
    agent = agent_proc(registry)
    status, head, _ = request(
        f"{agent.url}/v2/test/multi/manifests/v1", headers={"Accept": OCI_INDEX}
    )
    assert status == 200 and head["Content-Type"] == OCI_INDEX
    assert head["Docker-Content-Digest"] == index.manifest_digest
    conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, agent.host_port)
    skopeo_copy(index.ref, tmp_path / "out", conf)
    # skopeo picks this machine's platform from the index; its blobs arrive byte for byte.
    amd64 = next(i for i in index.images if i.local.platform == ("linux", "amd64"))
    compare_dir_with_image(tmp_path / "out", amd64)
    for digest in amd64.blob_digests:
        assert registry.blob_fetches(digest) == 1
