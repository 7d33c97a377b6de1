"""One tracker replica of two killed (or hung): the agent fails over within one request timeout.

Everything is real: two ``layerswarm tracker`` processes on one redis-server, a
``layerswarm agent`` process pointed at both, the registry as upstream. The dead replica is
SIGKILLed (connection refused at once), the hung one SIGSTOPped (it accepts connections and
never answers, so only the agent's tracker request timeout gets it out).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.procs import Proc, free_port, wait_for_http
from testbed.registry import Registry
from tests.conftest import ImageFactory
from tests.tracker.conftest import TOKEN

pytestmark = pytest.mark.integration

MiB = 1 << 20
# The agent's tracker client gives one replica this long (core/trackerclient.py's default).
TRACKER_TIMEOUT = 5.0


def fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data: bytes = r.read()
        return data


def lookups(tracker_url: str) -> float:
    req = urllib.request.Request(
        tracker_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    text = fetch_req(req)
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r"^layerswarm_tracker_lookups_total\{[^}]*\} (\S+)$",
            text,
            re.MULTILINE,
        )
    )


def fetch_req(req: urllib.request.Request) -> str:
    with urllib.request.urlopen(req, timeout=10) as r:
        text: str = r.read().decode()
        return text


def wait_until_dead(proc: Proc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.running:
        assert time.monotonic() < deadline, f"{proc.name} still running after SIGKILL"
        time.sleep(0.05)


def start_tracker(tmp_path: Path, name: str, redis_url: str, token_file: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "tracker",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token_file),
            "--store",
            redis_url,
        ],
        tmp_path / "logs",
        name=name,
    ).start()
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def test_agent_fails_over_to_the_live_replica(
    tmp_path: Path,
    registry: Registry,
    image_factory: ImageFactory,
    redis_url: str,
    token_file: Path,
) -> None:
    image = image_factory(layers=[MiB, MiB, MiB])
    t1, u1 = start_tracker(tmp_path, "tracker1", redis_url, token_file)
    t2, u2 = start_tracker(tmp_path, "tracker2", redis_url, token_file)
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=[
            "--tracker",
            f"{u1},{u2}",
            "--tracker-token-file",
            str(token_file),
            "--peer-listen",
            "127.0.0.1:0",
            "--peer-wait",
            "2s",
        ],
    )
    try:
        agent.start()
        base = f"{agent.url}/v2/{image.repo}/blobs/"
        first, second, third = (layer.digest for layer in image.layers)

        # 1. The first replica killed: connection refused, the second answers at once.
        os.kill(t1.pid, signal.SIGKILL)
        wait_until_dead(t1)
        assert t1.returncode == -signal.SIGKILL
        before = lookups(u2)
        assert fetch(base + first, timeout=60) == image.blob(first)
        assert lookups(u2) > before, "the lookup never reached the live replica"

        # 2. The first back, the second hung (accepts, never answers): the agent waits one
        # tracker timeout for it, then uses the first, and keeps using it.
        t1.start()
        wait_for_http(f"{u1}/healthz", timeout=30, proc=t1)
        os.kill(t2.pid, signal.SIGSTOP)
        try:
            before = lookups(u1)
            # A hung replica may cost the blob one timeout per tracker call until the agent
            # prefers the live one; the client's own patience is far longer.
            assert fetch(base + second, timeout=6 * TRACKER_TIMEOUT) == image.blob(second)
            assert lookups(u1) > before, "the lookup never reached the live replica"
            before = lookups(u1)
            assert fetch(base + third, timeout=6 * TRACKER_TIMEOUT) == image.blob(third)
            assert lookups(u1) > before
        finally:
            os.kill(t2.pid, signal.SIGCONT)
        log = agent.log()
        assert "no tracker replica answered" not in log, log
        assert "tracker unavailable" not in log, log
    finally:
        agent.stop()
        t1.stop()
        t2.stop()
