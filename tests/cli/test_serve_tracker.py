"""``layerswarm agent --serve-tracker``: a small fleet with no tracker process. The first agent
serves its embedded tracker; the second names it with --tracker and gets a blob the first
cached from the first over the relay, so the upstream serves that blob once. Real registry,
two real agents on loopback.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AgentConfig
from layerswarm.doctor import check_tracker
from testbed.agent import AgentProc
from testbed.procs import free_port
from testbed.registry import Registry
from tests.agent.test_referrers import put_blob

pytestmark = pytest.mark.integration

MiB = 1 << 20


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        body: bytes = resp.read()
        return body


def test_a_second_agent_fetches_through_the_first_ones_served_tracker(
    tmp_path: Path, registry: Registry
) -> None:
    repo = "team/app"
    payload = os.urandom(3 * MiB)
    blob = put_blob(registry, repo, payload)["digest"]
    token = tmp_path / "fleet-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    tracker_port = free_port()
    common = [
        "--tracker-token-file", str(token), "--region", "r1",
        "--peer-listen", "127.0.0.1:0", "--advertise-address", "127.0.0.1",
    ]  # fmt: skip
    upstreams = {registry.host_port: registry.url}
    first = AgentProc(
        tmp_path / "first",
        upstreams,
        default_upstream=registry.host_port,
        extra=["--serve-tracker", "--tracker-listen", f"127.0.0.1:{tracker_port}", *common],
    )
    second = AgentProc(
        tmp_path / "second",
        upstreams,
        default_upstream=registry.host_port,
        extra=["--tracker", f"http://127.0.0.1:{tracker_port}", *common],
    )
    try:
        first.start()
        second.start()
        assert get(f"{first.url}/v2/{repo}/blobs/{blob}") == payload
        assert get(f"{second.url}/v2/{repo}/blobs/{blob}") == payload
        logs = first.log() + second.log()
        assert registry.blob_fetches(blob) == 1, logs
        assert second.metric("layerswarm_peer_received_bytes_total") >= len(payload), logs
    finally:
        second.stop()
        first.stop()


def test_doctor_knows_an_agent_serving_the_tracker(tmp_path: Path) -> None:
    token = tmp_path / "fleet-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    served = AgentConfig(
        data_dir=tmp_path / "data",
        serve_tracker=True,
        tracker_listen="127.0.0.1:7070",
        tracker_token_file=token,
    )
    [check] = check_tracker(served, timeout=1.0)
    assert (check.level, "127.0.0.1:7070" in check.detail) == ("OK", True), check
    [check] = check_tracker(replace(served, serve_tracker=False), timeout=1.0)
    assert check.level == "WARN" and "--serve-tracker" in check.fix, check
