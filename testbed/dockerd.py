"""A real Docker Engine (Debian ``docker.io``) for tests: its own socket, data root and pidfile.

Pulling needs no containers, so dockerd runs with the vfs storage driver and no network
set-up (no iptables, no bridge), everything under one short temporary directory, and is
stopped by the PID we started (never the machine's docker service). The daemon reads the
``daemon.json`` the test hands it, which is how ``layerswarm configure docker`` is tested:
the file it writes is the file dockerd starts with.

dockerd falls back to Docker Hub when every mirror fails. So that a failing mirror never
sends a request off the machine, the daemon's proxy is a closed loopback port: a fallback
fails at once on 127.0.0.1 instead of leaving the machine (loopback itself bypasses it).

    with Dockerd(tmp_path / "docker", daemon_json) as engine:
        engine.docker("pull", "app:v1")
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.procs import Proc, ProcError, free_port, run_checked

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"

# What a test daemon needs besides the mirrors: no containers run, so no network set-up.
ENGINE_SETTINGS: dict[str, Any] = {
    "storage-driver": "vfs",
    "iptables": False,
    "ip6tables": False,
    "bridge": "none",
}


def write_client_config(directory: Path, creds: tuple[str, str] | None) -> Path:
    """A docker client config dir whose docker.io login is ``creds`` (empty without them).

    ``docker login`` would try to reach Docker Hub, so the config is written directly.
    """
    directory.mkdir(parents=True, exist_ok=True)
    auths: dict[str, Any] = {}
    if creds is not None:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        auths[DOCKER_HUB_AUTH_KEY] = {"auth": token}
    (directory / "config.json").write_text(json.dumps({"auths": auths}))
    return directory


class Dockerd:
    """One dockerd started with ``daemon_json``; ``docker(...)`` runs the CLI against it."""

    def __init__(self, workdir: Path, daemon_json: Path) -> None:
        self.workdir = workdir
        self.daemon_json = daemon_json
        workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 107 bytes and pytest's tmp paths run long.
        self.short_dir = Path(tempfile.mkdtemp(prefix="lsw-dockerd-"))
        self.socket = self.short_dir / "docker.sock"
        self.base_url = f"unix://{self.socket}"
        self.data_root = workdir / "root"
        self.exec_root = self.short_dir / "exec"
        self.pidfile = self.short_dir / "docker.pid"
        closed = f"http://127.0.0.1:{free_port()}"
        self.proc = Proc(
            [
                "dockerd",
                "--config-file",
                str(daemon_json),
                "--data-root",
                str(self.data_root),
                "--exec-root",
                str(self.exec_root),
                "--pidfile",
                str(self.pidfile),
                "-H",
                self.base_url,
            ],
            workdir / "logs",
            name="dockerd",
            env={
                "HTTP_PROXY": closed,
                "HTTPS_PROXY": closed,
                "NO_PROXY": "127.0.0.1,localhost,::1",
            },
        )

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.proc.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self.proc.running:
                    raise ProcError(f"dockerd exited early\n{self.proc.log_tail()}")
                if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                    return self
                if time.monotonic() >= deadline:
                    raise ProcError(f"dockerd not ready in {timeout}s\n{self.proc.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.stop(timeout=20)
        shutil.rmtree(self.short_dir, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def docker(
        self,
        *args: str,
        config_dir: Path | None = None,
        check: bool = True,
        timeout: float = 180.0,
    ) -> subprocess.CompletedProcess[str]:
        """The Debian docker CLI against this daemon (never a machine-wide client config)."""
        config = config_dir or write_client_config(self.workdir / "client-anonymous", None)
        argv = ["/usr/bin/docker", "--config", str(config), "-H", self.base_url, *args]
        return run_checked(argv, check=check, timeout=timeout)

    def image_ids(self) -> list[str]:
        out = self.docker("images", "--quiet", "--no-trunc").stdout
        return [line for line in out.splitlines() if line]
