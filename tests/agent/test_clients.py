"""Real clients (skopeo, podman, containerd's ctr) pull through a real agent from a real
registry; every pulled blob is compared byte for byte and the registry's access log says
how often the upstream really served each blob."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from agent.config import mirror_prefix
from testbed.clients import (
    Containerd,
    Podman,
    compare_dir_with_image,
    skopeo_copy,
    write_hosts_toml,
    write_registries_conf,
)
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

MiB = 1 << 20


def test_skopeo_through_path_prefix_mirror(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory(layers=(3 * MiB, 1 * MiB))
    agent = agent_proc(registry, default=False)
    # The podman/CRI-O/skopeo way: the registry named as a path prefix of the mirror.
    prefix = mirror_prefix(registry.host_port)
    conf = write_registries_conf(
        tmp_path / "r.conf", registry.host_port, f"{agent.host_port}/{prefix}"
    )
    skopeo_copy(image.ref, tmp_path / "out", conf)
    compare_dir_with_image(tmp_path / "out", image)
    for digest in image.blob_digests:
        assert registry.blob_fetches(digest) == 1, registry.proc.log_tail()
    # A second pull is served from the agent's cache: the upstream sees no more blob GETs.
    skopeo_copy(image.ref, tmp_path / "out2", conf)
    compare_dir_with_image(tmp_path / "out2", image)
    for digest in image.blob_digests:
        assert registry.blob_fetches(digest) == 1
    assert agent.metric("layerswarm_served_bytes_total", 'source="cache"') >= 4 * MiB
    assert (
        agent.metric("layerswarm_upstream_bytes_total", f'upstream="{registry.host_port}"')
        < 5 * MiB
    )


def test_podman_pulls_through_agent(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory(layers=(2 * MiB,), media_type="docker")
    agent = agent_proc(registry)
    conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, agent.host_port)
    podman = Podman(tmp_path / "podman", conf)
    try:
        podman.pull(image.ref)
        podman.verify_image(image)
    finally:
        podman.cleanup()
    for digest in image.blob_digests:
        assert registry.blob_fetches(digest) == 1
    assert "kind=blob status=200" in agent.log()


def test_containerd_pulls_through_agent_with_ns(
    tmp_path: Path,
    registry: Registry,
    image_factory: ImageFactory,
    agent_proc: AgentProcFactory,
    containerd: Containerd,
) -> None:
    image = image_factory(layers=(2 * MiB, 512 * 1024))
    # No default upstream for this registry: only containerd's ?ns= can route the request.
    agent = agent_proc(registry, default=False)
    hosts = write_hosts_toml(tmp_path / "certs.d", registry.host_port, agent.url)
    containerd.pull(image.ref, hosts)
    containerd.verify_image(image)
    for digest in image.blob_digests:
        assert registry.blob_fetches(digest) == 1
    assert f"upstream={registry.host_port}" in agent.log()


def test_concurrent_pulls_fetch_each_blob_once(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory, agent_proc: AgentProcFactory
) -> None:
    image = image_factory(layers=(8 * MiB, 4 * MiB, 1 * MiB))
    agent = agent_proc(registry)
    conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, agent.host_port)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(skopeo_copy, image.ref, tmp_path / f"out{i}", conf) for i in range(6)
        ]
        for f in futures:
            f.result(timeout=240)
    for i in range(6):
        compare_dir_with_image(tmp_path / f"out{i}", image)
    for layer in image.layers:
        assert registry.blob_fetches(layer.digest) == 1, registry.proc.log_tail(80)
