"""``layerswarm doctor`` against a healthy node, and against each thing that can be wrong."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Node, layerswarm
from tests.support.agent import AgentProc
from tests.support.clients import Podman
from tests.support.procs import free_port, require_binary

pytestmark = pytest.mark.integration


def doctor(node: Node, tmp_path: Path, *extra: str, agent: str | None = None) -> tuple[int, str]:
    argv = [
        "doctor",
        "--agent",
        agent or node.agent.url,
        *node.agent_config_args,
        "--docker-host",
        "none",
        "--daemon-json",
        str(tmp_path / "absent-daemon.json"),
        "--certs-dir",
        str(tmp_path / "absent-certs.d"),
        "--registries-conf",
        str(tmp_path / "absent-registries.conf"),
        "--timeout",
        "2s",
        *extra,
    ]
    res = layerswarm(*argv)
    return res.returncode, res.stdout + res.stderr


def line(out: str, level: str, name: str) -> str:
    """The report line for check ``name`` at ``level``, with its fix line if any."""
    lines = out.splitlines()
    for i, text in enumerate(lines):
        if text.startswith(f"{level:<4}  {name}"):
            fix = (
                lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("      fix:") else ""
            )
            return text + "\n" + fix
    raise AssertionError(f"no {level} {name!r} line in:\n{out}")


def configured_docker(node: Node, tmp_path: Path) -> Path:
    daemon = tmp_path / "daemon.json"
    res = layerswarm(
        "configure", "docker", "--mirror", node.agent.url, "--daemon-json", str(daemon)
    )
    assert res.returncode == 0, res.stderr
    return daemon


def test_healthy_node_is_all_ok(node: Node, tmp_path: Path) -> None:
    daemon = configured_docker(node, tmp_path)
    rc, out = doctor(node, tmp_path, "--daemon-json", str(daemon))
    assert rc == 0, out
    assert "FAIL" not in out, out
    line(out, "OK", "agent:")
    assert "answers 200" in line(out, "OK", "agent registry API")
    assert "token accepted" in line(out, "OK", f"tracker {node.tracker_url}")
    assert "answers 200" in line(out, "OK", f"upstream {node.registry.host_port}")
    # The agent's cache is 64 MiB on a disk with far more free; its own numbers are used.
    assert "of 64.0 MiB" in line(out, "OK", "disk")
    assert f"docker ({daemon}): docker.io" in line(out, "OK", "runtime config")
    assert "0 failed, 0 warnings" in out


def test_agent_down(node: Node, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    rc, out = doctor(node, tmp_path, agent=down)
    assert rc == 1
    report = line(out, "FAIL", "agent:")
    assert f"{down}/healthz: no answer" in report
    assert "fix: start the agent" in report


def test_wrong_tracker_token(node: Node, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("x" * 32)
    rc, out = doctor(node, tmp_path, "--tracker-token-file", str(wrong))
    assert rc == 1
    report = line(out, "FAIL", f"tracker {node.tracker_url}")
    assert f"refuses the token in {wrong} (HTTP 401)" in report
    assert "fix: use the same token file as the tracker's --token-file" in report


def test_tracker_down(node: Node, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    rc, out = doctor(node, tmp_path, "--tracker", down)
    assert rc == 1
    assert "pulls still work, from the upstream only" in line(out, "FAIL", f"tracker {down}")


def test_unreachable_upstream(node: Node, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    rc, out = doctor(node, tmp_path, "--upstream", f"gone.example:5000={dead}")
    assert rc == 1
    report = line(out, "FAIL", "upstream gone.example:5000")
    assert f"{dead}/v2/: no answer" in report and "only cached images" in report
    assert "fix: check DNS, proxy and firewall" in report
    # The healthy upstream is still reported OK beside it.
    line(out, "OK", f"upstream {node.registry.host_port}")


def test_runtime_not_configured(node: Node, tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"registry-mirrors": ["https://mirror.example.internal"]}))
    rc, out = doctor(node, tmp_path, "--daemon-json", str(daemon))
    assert rc == 1
    report = line(out, "FAIL", "runtime config")
    assert f"no runtime is configured to pull through {node.agent.url}" in report
    assert "mirror.example.internal" in report
    assert (
        f"fix: `layerswarm configure docker|containerd|podman --mirror {node.agent.url}`" in report
    )


def test_broken_daemon_json_fails(node: Node, tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{not json")
    rc, out = doctor(node, tmp_path, "--daemon-json", str(daemon))
    assert rc == 1
    assert "not valid JSON" in line(out, "FAIL", "runtime config")


def test_containerd_hosts_toml_written_by_configure(node: Node, tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    reg = node.registry.host_port
    res = layerswarm(
        "configure",
        "containerd",
        "--mirror",
        node.agent.url,
        "--registry",
        reg,
        "--certs-dir",
        str(certs),
        "--containerd-config",
        str(tmp_path / "no-config.toml"),
    )
    assert res.returncode == 0, res.stderr
    rc, out = doctor(node, tmp_path, "--certs-dir", str(certs))
    assert rc == 0, out
    assert f"containerd ({certs / reg / 'hosts.toml'}): {reg}" in line(out, "OK", "runtime config")


# -- a real Docker-compatible API: podman's system service -----------------------------------


@pytest.fixture
def podman_api(tmp_path: Path) -> Iterator[tuple[Podman, Path]]:
    """Yields (podman, socket path); the service is started by the test with its config."""
    require_binary("podman")
    p = Podman(tmp_path / "podman")
    sock_dir = Path(tempfile.mkdtemp(prefix="lsw-sock-"))
    try:
        yield p, sock_dir / "podman.sock"
    finally:
        p.cleanup()
        for child in sock_dir.iterdir():
            child.unlink()
        sock_dir.rmdir()


def start_service(p: Podman, sock: Path, logs: Path) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "podman-service.log").open("wb") as out:
        # The support class runs one-shot commands only; its flags (root, runroot, vfs...) are
        # reused here for a long-running service.
        proc = subprocess.Popen(
            p._argv("system", "service", "--time=0", f"unix://{sock}"),
            env={**os.environ, **p._env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError((logs / "podman-service.log").read_text())
        time.sleep(0.05)
    return proc


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_podman_api_with_and_without_the_mirror(
    node: Node, tmp_path: Path, podman_api: tuple[Podman, Path]
) -> None:
    p, sock = podman_api
    reg = node.registry.host_port
    conf = tmp_path / "registries.conf"
    res = layerswarm(
        "configure",
        "podman",
        "--mirror",
        node.agent.url,
        "--registry",
        reg,
        "--registries-conf",
        str(conf),
    )
    assert res.returncode == 0, res.stderr
    p.registries_conf = conf
    proc = start_service(p, sock, tmp_path / "logs")
    try:
        rc, out = doctor(node, tmp_path, "--docker-host", f"unix://{sock}")
    finally:
        stop_service(proc)
    assert rc == 0, out
    assert f"pulls {reg} through {node.agent.url}" in line(out, "OK", "runtime:")

    other = tmp_path / "other.conf"
    other.write_text(
        f'[[registry]]\nprefix = "{reg}"\nlocation = "{reg}"\n'
        '[[registry.mirror]]\nlocation = "127.0.0.1:1/elsewhere"\ninsecure = true\n'
    )
    p.registries_conf = other
    sock.unlink(missing_ok=True)
    proc = start_service(p, sock, tmp_path / "logs")
    try:
        rc, out = doctor(node, tmp_path, "--docker-host", f"unix://{sock}")
    finally:
        stop_service(proc)
    assert rc == 1
    report = line(out, "FAIL", "runtime:")
    assert "does not use the mirror" in report and "127.0.0.1:1/elsewhere" in report


# -- the agent's own description of its config (GET /v1/config) ------------------------------


def get_json(url: str) -> tuple[dict[str, object], str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    data = json.loads(body)
    assert isinstance(data, dict), body
    return data, body


def test_agent_describes_its_config_without_secrets(node: Node, tmp_path: Path) -> None:
    reg = node.registry.host_port
    creds = tmp_path / "credentials.yaml"
    password = "creds-file-" + secrets.token_hex(8)
    creds.write_text(f"{reg}:\n  username: someone\n  password: {password}\n")
    userinfo = "url-" + secrets.token_hex(8)
    token = node.token_file.read_text().strip()
    agent = AgentProc(
        tmp_path / "described",
        {reg: node.registry.url, "quay.example": f"http://deploy:{userinfo}@127.0.0.1:1"},
        default_upstream=reg,
        extra=[
            *node.tracker_args,
            "--credentials-file", str(creds),
            "--zone", "z9", "--region", "r9", "--role", "seed",
            "--peer-listen", "127.0.0.1:0", "--advertise-address", "127.0.0.1",
            "--cache-size", "32M",
        ],
    ).start()  # fmt: skip
    try:
        config, body = get_json(f"{agent.url}/v1/config")
    finally:
        agent.stop()
    for secret in (password, userinfo, token, "someone"):
        assert secret not in body, body
    assert config["upstreams"] == [
        {"name": reg, "url": node.registry.url},
        {"name": "docker.io", "url": "https://registry-1.docker.io"},
        {"name": "quay.example", "url": "http://127.0.0.1:1"},
    ]
    assert config["default_upstream"] == reg
    assert (config["zone"], config["region"], config["role"]) == ("z9", "r9", "seed")
    assert config["p2p"] is True and config["peer_transport"] == "relay"
    assert config["tracker"] == {"urls": [node.tracker_url], "token_file": str(node.token_file)}
    assert config["cache_size_bytes"] == 32 << 20
