"""Self-tests of the real clients (skopeo, podman, containerd) pulling from a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import ALICE
from testbed.clients import (
    Containerd,
    Podman,
    compare_dir_with_image,
    processes_mentioning,
    skopeo_copy,
    write_hosts_toml,
    write_registries_conf,
)
from testbed.images import build_index, push_index
from testbed.procs import free_port
from testbed.registry import Registry
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


def test_skopeo_falls_back_to_registry_when_mirror_is_down(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/mirrored", "v1", [30_000])
    # Nothing listens on the mirror port: skopeo must try it, fail, and use the registry.
    mirror = f"127.0.0.1:{free_port()}"
    conf = write_registries_conf(tmp_path / "registries.conf", registry.host_port, mirror)
    text = conf.read_text()
    assert f'location = "{mirror}"' in text and "[[registry.mirror]]" in text
    skopeo_copy(image.ref, tmp_path / "out", conf)
    compare_dir_with_image(tmp_path / "out", image)


def test_skopeo_uses_the_mirror_first(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/via-mirror", "v1", [30_000])
    # A pull-through registry stands in for the agent: the upstream sees only its requests.
    with Registry(tmp_path / "mirror", proxy_remoteurl=registry.url, name="mirror") as mirror:
        conf = write_registries_conf(tmp_path / "r.conf", registry.host_port, mirror.host_port)
        skopeo_copy(image.ref, tmp_path / "out", conf)
        compare_dir_with_image(tmp_path / "out", image)
        assert mirror.blob_fetches(image.layers[0].digest) == 1
    upstream_agents = {
        line.user_agent for line in registry.requests(kind="blobs", repo="test/via-mirror")
    }
    assert upstream_agents and not any(a.startswith("skopeo") for a in upstream_agents)


def test_podman_pull_stores_the_image(
    registry: Registry, image_factory: ImageFactory, podman: Podman, tmp_path: Path
) -> None:
    image = image_factory("test/podman", "v1", [200_000, 20_000])
    podman.registries_conf = write_registries_conf(tmp_path / "r.conf", registry.host_port)
    podman.pull(image.ref)
    got = podman.verify_image(image)
    assert f"{registry.host_port}/test/podman@{image.manifest_digest}" in got.repo_digests
    for layer in image.layers:
        assert registry.blob_fetches(layer.digest) == 1
    assert not processes_mentioning(str(podman.root)), "podman left a process behind"


def test_podman_with_credentials(
    htpasswd_registry: Registry, image_factory: ImageFactory, podman: Podman, tmp_path: Path
) -> None:
    image = image_factory("private/p", "v1", [20_000], registry=htpasswd_registry)
    podman.registries_conf = write_registries_conf(tmp_path / "r.conf", htpasswd_registry.host_port)
    assert podman.pull(image.ref, check=False).returncode != 0
    podman.pull(image.ref, ALICE)
    podman.verify_image(image)


def test_containerd_pull_with_hosts_toml(
    registry: Registry, image_factory: ImageFactory, containerd: Containerd, tmp_path: Path
) -> None:
    image = image_factory("test/ctr", "v1", [200_000, 20_000], media_type="docker")
    hosts = write_hosts_toml(tmp_path / "certs.d", registry.host_port)
    assert (
        (hosts / registry.host_port / "hosts.toml")
        .read_text()
        .startswith(f'server = "http://{registry.host_port}"')
    )
    containerd.pull(image.ref, hosts)
    containerd.verify_image(image)
    for layer in image.layers:
        assert registry.blob_fetches(layer.digest) == 1
    agents = {line.user_agent for line in registry.requests(kind="blobs", repo="test/ctr")}
    assert all(a.startswith("containerd/") for a in agents), agents


def test_containerd_goes_through_the_mirror_in_hosts_toml(
    registry: Registry, image_factory: ImageFactory, containerd: Containerd, tmp_path: Path
) -> None:
    image = image_factory("test/ctr-mirror", "v1", [20_000])
    with Registry(tmp_path / "mirror", proxy_remoteurl=registry.url, name="mirror") as mirror:
        hosts = write_hosts_toml(tmp_path / "certs.d", registry.host_port, mirror.url)
        containerd.pull(image.ref, hosts)
        containerd.verify_image(image)
        mirrored = mirror.requests(kind="blobs", repo="test/ctr-mirror")
    assert mirrored, "containerd did not use the mirror"
    # containerd names the registry the image belongs to in every mirror request.
    assert all(f"ns={registry.host_port.replace(':', '%3A')}" in x.path for x in mirrored)


def test_containerd_all_platforms_of_an_index(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    index = push_index(build_index(tmp_path / "idx", [10_000], seed=5), registry, "test/m", "v1")
    hosts = write_hosts_toml(tmp_path / "certs.d", registry.host_port)
    containerd.pull(index.ref, hosts, all_platforms=True)
    present = containerd.content_digests()
    for img in index.images:
        assert {img.manifest_digest, *img.blob_digests} <= present


def test_containerd_stops_cleanly(tmp_path: Path) -> None:
    ctrd = Containerd(tmp_path / "c").start()
    pid = ctrd.proc.pid
    ctrd.stop()
    assert not ctrd.proc.running
    assert pid not in processes_mentioning(str(ctrd.config_path))
