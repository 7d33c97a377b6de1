"""A real layerswarm agent as a subprocess (the CLI, exactly as operators run it)."""

from __future__ import annotations

import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed.procs import Proc, free_port, wait_for_http


@dataclass
class AgentProc:
    workdir: Path
    upstreams: dict[str, str]  # name -> url
    default_upstream: str | None = None
    extra: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    netns: str | None = None
    proc: Proc | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "layerswarm",
            "agent",
            "--listen",
            self.host_port,
            "--data-dir",
            str(self.data_dir),
        ]
        for name, url in self.upstreams.items():
            argv += ["--upstream", f"{name}={url}"]
        if self.default_upstream:
            argv += ["--default-upstream", self.default_upstream]
        return argv + self.extra

    def start(self) -> AgentProc:
        if not self.port:
            self.port = free_port(self.host) if self.netns is None else 5050
        if self.proc is None:
            self.proc = Proc(self.argv(), self.workdir / "logs", name="agent", netns=self.netns)
        self.proc.start()
        if self.netns is None:
            wait_for_http(f"{self.url}/healthz", timeout=30, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def metrics(self) -> str:
        assert self.netns is None, "read metrics from inside the namespace"
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text: str = r.read().decode()
            return text

    def metric(self, name: str, labels: str = "") -> float:
        """One sample's value: metric("layerswarm_served_bytes_total", 'source="cache"')."""
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?")
        m = re.search(rf"^{pattern} ([0-9.e+-]+)$", self.metrics(), re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def log(self) -> str:
        return self.proc.log_tail(200) if self.proc is not None else ""
