"""Per-agent identity at the tracker: over HTTPS with --agent-ca-file, an agent request is
accepted only under the name on the client certificate, so the fleet token (even with an
agent's key) is not enough to speak for another node. Real tracker and agent processes."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.p2p.pki import generate_ca, generate_key_and_csr, sign_csr
from core.trackerclient import HttpTrackerClient
from core.trackererrors import Forbidden, Unauthorized
from core.wire import AgentInfo
from testbed.procs import Proc, free_port, wait_for_port
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.tracker.conftest import TOKEN

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    ca: Path
    dir: Path

    def issue(self, name: str) -> tuple[Path, Path]:
        key_pem, csr = generate_key_and_csr(name)
        ca_key = (self.dir / "ca-key.pem").read_bytes()
        cert = sign_csr(self.ca.read_bytes(), ca_key, csr, 30)
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path

    def context(self, name: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False
        if name is not None:
            ctx.load_cert_chain(*self.issue(name))
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    cert, key = generate_ca("test fleet")
    (d / "ca.pem").write_bytes(cert)
    (d / "ca-key.pem").write_bytes(key)
    return Pki(d / "ca.pem", d)


@pytest.fixture
def tracker_url(tmp_path: Path, pki: Pki, token_file: Path) -> Iterator[str]:
    cert, key = pki.issue("tracker")
    port = free_port()
    proc = Proc(
        [sys.executable, "-m", "layerswarm", "tracker", "--listen", f"127.0.0.1:{port}",
         "--token-file", str(token_file), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--agent-ca-file", str(pki.ca)],
        tmp_path / "tracker-logs", name="tracker",
    ).start()  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 30, proc=proc)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.stop()


async def _heartbeat(url: str, agent_id: str, ctx: ssl.SSLContext) -> None:
    async with aiohttp.ClientSession() as session:
        client = HttpTrackerClient(url, TOKEN, agent_id, "k" * 32, session, ssl_context=ctx)
        await client.heartbeat(AgentInfo(agent_id, "127.0.0.1", 6881))


async def test_an_agent_speaks_only_under_its_certificate_name(tracker_url: str, pki: Pki) -> None:
    await _heartbeat(tracker_url, "node-a", pki.context("node-a"))
    with pytest.raises(Forbidden, match="names agent node-b"):
        await _heartbeat(tracker_url, "node-a", pki.context("node-b"))
    with pytest.raises(Unauthorized, match="certificate"):
        await _heartbeat(tracker_url, "node-c", pki.context(None))


def test_operators_tools_need_only_the_token(tracker_url: str, pki: Pki) -> None:
    """The fleet view and /metrics stay reachable without an agent certificate."""
    req = urllib.request.Request(
        f"{tracker_url}/v1/fleet", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10, context=pki.context(None)) as resp:
        assert resp.status == 200
        json.loads(resp.read())


def test_an_agent_with_a_fleet_certificate_registers_under_its_name(
    tracker_url: str, pki: Pki, registry: Registry, agent_proc: AgentProcFactory, token_file: Path
) -> None:
    cert, key = pki.issue("node-17")
    agent_proc(
        registry,
        "--tracker", tracker_url, "--tracker-token-file", str(token_file),
        "--peer-ca-file", str(pki.ca), "--peer-cert-file", str(cert), "--peer-key-file", str(key),
    )  # fmt: skip
    req = urllib.request.Request(
        f"{tracker_url}/v1/fleet", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    ids: list[str] = []
    for _ in range(50):
        with urllib.request.urlopen(req, timeout=10, context=pki.context(None)) as resp:
            ids = [a["agent_id"] for a in json.loads(resp.read())["agents"]]
        if ids:
            break
        time.sleep(0.2)
    assert ids == ["node-17"]


def test_status_reads_an_https_tracker_with_the_fleet_ca(
    tracker_url: str, pki: Pki, token_file: Path
) -> None:
    """Operators' commands trust a tracker the fleet CA signed with --tracker-ca-file."""
    base = [sys.executable, "-m", "layerswarm", "status", "--json", "--tracker", tracker_url,
            "--tracker-token-file", str(token_file)]  # fmt: skip
    refused = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0  # the system trust store does not know the fleet CA
    ok = subprocess.run(
        [*base, "--tracker-ca-file", str(pki.ca)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "agents" in json.loads(ok.stdout)
