"""Fail fast, say why: start-up errors are one line and a non-zero exit, and the running agent
says what is wrong with its tracker and its upstreams in words, never in Python class names.

Every daemon here is the real CLI as a subprocess; the tracker is a real tracker process.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.procs import Proc, free_port, wait_for_http
from testbed.registry import Registry
from tests.cli.conftest import layerswarm

pytestmark = pytest.mark.integration

# Python exception class names (ClientConnectorError, UpstreamError, BrokenPipeError...).
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]*)+(?:Error|Exception)\b")


@dataclass
class Tracker:
    proc: Proc
    url: str
    token_file: Path

    def fleet(self) -> dict[str, object]:
        res = layerswarm(
            "status", "--json", "--tracker", self.url, "--tracker-token-file", str(self.token_file)
        )
        assert res.returncode == 0, res.stderr
        fleet: dict[str, object] = json.loads(res.stdout)
        return fleet


def tracker_argv(port: int, token_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "layerswarm",
        "tracker",
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--agent-ttl",
        "3s",
    ]


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    token_file = tmp_path / "fleet-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    port = free_port()
    proc = Proc(tracker_argv(port, token_file), tmp_path / "logs", name="tracker").start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", timeout=30, proc=proc)
        yield Tracker(proc, url, token_file)
    finally:
        proc.stop()


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port something else already listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s
    finally:
        s.close()


def port_of(s: socket.socket) -> int:
    port: int = s.getsockname()[1]
    return port


def agent_cli(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return layerswarm(
        "agent",
        "--data-dir",
        str(tmp_path / "data"),
        "--upstream",
        "up.test:5000=http://127.0.0.1:9",
        "--default-upstream",
        "up.test:5000",
        *args,
        timeout=timeout,
    )


def assert_one_line(res: subprocess.CompletedProcess[str], expected: str) -> None:
    assert res.returncode != 0, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [expected], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_agent_with_its_port_taken_exits_before_it_registers(
    tmp_path: Path, tracker: Tracker, taken: socket.socket
) -> None:
    port = port_of(taken)
    res = agent_cli(
        tmp_path,
        "--listen",
        f"127.0.0.1:{port}",
        "--tracker",
        tracker.url,
        "--tracker-token-file",
        str(tracker.token_file),
        "--peer-listen",
        "127.0.0.1:0",
    )
    assert_one_line(
        res, f"layerswarm agent: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    # It never heartbeat, so it never showed as live (nor could it have taken a preheat job).
    assert tracker.fleet()["agents"] == []
    assert "register" not in tracker.proc.log_tail()


def test_agent_with_its_peer_port_taken_exits(
    tmp_path: Path, tracker: Tracker, taken: socket.socket
) -> None:
    port = port_of(taken)
    res = agent_cli(
        tmp_path,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--tracker",
        tracker.url,
        "--tracker-token-file",
        str(tracker.token_file),
        "--peer-listen",
        f"127.0.0.1:{port}",
    )
    assert_one_line(
        res,
        f"layerswarm agent: cannot listen for peers on 127.0.0.1:{port}: address already in use",
    )
    assert tracker.fleet()["agents"] == []


def test_tracker_with_its_port_taken_exits_without_saying_ready(
    tmp_path: Path, taken: socket.socket
) -> None:
    port = port_of(taken)
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n-t0k3n-t0k3n\n")
    res = layerswarm(*tracker_argv(port, token_file)[3:])
    assert_one_line(
        res, f"layerswarm tracker: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_status_json_into_a_closed_pipe_has_no_traceback(tracker: Tracker) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "status",
            "--json",
            "--tracker",
            tracker.url,
            "--tracker-token-file",
            str(tracker.token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # The reader leaves before a byte is written, as `| head` does once it has its lines.
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "", err
    assert proc.returncode == 141


def test_upstream_given_as_a_bare_url_suggests_name_equals_url(tmp_path: Path) -> None:
    res = agent_cli(tmp_path, "--upstream", "http://10.0.0.5:5000")
    assert res.returncode == 2
    assert "--upstream 10.0.0.5:5000=http://10.0.0.5:5000" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_data_dir_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory\n")
    res = agent_cli(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
    assert_one_line(
        res, f"layerswarm agent: data-dir {tmp_path / 'data'} exists and is not a directory"
    )


def healthz(agent: AgentProc) -> dict[str, object]:
    with urllib.request.urlopen(f"{agent.url}/healthz", timeout=5) as r:
        body: dict[str, object] = json.loads(r.read())
        return body


def wait_for_health(agent: AgentProc, state: str, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body = healthz(agent)
        tracker = body["tracker"]
        assert isinstance(tracker, dict)
        if tracker["state"] == state:
            return body
        assert time.monotonic() < deadline, (body, agent.log())
        time.sleep(0.2)


def test_wrong_tracker_token_is_named_in_healthz_and_log(
    tmp_path: Path, tracker: Tracker, registry: Registry
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-fleet-token\n")
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=[
            "--tracker",
            tracker.url,
            "--tracker-token-file",
            str(wrong),
            "--peer-listen",
            "127.0.0.1:0",
        ],
    ).start()
    try:
        body = wait_for_health(agent, "refused")
        assert body["status"] == "degraded"
        reason = str(body["tracker"]["reason"])  # type: ignore[index]
        assert str(wrong) in reason and tracker.url in reason, reason
        agent.proc.wait_for_log(str(wrong), stream="stderr")  # type: ignore[union-attr]
        warning = next(line for line in agent.log().splitlines() if str(wrong) in line)
        assert tracker.url in warning, warning
        assert not CLASS_NAME.search(agent.log()), agent.log()
        # doctor shows the agent's own view of its tracker link.
        res = layerswarm(
            "doctor", "--agent", agent.url, "--no-p2p", "--docker-host", "none",
            "--data-dir", str(agent.data_dir), "--timeout", "2s",
            "--upstream", f"{registry.host_port}={registry.url}",
            "--default-upstream", registry.host_port,
        )  # fmt: skip
        warn = next(line for line in res.stdout.splitlines() if "agent tracker link" in line)
        assert warn.startswith("WARN") and "refused" in warn and str(wrong) in warn, res.stdout
    finally:
        agent.stop()


def test_agent_says_when_the_tracker_is_reachable_again(tmp_path: Path, registry: Registry) -> None:
    token_file = tmp_path / "fleet-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tracker = Proc(tracker_argv(port, token_file), tmp_path / "logs", name="tracker")
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=[
            "--tracker",
            url,
            "--tracker-token-file",
            str(token_file),
            "--peer-listen",
            "127.0.0.1:0",
        ],
    ).start()
    try:
        body = wait_for_health(agent, "unreachable")
        assert body["status"] == "degraded"
        assert url in str(body["tracker"]), body
        tracker.start()
        wait_for_http(f"{url}/healthz", timeout=30, proc=tracker)
        assert wait_for_health(agent, "ok")["status"] == "ok"
        agent.proc.wait_for_log(f"tracker reachable again at {url}", stream="stderr")  # type: ignore[union-attr]
        assert not CLASS_NAME.search(agent.log()), agent.log()
    finally:
        agent.stop()
        tracker.stop()


def test_tls_to_a_plain_http_upstream_names_url_and_cause(
    tmp_path: Path, registry: Registry
) -> None:
    wrong_url = f"https://{registry.host_port}"
    agent = AgentProc(
        tmp_path / "agent",
        {"up.test:5000": wrong_url},
        default_upstream="up.test:5000",
        extra=["--no-p2p"],
    ).start()
    try:
        digest = "sha256:" + "a" * 64
        for path in ("/v2/team/app/manifests/v1", f"/v2/team/app/blobs/{digest}"):
            try:
                urllib.request.urlopen(agent.url + path, timeout=10)
            except urllib.error.HTTPError as exc:
                status, message = exc.code, json.loads(exc.read())["errors"][0]["message"]
            else:
                raise AssertionError(f"{path} answered 200")
            assert status == 503, message
            assert wrong_url in message, message
            assert "TLS handshake failed: plain-HTTP server? use http://" in message, message
        metrics = agent.metrics()
        assert 'layerswarm_upstream_errors_total{reason="tls",upstream="up.test:5000"} 1.0' in (
            metrics
        ), metrics
        assert not CLASS_NAME.search(agent.log()), agent.log()
        assert not CLASS_NAME.search(metrics)
    finally:
        agent.stop()
