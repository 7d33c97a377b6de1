"""The cache across restarts, evictions and upstream outages, against a real registry."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from testbed.clients import compare_dir_with_image, skopeo_copy, write_registries_conf
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

MiB = 1 << 20


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        data: bytes = r.read()
        return data


def test_interrupted_download_resumes_with_range(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory(layers=(6 * MiB,))
    layer = image.layers[0]
    agent = agent_proc(registry)
    agent.stop()
    # What an agent killed mid-download leaves behind: the first part of the blob in partial/.
    partial = agent.data_dir / "partial" / f"sha256-{layer.digest.split(':')[1]}"
    done = 2 * MiB + 12345
    partial.write_bytes(image.blob(layer.digest)[:done])
    (agent.data_dir / "tmp" / "leftover").write_bytes(b"scratch from the killed run")
    agent.start()
    assert not (agent.data_dir / "tmp" / "leftover").exists()
    body = fetch(f"{agent.url}/v2/{image.repo}/blobs/{layer.digest}")
    assert body == image.blob(layer.digest)
    # The upstream served only the missing bytes, with a Range answer.
    lines = registry.requests(kind="blobs", reference=layer.digest, statuses=(206,))
    assert len(lines) == 1, registry.proc.log_tail()
    assert lines[0].bytes == layer.size - done
    assert registry.blob_fetches(layer.digest) == 1
    assert not partial.exists()


def test_corrupt_partial_is_fetched_again_not_served(
    registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    """A partial file whose bytes are wrong (disk damage) never reaches a client or the
    cache: resumed bytes are not streamed before the blob verified, and when it does not,
    the agent fetches it again whole while the client waits."""
    image = image_factory(layers=(2 * MiB,))
    layer = image.layers[0]
    agent = agent_proc(registry)
    agent.stop()
    partial = agent.data_dir / "partial" / f"sha256-{layer.digest.split(':')[1]}"
    partial.write_bytes(b"\0" * MiB)
    agent.start()
    assert fetch(f"{agent.url}/v2/{image.repo}/blobs/{layer.digest}") == image.blob(layer.digest)
    cached = agent.data_dir / "blobs" / "sha256" / layer.digest.split(":")[1]
    assert cached.read_bytes() == image.blob(layer.digest)
    # First the resume of the damaged partial (206), then the whole blob again (200).
    assert len(registry.requests(kind="blobs", reference=layer.digest, statuses=(206,))) == 1
    assert len(registry.requests(kind="blobs", reference=layer.digest, statuses=(200,))) == 1


def test_eviction_keeps_cache_within_size(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    first = image_factory("test/one", layers=(700 * 1024,))
    second = image_factory("test/two", layers=(700 * 1024,))
    agent = agent_proc(registry, "--cache-size", "1M")
    conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, agent.host_port)
    skopeo_copy(first.ref, tmp_path / "a", conf)
    skopeo_copy(second.ref, tmp_path / "b", conf)
    compare_dir_with_image(tmp_path / "b", second)
    assert agent.metric("layerswarm_cache_evictions_total") >= 1
    assert agent.metric("layerswarm_cache_bytes") <= MiB
    cached = {p.name for p in (agent.data_dir / "blobs" / "sha256").iterdir()}
    assert first.layers[0].digest.split(":")[1] not in cached
    assert second.layers[0].digest.split(":")[1] in cached
    # Pulling the first image again goes upstream again for its evicted layer.
    skopeo_copy(first.ref, tmp_path / "a2", conf)
    compare_dir_with_image(tmp_path / "a2", first)
    assert registry.blob_fetches(first.layers[0].digest) == 2


def test_pull_by_tag_while_upstream_down(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory(layers=(MiB,))
    # tag-ttl 0: every request revalidates the tag, so only the fallback can answer below.
    agent = agent_proc(registry, "--tag-ttl", "0s")
    conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, agent.host_port)
    skopeo_copy(image.ref, tmp_path / "before", conf)
    registry.stop()
    skopeo_copy(image.ref, tmp_path / "during", conf)
    compare_dir_with_image(tmp_path / "during", image)
    assert "serving last known digest" in agent.log()
    # After a restart too: the upstream's yes to anonymous pulls was kept (it is no secret).
    agent.stop()
    agent.start()
    skopeo_copy(image.ref, tmp_path / "after", conf)
    compare_dir_with_image(tmp_path / "after", image)
    registry.start()
    skopeo_copy(image.ref, tmp_path / "back", conf)
    compare_dir_with_image(tmp_path / "back", image)
