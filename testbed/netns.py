"""Several "hosts" on one machine: network namespaces on a bridge that has its own namespace.

    with Topology(3, upload={1: "100mbit"}) as topo:
        server = topo.hosts[0].popen([sys.executable, "-m", "http.server", "8000"])
        topo.hosts[1].run(["curl", f"http://{topo.hosts[0].ip}:8000/"])

Layout: ``PREFIX-sw`` holds bridge ``br0``; each host ``PREFIX-nI`` (I from 1) has ``eth0``
with 10.X.0.I/24, veth-paired with ``vI`` on the bridge, and ``lo`` up. Nothing is added to
the root namespace, so the root namespace has no route to these addresses.

SAFETY: never send traffic to a 10.X address from the root namespace (a request to it would
leave the machine). Every client, readiness probe and benchmark driver that talks to a host
address must run inside one of the namespaces: ``host.run`` / ``host.popen`` /
``Proc(..., netns=host.name)`` / ``wait_for_port(..., netns=host.name)``.

Shaping uses ``tbf`` (netem/fq are not available here): upload on the host's ``eth0``,
download on its switch-side ``vI``. Every namespace is deleted in ``close()`` (also called when
``__enter__`` fails halfway or on KeyboardInterrupt), and processes started with
``host.popen`` are killed first, by PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.procs import ProcError, require_binary

log = logging.getLogger(__name__)

NAME_PREFIX = "lsw"
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)?$")
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000, None: 1}

Rate = str | int  # "100mbit" or bits per second


def rate_bits(rate: Rate) -> int:
    if isinstance(rate, int):
        return rate
    m = _RATE_RE.match(rate.strip().lower())
    if m is None:
        raise ValueError(f"rate {rate!r}: use an int (bit/s) or N[bit|kbit|mbit|gbit]")
    return int(float(m[1]) * _RATE_UNITS[m[2]])


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise ProcError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def list_namespaces() -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_stale_namespaces() -> list[str]:
    """Delete namespaces left by earlier runs that were killed (their creator PID is gone)."""
    deleted = []
    pattern = re.compile(rf"^{NAME_PREFIX}(\d+)x[0-9a-f]+-(sw|n\d+)$")
    for name in list_namespaces():
        m = pattern.match(name)
        if m is None:
            continue
        pid = int(m[1])
        try:
            os.kill(pid, 0)
            continue  # its creator still runs: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _ip("netns", "del", name, check=False)
        deleted.append(name)
    return deleted


@dataclass
class Host:
    name: str  # the namespace name
    index: int
    ip: str
    topology: Topology = field(repr=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
        )
        if check and res.returncode != 0:
            raise ProcError(
                f"in {self.name}: {' '.join(argv)} failed ({res.returncode})\n"
                f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return res

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this host; the topology kills it (its process group) on close."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p: subprocess.Popen[bytes] = subprocess.Popen(self.argv(argv), start_new_session=True, **kw)
        self.topology._children.append(p)
        return p

    @property
    def eth(self) -> str:
        return "eth0"

    @property
    def switch_port(self) -> str:
        return f"v{self.index}"


class Topology:
    """``n`` hosts on one bridge; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        n: int,
        *,
        upload: Mapping[int, Rate] | None = None,
        download: Mapping[int, Rate] | None = None,
        prefix: str | None = None,
        subnet: int | None = None,
    ) -> None:
        """``upload`` / ``download``: host index (from 1) -> rate, e.g. ``{1: "100mbit"}``."""
        if not 1 <= n <= 200:
            raise ValueError("1..200 hosts")
        self.n = n
        # PID + random: unique per run and per topology, and recognisable as ours when stale.
        self.prefix = prefix or f"{NAME_PREFIX}{os.getpid()}x{random.randrange(16**4):04x}"
        self.subnet = subnet if subnet is not None else random.randrange(64, 250)
        self.switch = f"{self.prefix}-sw"
        self.hosts: list[Host] = []
        self.upload = dict(upload or {})
        self.download = dict(download or {})
        self._created: list[str] = []
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        # Recorded before creation so a half-made namespace is deleted too.
        self._created.append(name)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        require_binary("ip")
        require_binary("tc")
        if os.geteuid() != 0:
            raise ProcError("network namespaces need root")
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, self.n + 1):
            host = Host(f"{self.prefix}-n{i}", i, f"10.{self.subnet}.0.{i}", self)
            self._add_ns(host.name)
            self.hosts.append(host)
            port = host.switch_port
            # The pair is created inside the switch namespace with its peer placed straight
            # into the host's: the root namespace never holds an interface of the topology.
            _ip(
                "-n", self.switch, "link", "add", port,
                "type", "veth", "peer", "name", "eth0", "netns", host.name,
            )  # fmt: skip
            _ip("-n", host.name, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
        for i, rate in self.upload.items():
            self.shape(self.host(i).name, "eth0", rate)
        for i, rate in self.download.items():
            self.shape(self.switch, self.host(i).switch_port, rate)

    def host(self, index: int) -> Host:
        return self.hosts[index - 1]

    @staticmethod
    def shape(netns: str, dev: str, rate: Rate) -> None:
        bits = rate_bits(rate)
        # The bucket must hold at least one tick's worth of traffic (HZ may be 100) and a
        # few full-size frames, or tbf throttles well below the configured rate.
        burst = max(32 * 1024, bits // 8 // 100)
        res = subprocess.run(
            ["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", f"{bits}bit", "burst", str(burst), "latency", "400ms"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise ProcError(f"tc tbf on {netns}/{dev} failed: {res.stderr.strip()}")

    def qdiscs(self, netns: str, dev: str) -> str:
        res = subprocess.run(
            ["tc", "-n", netns, "qdisc", "show", "dev", dev],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return res.stdout

    def close(self) -> None:
        try:
            self._stop_children()
        finally:
            # Hosts first, then the switch; deleting a namespace removes its veth ends too.
            for name in reversed(self._created):
                res = _ip("netns", "del", name, check=False)
                if res.returncode != 0 and name in list_namespaces():
                    log.warning("could not delete netns %s: %s", name, res.stderr.strip())
            self._created.clear()

    def _stop_children(self) -> None:
        for p in self._children:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
            # Children that outlived the leader still carry its group id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        self._children.clear()
