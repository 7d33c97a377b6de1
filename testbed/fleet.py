"""A fleet on one machine: an upstream registry, a tracker and agents, each on its own host
(network namespace), with clients pulling inside the agents' namespaces.

Host 1 runs the upstream registry (its upload can be shaped to a WAN speed) and the
tracker; hosts 2.. run one agent each, listening on their own address. Nothing here talks
to a namespace address from the root namespace: probes and clients run inside.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.agent import AgentProc
from testbed.clients import skopeo_copy, skopeo_copy_logged_in, write_registries_conf
from testbed.images import Image, build_image, push
from testbed.netns import Host, Topology
from testbed.procs import Proc, wait_for_port
from testbed.registry import Registry

TRACKER_PORT = 7070
AGENT_PORT = 5050
PEER_PORT = 6881


@dataclass
class Fleet:
    topo: Topology
    workdir: Path
    registry: Registry | None = None
    tracker: Proc | None = None
    agents: dict[int, AgentProc] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def upstream_host(self) -> Host:
        return self.topo.hosts[0]

    @property
    def tracker_url(self) -> str:
        return f"http://{self.upstream_host.ip}:{TRACKER_PORT}"

    @property
    def token_file(self) -> Path:
        path = self.workdir / "tracker-token"
        if not path.exists():
            path.write_text(self.token)
            path.chmod(0o600)
        return path

    def start_registry(self, *, htpasswd: dict[str, str] | None = None) -> Registry:
        if self.registry is not None:
            self.registry.stop()
        self.registry = Registry(
            self.workdir / f"upstream{'-auth' if htpasswd else ''}",
            host=self.upstream_host.ip,
            netns=self.upstream_host.name,
            htpasswd=htpasswd,
        ).start()
        return self.registry

    def push_image(
        self,
        layers: list[int],
        *,
        repo: str = "team/app",
        seed: int = 1,
        creds: tuple[str, str] | None = None,
    ) -> Image:
        assert self.registry is not None
        layout = build_image(self.workdir / "images" / repo.replace("/", "_"), layers, seed=seed)
        return push(layout, self.registry, repo, "v1", creds)

    def start_tracker(self, *extra: str) -> Proc:
        host = self.upstream_host
        if self.tracker is None:
            self.tracker = Proc(
                [
                    sys.executable,
                    "-m",
                    "layerswarm",
                    "tracker",
                    "--listen",
                    f"{host.ip}:{TRACKER_PORT}",
                    "--token-file",
                    str(self.token_file),
                    *extra,
                ],
                self.workdir / "tracker-logs",
                name="tracker",
                netns=host.name,
            )
        self.tracker.start()
        wait_for_port(host.ip, TRACKER_PORT, 30, netns=host.name, proc=self.tracker)
        return self.tracker

    def start_agent(
        self, index: int, *, zone: str = "z1", region: str = "r1", extra: tuple[str, ...] = ()
    ) -> AgentProc:
        """Agent on host ``index`` (1-based among agent hosts)."""
        assert self.registry is not None
        host = self.topo.hosts[index]
        agent = self.agents.get(index)
        if agent is None:
            agent = AgentProc(
                self.workdir / f"agent{index}",
                {self.registry.host_port: self.registry.url},
                default_upstream=self.registry.host_port,
                host=host.ip,
                port=AGENT_PORT,
                netns=host.name,
                extra=[
                    "--tracker",
                    self.tracker_url,
                    "--tracker-token-file",
                    str(self.token_file),
                    "--peer-listen",
                    f"{host.ip}:{PEER_PORT}",
                    "--advertise-address",
                    host.ip,
                    "--zone",
                    zone,
                    "--region",
                    region,
                    *extra,
                ],
            )
            self.agents[index] = agent
        agent.start()
        assert agent.proc is not None
        wait_for_port(host.ip, AGENT_PORT, 30, netns=host.name, proc=agent.proc)
        return agent

    def pull(
        self,
        index: int,
        image: Image,
        *,
        check: bool = True,
        mirror_creds: tuple[str, str] | None = None,
    ) -> Path:
        """skopeo pull on host ``index`` through its agent; ``mirror_creds`` go in an auth
        file for the agent's host (containers/image looks mirror credentials up by host)."""
        host = self.topo.hosts[index]
        agent = self.agents[index]
        conf = write_registries_conf(self.workdir / f"reg{index}.conf", image.host, agent.host_port)
        dest = self.workdir / f"pull{index}-{secrets.token_hex(3)}"
        if mirror_creds is None:
            skopeo_copy(image.ref, dest, conf, netns=host.name, check=check, timeout=300)
            return dest
        skopeo_copy_logged_in(
            image.ref, dest, conf, mirror_creds, [agent.host_port], netns=host.name, check=check
        )
        return dest

    def agent_get(self, index: int, path: str) -> str:
        """GET an agent's operator endpoint, from inside its host."""
        host = self.topo.hosts[index]
        agent = self.agents[index]
        res = host.run(
            [
                sys.executable,
                "-c",
                "import sys,urllib.request;"
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=10).read().decode())",
                f"{agent.url}{path}",
            ],
        )
        out: str = res.stdout
        return out

    def agent_metrics(self, index: int) -> str:
        return self.agent_get(index, "/metrics")

    def agent_tracker_state(self, index: int) -> dict[str, Any]:
        """The agent's view of its tracker link (``/healthz``): state, reason, registrations."""
        state: dict[str, Any] = json.loads(self.agent_get(index, "/healthz"))["tracker"]
        return state

    def metric(self, index: int, name: str, labels: str = "") -> float:
        for line in self.agent_metrics(index).splitlines():
            key, _, value = line.rpartition(" ")
            if key == (f"{name}{{{labels}}}" if labels else name):
                return float(value)
        return 0.0

    def tracker_get(self, path: str, *, check: bool = True) -> object:
        """A tracker path as JSON, fetched inside its host; None on error unless check."""
        host = self.upstream_host
        res = host.run(
            [
                sys.executable,
                "-c",
                "import sys,urllib.request;"
                "h={'Authorization':'Bearer '+sys.argv[2]};"
                "r=urllib.request.Request(sys.argv[1],headers=h);"
                "sys.stdout.write(urllib.request.urlopen(r,timeout=10).read().decode())",
                f"{self.tracker_url}{path}",
                self.token,
            ],
            check=check,
        )
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)

    def issue_certs(self, index: int, ca_dir: Path) -> tuple[str, ...]:
        """Agent flags for fleet TLS with a cert from the CA in ``ca_dir`` (made if absent)."""
        run = [sys.executable, "-m", "layerswarm", "pki"]
        if not (ca_dir / "ca.pem").exists():
            subprocess.run([*run, "init", "--dir", str(ca_dir)], check=True, timeout=60)
        out = self.workdir / f"certs{index}-{ca_dir.name}"
        subprocess.run(
            [*run, "issue", "--dir", str(ca_dir), "--name", f"agent{index}", "--out", str(out)],
            check=True,
            timeout=60,
        )
        return (
            "--peer-ca-file",
            str(out / "ca.pem"),
            "--peer-cert-file",
            str(out / "agent.pem"),
            "--peer-key-file",
            str(out / "agent-key.pem"),
        )

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        if self.tracker is not None:
            self.tracker.stop()
        if self.registry is not None:
            self.registry.stop()
