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

from testbed.agent import AgentProc
from testbed.clients import Podman
from testbed.procs import free_port, require_binary
from tests.cli.conftest import Node, layerswarm

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


def configured_containerd(node: Node, tmp_path: Path, *registries: str) -> Path:
    certs = tmp_path / "certs.d"
    res = layerswarm(
        "configure", "containerd", "--mirror", node.agent.url,
        *(arg for r in registries for arg in ("--registry", r)),
        "--certs-dir", str(certs), "--containerd-config", str(tmp_path / "no-config.toml"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return certs


def test_healthy_node_is_all_ok(node: Node, tmp_path: Path) -> None:
    # containerd names the registry (?ns=), so the agent answers with that very registry.
    reg = node.registry.host_port
    certs = configured_containerd(node, tmp_path, reg)
    rc, out = doctor(node, tmp_path, "--certs-dir", str(certs))
    assert rc == 0, out
    assert "FAIL" not in out, out
    line(out, "OK", "agent:")
    assert "answers 200" in line(out, "OK", "agent registry API")
    described = line(out, "OK", "agent config")
    assert f"mirrors {reg} ({node.registry.url}), docker.io (" in described, described
    assert f"default {reg}; region r1, zone z1; tracker {node.tracker_url}" in described
    assert "token accepted" in line(out, "OK", f"tracker {node.tracker_url}")
    assert "answers 200" in line(out, "OK", f"upstream {reg}")
    # The agent's cache is 64 MiB on a disk with far more free; its own numbers are used.
    assert "of 64.0 MiB" in line(out, "OK", "disk")
    assert f"containerd ({certs / reg / 'hosts.toml'}): {reg}" in line(out, "OK", "runtime config")
    assert f"mirrors what the runtime sends it: {reg}" in line(out, "OK", "runtime upstreams")
    assert "0 failed, 0 warnings" in out


def test_docker_mirrors_answered_by_another_default_upstream(node: Node, tmp_path: Path) -> None:
    # Docker sends Docker Hub pulls with no registry named; this agent's default upstream is
    # the local registry, so it would answer docker.io pulls from there.
    daemon = configured_docker(node, tmp_path)
    rc, out = doctor(node, tmp_path, "--daemon-json", str(daemon))
    assert rc == 0, out
    assert f"docker ({daemon}): docker.io" in line(out, "OK", "runtime config")
    report = line(out, "WARN", "runtime upstreams")
    reg, url = node.registry.host_port, node.registry.url
    assert f"{daemon} sends docker.io pulls to the agent without naming the registry" in report
    assert f"default upstream {reg} ({url}) answers them" in report
    assert "fix: start the agent with --default-upstream docker.io" in report
    assert f"--upstream docker.io={url}" in report


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
    reg = node.registry.host_port
    certs = configured_containerd(node, tmp_path, reg)
    rc, out = doctor(node, tmp_path, "--certs-dir", str(certs))
    assert rc == 0, out
    assert f"containerd ({certs / reg / 'hosts.toml'}): {reg}" in line(out, "OK", "runtime config")


def test_runtime_registry_the_agent_does_not_mirror_fails(node: Node, tmp_path: Path) -> None:
    reg = node.registry.host_port
    certs = configured_containerd(node, tmp_path, reg, "ghcr.io")
    rc, out = doctor(node, tmp_path, "--certs-dir", str(certs))
    assert rc == 1, out
    hosts = certs / "ghcr.io" / "hosts.toml"
    report = line(out, "FAIL", "runtime upstreams")
    assert f"{hosts} sends ghcr.io pulls to the agent, which does not mirror ghcr.io" in report
    assert f"(it mirrors {reg}, docker.io)" in report
    assert "fix: start the agent with --upstream ghcr.io=https://ghcr.io" in report
    # The registry it does mirror is still reported OK beside it.
    assert f"mirrors what the runtime sends it: {reg}" in line(out, "OK", "runtime upstreams")

    # podman/CRI-O name the registry in the mirror location's path prefix instead.
    conf = tmp_path / "registries.conf"
    res = layerswarm(
        "configure", "podman", "--mirror", node.agent.url, "--registry", "ghcr.io",
        "--registries-conf", str(conf),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"{node.agent.host_port}/ghcr.io" in conf.read_text()
    rc, out = doctor(node, tmp_path, "--registries-conf", str(conf))
    assert rc == 1, out
    report = line(out, "FAIL", "runtime upstreams")
    assert f"{conf} sends ghcr.io pulls to the agent, which does not mirror ghcr.io" in report
    assert "fix: start the agent with --upstream ghcr.io=https://ghcr.io" in report


def test_podman_mirror_without_a_path_prefix_warns(node: Node, tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        '[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n'
        f'[[registry.mirror]]\nlocation = "{node.agent.host_port}"\ninsecure = true\n'
    )
    rc, out = doctor(node, tmp_path, "--registries-conf", str(conf))
    assert rc == 0, out
    report = line(out, "WARN", "runtime upstreams")
    assert f"{conf}: the mirror for quay.io has no registry path prefix" in report
    assert f"answers quay.io pulls from its default upstream {node.registry.host_port}" in report
    assert (
        f"fix: `layerswarm configure podman --mirror {node.agent.url} --registry quay.io`" in report
    )


def another_agent(node: Node, tmp_path: Path, *extra: str, upstreams: dict[str, str]) -> AgentProc:
    """A second agent in the node's fleet, with no region unless ``extra`` gives one."""
    return AgentProc(
        tmp_path / "other-agent",
        {node.registry.host_port: node.registry.url, **upstreams},
        default_upstream=node.registry.host_port,
        extra=[
            *node.tracker_args,
            "--peer-listen", "127.0.0.1:0", "--advertise-address", "127.0.0.1",
            "--cache-size", "32M",
            *extra,
        ],
    ).start()  # fmt: skip


def wait_for_fleet(node: Node, count: int) -> None:
    token = node.token_file.read_text().strip()
    deadline = time.monotonic() + 30
    while True:
        req = urllib.request.Request(
            f"{node.tracker_url}/v1/fleet", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            agents = json.loads(resp.read())["agents"]
        if len(agents) >= count:
            return
        assert time.monotonic() < deadline, agents
        time.sleep(0.2)


def test_checks_the_running_agent_its_region_and_its_upstreams(node: Node, tmp_path: Path) -> None:
    # This agent mirrors quay.example, which doctor's own flags (node.agent_config_args) do
    # not name: only the agent's /v1/config can tell doctor that the runtime's entry is fine.
    # Its URL is a closed loopback port, never dialled: doctor checks its own flags' upstreams.
    agent = another_agent(
        node, tmp_path, upstreams={"quay.example": f"http://127.0.0.1:{free_port()}"}
    )
    try:
        wait_for_fleet(node, 2)
        certs = tmp_path / "certs.d"
        res = layerswarm(
            "configure", "containerd", "--mirror", agent.url, "--registry", "quay.example",
            "--certs-dir", str(certs), "--containerd-config", str(tmp_path / "no-config.toml"),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        rc, out = doctor(node, tmp_path, "--certs-dir", str(certs), agent=agent.url)
    finally:
        agent.stop()
    assert rc == 0, out
    assert "mirrors what the runtime sends it: quay.example" in line(out, "OK", "runtime upstreams")
    assert "no region or zone" in line(out, "OK", "agent config")
    # The seed agent of the node's fixture has region r1; this one has none.
    report = line(out, "WARN", "region")
    assert "the agent has no --region, while 1 live agent in the fleet has one (r1: 1)" in report
    assert "fix: start the agent with --region REGION (LAYERSWARM_REGION)" in report
    assert "--region r1" in report


def test_refused_tracker_token_names_the_agents_token_file(node: Node, tmp_path: Path) -> None:
    wrong = tmp_path / "agent-token"
    wrong.write_text("not-the-fleet-token-at-all\n")
    agent = AgentProc(
        tmp_path / "refused-agent",
        {node.registry.host_port: node.registry.url},
        default_upstream=node.registry.host_port,
        extra=[
            "--tracker", node.tracker_url, "--tracker-token-file", str(wrong),
            "--region", "r1", "--peer-listen", "127.0.0.1:0",
        ],
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            health, _ = get_json(f"{agent.url}/healthz")
            if health["status"] == "degraded":
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        # Doctor runs with the right token file; the agent's own is the one to fix.
        # No runtime config exists here, so doctor exits 1 for that; only the link matters.
        _, out = doctor(node, tmp_path, agent=agent.url)
    finally:
        agent.stop()
    report = line(out, "WARN", "agent tracker link")
    assert "refused" in report and str(wrong) in report.splitlines()[0], report
    assert f"fix: put the fleet token (the tracker's --token-file) in {wrong}" in report
    assert "token accepted" in line(out, "OK", f"tracker {node.tracker_url}")


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
    # The API lists the mirror location with its path prefix, which names a mirrored registry.
    assert f"mirrors what the runtime sends it: {reg}" in line(out, "OK", "runtime upstreams")

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
