"""Self-tests of the namespace topology. Every client here runs inside a namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.clients import compare_dir_with_image, skopeo_copy, write_registries_conf
from testbed.images import build_image, push
from testbed.netns import Topology, list_namespaces, rate_bits
from testbed.procs import wait_for_port
from testbed.registry import Registry
from tests.conftest import TopologyFactory

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def test_two_hosts_talk_and_everything_is_deleted(topology: TopologyFactory) -> None:
    topo = topology(2)
    a, b = topo.hosts
    assert a.ip != b.ip and a.ip.rsplit(".", 1)[0] == b.ip.rsplit(".", 1)[0]
    server = a.popen([sys.executable, "-m", "http.server", "--bind", a.ip, "8000"])
    wait_for_port(a.ip, 8000, 15, netns=b.name)
    fetch = (
        "import urllib.request, sys;"
        f"r = urllib.request.urlopen('http://{a.ip}:8000/', timeout=10);"
        "print(r.status)"
    )
    res = b.run([sys.executable, "-c", fetch])
    assert res.stdout.strip() == "200"
    # The root namespace holds no route to the topology (reading the table sends nothing).
    routes = subprocess.run(
        ["ip", "route", "show"], check=True, capture_output=True, text=True
    ).stdout
    assert f"10.{topo.subnet}.0." not in routes
    names = {topo.switch, a.name, b.name}
    assert names <= set(list_namespaces())
    topo.close()
    assert server.poll() is not None, "server left running"
    assert not names & set(list_namespaces())


def test_tbf_shaping_is_installed(topology: TopologyFactory) -> None:
    topo = topology(2, upload={1: "100mbit"}, download={2: "50mbit"})
    up = topo.qdiscs(topo.host(1).name, "eth0")
    down = topo.qdiscs(topo.switch, topo.host(2).switch_port)
    assert "tbf" in up and "100Mbit" in up, up
    assert "tbf" in down and "50Mbit" in down, down
    assert "tbf" not in topo.qdiscs(topo.host(2).name, "eth0")


def test_setup_failing_halfway_deletes_what_was_made() -> None:
    topo = Topology(2, upload={2: "fast please"})
    with pytest.raises(ValueError, match="rate"):
        topo.__enter__()
    assert not [n for n in list_namespaces() if n.startswith(topo.prefix)]


def test_context_manager_cleans_up_on_error() -> None:
    prefix = None
    with pytest.raises(RuntimeError), Topology(1) as topo:
        prefix = topo.prefix
        topo.hosts[0].run(["ip", "link", "show", "eth0"])
        raise RuntimeError("test body failed")
    assert prefix is not None
    assert not [n for n in list_namespaces() if n.startswith(prefix)]


def test_rate_parsing() -> None:
    assert rate_bits("100mbit") == 100_000_000
    assert rate_bits("1.5gbit") == 1_500_000_000
    assert rate_bits(8000) == 8000
    with pytest.raises(ValueError):
        rate_bits("100 MB/s")


def test_registry_inside_a_namespace(topology: TopologyFactory, tmp_path: Path) -> None:
    topo = topology(2)
    server, client = topo.hosts
    with Registry(tmp_path / "reg", host=server.ip, netns=server.name) as reg:
        assert reg.host_port == f"{server.ip}:5000"
        # push() runs skopeo in the registry's namespace; the pull runs in the other host.
        image = push(build_image(tmp_path / "img", [20_000], seed=9), reg, "test/ns", "v1")
        conf = write_registries_conf(tmp_path / "r.conf", reg.host_port)
        skopeo_copy(image.ref, tmp_path / "out", conf, netns=client.name)
        compare_dir_with_image(tmp_path / "out", image)
        lines = reg.requests(kind="blobs", repo="test/ns", statuses=(200,))
        assert {line.remote for line in lines} == {client.ip}
        assert reg.blob_fetches(image.layers[0].digest) == 1
