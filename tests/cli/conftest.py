"""A small real fleet on loopback for the ops commands: registry, tracker, one seed agent."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.procs import Proc, free_port, wait_for_http
from testbed.registry import Registry


def layerswarm(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as an operator runs it: a separate process, stdout not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "layerswarm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Node:
    registry: Registry
    tracker: Proc
    tracker_url: str
    token_file: Path
    agent: AgentProc

    @property
    def tracker_args(self) -> list[str]:
        return ["--tracker", self.tracker_url, "--tracker-token-file", str(self.token_file)]

    @property
    def agent_config_args(self) -> list[str]:
        """The agent's own settings, as doctor takes them."""
        reg = self.registry.host_port
        return [
            *self.tracker_args,
            "--data-dir",
            str(self.agent.data_dir),
            "--upstream",
            f"{reg}={self.registry.url}",
            "--default-upstream",
            reg,
        ]

    def logs(self) -> str:
        return "\n".join(
            [self.agent.log(), self.tracker.log_tail(60), self.registry.proc.log_tail(20)]
        )


@pytest.fixture
def node(tmp_path: Path, registry: Registry) -> Iterator[Node]:
    token_file = tmp_path / "fleet-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    port = free_port()
    tracker = Proc(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "tracker",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token_file),
            # A short TTL makes agents heartbeat (and poll for preheat tasks) every second.
            "--agent-ttl",
            "3s",
        ],
        tmp_path / "logs",
        name="tracker",
    )
    tracker.start()
    agent: AgentProc | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", timeout=30, proc=tracker)
        agent = AgentProc(
            tmp_path / "agent",
            {registry.host_port: registry.url},
            default_upstream=registry.host_port,
            extra=[
                "--tracker",
                url,
                "--tracker-token-file",
                str(token_file),
                "--role",
                "seed",
                "--zone",
                "z1",
                "--region",
                "r1",
                "--peer-listen",
                "127.0.0.1:0",
                "--advertise-address",
                "127.0.0.1",
                "--cache-size",
                "64M",
            ],
        ).start()
        yield Node(registry, tracker, url, token_file, agent)
    finally:
        if agent is not None:
            agent.stop()
        tracker.stop()
