"""A real upstream registry (Debian's ``docker-registry``, CNCF distribution 2.8) for tests.

Modes: plain, htpasswd (bcrypt), bearer token (with ``TokenIssuer``) and pull-through proxy.
Its Apache-style access log (stdout) is parsed so tests can count what the upstream really
served instead of guessing:

    reg = Registry(tmp_path / "reg").start()
    ...
    assert reg.blob_fetches(layer_digest) == 1, reg.proc.log_tail()
    reg.stop(); reg.start()   # same port, same data: "upstream down, then back"
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.procs import Proc, free_port, wait_for_http, wait_for_port
from testbed.tokenissuer import TokenIssuer

DEFAULT_SERVICE = "layerswarm-test-registry"

# 127.0.0.1 - user [22/Nov/2026:06:10:03 +0000] "GET /v2/x HTTP/1.1" 200 2 "" "skopeo/1.9.3"
_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<bytes>\S+) '
    r'"(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
)


@dataclass(frozen=True)
class AccessLine:
    remote: str
    user: str
    method: str
    path: str
    status: int
    bytes: int
    user_agent: str

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]


def parse_access_log(text: str) -> list[AccessLine]:
    out = []
    for line in text.splitlines():
        m = _ACCESS_RE.match(line)
        if m is None:
            continue
        size = m["bytes"]
        out.append(
            AccessLine(
                remote=m["remote"],
                user=m["user"],
                method=m["method"],
                path=m["path"],
                status=int(m["status"]),
                bytes=int(size) if size.isdigit() else 0,
                user_agent=m["user_agent"],
            )
        )
    return out


def bcrypt_htpasswd(users: Mapping[str, str]) -> str:
    """htpasswd file text with bcrypt entries (the only hash distribution accepts)."""
    import bcrypt

    lines = []
    for name, password in users.items():
        # Cost 4 (the minimum) keeps the per-request check cheap; these are test passwords.
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{name}:{digest}")
    return "\n".join(lines) + "\n"


class Registry:
    """One ``docker-registry serve`` process with filesystem storage under ``workdir``.

    ``host_port`` is the name clients use ("127.0.0.1:5000"); ``url`` is ``http://`` + that.
    With ``netns`` the registry runs in that namespace on ``host`` (an address of it), and
    readiness is checked from inside the namespace.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token_issuer: TokenIssuer | None = None,
        service: str = DEFAULT_SERVICE,
        proxy_remoteurl: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        redirect_baseurl: str | None = None,
        name: str = "registry",
    ) -> None:
        if htpasswd is not None and token_issuer is not None:
            raise ValueError("choose htpasswd or token auth, not both")
        self.workdir = workdir
        self.host = host
        self.netns = netns
        if port is None:
            # In a namespace every port is free; outside, ask the kernel for one.
            port = 5000 if netns is not None else free_port(host)
        self.port = port
        self.htpasswd_users = dict(htpasswd) if htpasswd is not None else None
        self.token_issuer = token_issuer
        self.service = service
        self.proxy_remoteurl = proxy_remoteurl
        # distribution's "redirect" storage middleware: blob GETs answer 307 to this base URL
        # plus the storage path, the way S3/CDN-backed registries (Docker Hub, ghcr.io) do.
        self.redirect_baseurl = redirect_baseurl
        self.data_dir = workdir / "data"
        self.config_path = workdir / "config.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._write_config(proxy_username, proxy_password)
        self.proc = Proc(
            ["docker-registry", "serve", str(self.config_path)],
            workdir / "logs",
            name=name,
            netns=netns,
        )

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def _write_config(self, proxy_username: str | None, proxy_password: str | None) -> None:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                # The purge goroutine only matters for long-lived registries.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret silences the "no HTTP secret" warning and survives restarts.
            "http": {"addr": self.host_port, "secret": "layerswarm-test-secret"},
        }
        if self.htpasswd_users is not None:
            htpasswd_path = self.workdir / "htpasswd"
            htpasswd_path.write_text(bcrypt_htpasswd(self.htpasswd_users))
            config["auth"] = {"htpasswd": {"realm": "layerswarm-test", "path": str(htpasswd_path)}}
        if self.token_issuer is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_issuer.realm,
                    "service": self.service,
                    "issuer": self.token_issuer.issuer,
                    "rootcertbundle": str(self.token_issuer.cert_path),
                }
            }
        if self.redirect_baseurl is not None:
            config["middleware"] = {
                "storage": [{"name": "redirect", "options": {"baseurl": self.redirect_baseurl}}]
            }
        if self.proxy_remoteurl is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remoteurl}
            if proxy_username is not None:
                proxy["username"] = proxy_username
                proxy["password"] = proxy_password or ""
            config["proxy"] = proxy
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> Registry:
        self.proc.start()
        try:
            if self.netns is not None:
                wait_for_port(self.host, self.port, timeout, netns=self.netns, proc=self.proc)
            else:
                wait_for_port(self.host, self.port, timeout, proc=self.proc)
                wait_for_http(f"{self.url}/v2/", timeout, proc=self.proc)
        except BaseException:
            self.proc.stop()
            raise
        return self

    def stop(self) -> None:
        self.proc.stop()

    @property
    def running(self) -> bool:
        return self.proc.running

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def blob_path(self, digest: str) -> Path:
        """Where filesystem storage keeps that blob's bytes (exists once fully stored)."""
        algo, _, hexpart = digest.partition(":")
        base = self.data_dir / "docker" / "registry" / "v2" / "blobs"
        return base / algo / hexpart[:2] / hexpart / "data"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def wait_for_blob(self, digest: str, timeout: float = 15.0) -> None:
        """Wait until the blob is committed to storage (a proxy stores it in the background)."""
        deadline = time.monotonic() + timeout
        while not self.has_blob(digest):
            if time.monotonic() >= deadline:
                raise AssertionError(f"{digest} not stored by {self.host_port} in {timeout}s")
            time.sleep(0.05)

    # ---- the access log -------------------------------------------------------------------

    def _settle(self, quiet: float = 0.15, limit: float = 3.0) -> None:
        # The registry writes an access line after the response body; a client can finish
        # reading a moment before that line reaches the file. Wait until the log stops growing.
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            size = self.proc.stdout_path.stat().st_size if self.proc.stdout_path.exists() else 0
            if size == last:
                return
            last = size
            time.sleep(quiet)

    def access_log(self) -> list[AccessLine]:
        self._settle()
        try:
            text = self.proc.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_access_log(text)

    def requests(
        self,
        *,
        kind: str | None = None,
        repo: str | None = None,
        reference: str | None = None,
        methods: Iterable[str] = ("GET",),
        statuses: Iterable[int] | None = None,
    ) -> list[AccessLine]:
        """Access lines for ``/v2/<repo>/<kind>/<reference>`` (kind "blobs" or "manifests")."""
        wanted_methods = set(methods)
        wanted_status = set(statuses) if statuses is not None else None
        out = []
        for line in self.access_log():
            if line.method not in wanted_methods:
                continue
            if wanted_status is not None and line.status not in wanted_status:
                continue
            parts = line.path_only.split("/")
            # ["", "v2", *repo parts, kind, reference]
            if len(parts) < 5 or parts[1] != "v2":
                continue
            if kind is not None and parts[-2] != kind:
                continue
            if reference is not None and parts[-1] != reference:
                continue
            if repo is not None and "/".join(parts[2:-2]) != repo:
                continue
            out.append(line)
        return out

    def blob_fetches(self, digest: str, repo: str | None = None) -> int:
        """How many GETs of that blob the registry answered with 200 or 206."""
        return len(self.requests(kind="blobs", repo=repo, reference=digest, statuses=(200, 206)))

    def blob_bytes_served(self, digest: str, repo: str | None = None) -> int:
        lines = self.requests(kind="blobs", repo=repo, reference=digest, statuses=(200, 206))
        return sum(line.bytes for line in lines)

    def manifest_fetches(
        self,
        repo: str | None = None,
        reference: str | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> int:
        """How many manifest requests (by default GETs) the registry answered with 200."""
        return len(
            self.requests(
                kind="manifests",
                repo=repo,
                reference=reference,
                methods=methods,
                statuses=(200,),
            )
        )
