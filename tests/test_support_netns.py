"""Self-tests of the namespace topology. Every client here runs inside a namespace."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TopologyFactory
from tests.support.netns import Topology, list_namespaces, rate_bits
from tests.support.procs import wait_for_port

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
