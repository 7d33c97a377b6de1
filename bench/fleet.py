"""Fleet rollout benchmark: N nodes pull one image at the same moment, four ways.

    python -m bench.fleet [--nodes 8] [--image-mib 64] [--layers 4] [--upstream-mbit 50]
        [--node-mbit 80] [--segment-size 4M] [--out DIR] [--transports relay,torrent]
        [--repeat 3] [--scenarios direct,regional-cache,layerswarm-cold,layerswarm-preheated]

Every scenario gets a fresh topology of network namespaces (nothing shared, no cache left
over) with the same image bytes and the same link shapes:

- host 1: the upstream registry (docker-registry), its upload shaped to the WAN rate U;
- host 2: the tracker (layerswarm scenarios only use it; unshaped, it is a control plane);
- hosts 3..N+2: the nodes, upload and download shaped to B, each pulling with skopeo;
- host N+3: the regional cache (docker-registry in proxy mode) or the seed agent, shaped to
  ``--cache-mbit`` (default B: the same machine as a node).

All skopeo processes wait on one go-file and are released together (the barrier); a node's
time runs from the release to its skopeo's exit. The upstream's access log says how many
blob bytes really crossed the WAN; the switch's port counters, sampled twice a second, give
each host's bytes in and out over time. Outputs in --out: results.json, results.md, cdf.png
and timeline.png (per-node receive and send rates: do followers feed each other?).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.agent import AgentProc
from testbed.clients import (
    compare_dir_with_image,
    compare_oci_with_image,
    write_registries_conf,
)
from testbed.images import Image, ImageLayout, build_image, push
from testbed.netns import Host, Topology, delete_stale_namespaces
from testbed.procs import Proc, ProcError, require_binary, wait_for_port
from testbed.registry import Registry

log = logging.getLogger("bench.fleet")

MiB = 1 << 20
SCENARIOS = (
    "direct",
    "regional-cache",
    "layerswarm-cold",
    "layerswarm-preheated",
    "layerswarm-blackholed",
)
DEFAULT_SCENARIOS = SCENARIOS[:4]
BLACKHOLES = 3
BLACKHOLE_PORT = 6900
REPO = "team/app"
TAG = "v1"
TRACKER_PORT = 7070
AGENT_PORT = 5050
PEER_PORT = 6881
# The tracker hands agents a heartbeat of agent_ttl/3; 6 s makes a seed poll for its
# preheat task every 2 s instead of every 10 s (the default), so the benchmark measures the
# transfer rather than the polling interval. Nothing else in the rollout depends on it.
TRACKER_AGENT_TTL = "6"


@dataclass(frozen=True)
class Params:
    nodes: int = 8
    image_mib: float = 64
    layers: int = 4
    # Chosen after measuring this 2-core machine: 8 x 40 Mbit/s = 38 MiB/s of peer traffic,
    # under half of what the peer engine moves here (80-90 MiB/s), and U < B so the WAN is
    # the bound of a cold rollout. The whole default run takes about 8 minutes.
    upstream_mbit: float = 30
    node_mbit: float = 40
    cache_mbit: float | None = None  # None: same link as a node
    segment_size: str = "4M"
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    timeout: float = 300.0  # per rollout, per preheat
    capacity: bool = True  # measure the machine's capacity first
    seed: int = 7
    agent_args: tuple[str, ...] = ()  # extra flags for every agent, e.g. ("--peer-wait", "60")
    transports: tuple[str, ...] = ("relay",)  # layerswarm scenarios run once per transport
    # Named agent configurations compared side by side: every layerswarm scenario runs once
    # per variant, the variants taking turns within each repeat (the machine's load drifts).
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Where skopeo copies to. "oci" (a layout) fetches layers concurrently, as Docker and
    # containerd do; "dir" fetches them one after another (containers/image copies into a
    # dir: destination serially), which the figures before the relay transport used.
    client_dest: str = "oci"
    repeat: int = 1  # runs of each scenario; tables report each and the median

    @property
    def cache_rate_mbit(self) -> float:
        return self.cache_mbit if self.cache_mbit is not None else self.node_mbit


@dataclass
class NodeResult:
    node: int
    seconds: float
    returncode: int
    verified: bool
    error: str = ""


@dataclass
class ScenarioResult:
    scenario: str
    image_bytes: int
    upstream_bytes: int  # blob bytes the upstream served during the whole scenario
    upstream_bytes_rollout: int  # ... during the timed rollout only
    upstream_by_remote: dict[str, int]
    bound_seconds: float
    nodes: list[NodeResult]
    cpu_busy: float  # busy fraction of all cores during the rollout (whole machine)
    cpu_bench_cores: float  # cores used by this scenario's processes (skopeo, servers, agents)
    wall_seconds: float
    preheat_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    label: str = ""  # scenario[transport]
    # Per host index: [(seconds since the barrier, bytes received, bytes sent)], from the
    # switch's counters of the host's port (payload plus headers).
    timeline: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    # Tracker requests by endpoint during the rollout, heartbeats apart, per node.
    tracker_requests_per_node: dict[str, float] = field(default_factory=dict)
    # Bytes under each node's data dir / bytes of its cached blobs, after the rollout.
    disk_ratio: float | None = None
    cpu_client_cores: float = 0.0  # of cpu_bench_cores, the clients' (skopeo) share

    @property
    def times(self) -> list[float]:
        return sorted(n.seconds for n in self.nodes)

    @property
    def upstream_ratio(self) -> float:
        return self.upstream_bytes / self.image_bytes

    def summary(self) -> dict[str, Any]:
        t = self.times
        # Heartbeats and the polls that ride on each (preheat tasks, tag invalidations) are
        # not per-blob work.
        requests = {
            k: v
            for k, v in self.tracker_requests_per_node.items()
            if not k.endswith(("/heartbeat", "/tasks", "/invalidations", "/metrics"))
        }
        return {
            "tracker_requests_per_node": round(sum(requests.values()), 1),
            "disk_ratio": round(self.disk_ratio, 3) if self.disk_ratio is not None else None,
            "upstream_ratio": round(self.upstream_ratio, 3),
            "upstream_ratio_rollout": round(self.upstream_bytes_rollout / self.image_bytes, 3),
            "p50": round(percentile(t, 50), 2),
            "p99": round(percentile(t, 99), 2),
            "max": round(max(t), 2),
            "max_over_bound": round(max(t) / self.bound_seconds, 2),
            "p50_over_bound": round(percentile(t, 50) / self.bound_seconds, 2),
            "all_verified": all(n.verified for n in self.nodes),
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


class CpuMeter:
    """Busy fraction of the whole machine between start() and stop(), from /proc/stat."""

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle  # guest time is already counted in user

    def start(self) -> None:
        self._t0 = self._read()

    def stop(self) -> float:
        total, idle = self._read()
        dt = total - self._t0[0]
        return (dt - (idle - self._t0[1])) / dt if dt > 0 else 0.0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mbit_to_bytes(mbit: float) -> float:
    return mbit * 1_000_000 / 8


def _rate(mbit: float) -> int:
    return int(mbit * 1_000_000)


# ---- talking to the tracker from inside a namespace ------------------------------------------

_HTTP_JSON = """
import json, sys, urllib.request
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def http_json(host: Host, method: str, url: str, token: str, body: Any = None) -> Any:
    """One JSON request made inside ``host``'s namespace (never from the root namespace)."""
    data = json.dumps(body) if body is not None else ""
    res = host.run([sys.executable, "-c", _HTTP_JSON, method, url, token, data], timeout=30)
    return json.loads(res.stdout)


# ---- one scenario ------------------------------------------------------------------------------


class ScenarioRun:
    """A fresh topology with the upstream, the scenario's parts, and N nodes ready to pull."""

    def __init__(
        self,
        name: str,
        params: Params,
        layout: ImageLayout,
        work: Path,
        transport: str = "relay",
        variant_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.transport = transport
        self.variant_args = variant_args
        self.p = params
        self.layout = layout
        self.work = work
        self.extra_host = name in (
            "regional-cache",
            "layerswarm-preheated",
            "layerswarm-blackholed",
        )
        self.layerswarm = name.startswith("layerswarm")
        n_hosts = 2 + params.nodes + (1 if self.extra_host else 0)
        node_rate = _rate(params.node_mbit)
        upload: dict[int, int] = {1: _rate(params.upstream_mbit)}
        download: dict[int, int] = {}
        for i in range(3, 3 + params.nodes):
            upload[i] = download[i] = node_rate
        if self.extra_host:
            upload[n_hosts] = download[n_hosts] = _rate(params.cache_rate_mbit)
        self.topo = Topology(n_hosts, upload=upload, download=download)
        self.token = secrets.token_urlsafe(24)
        self.registry: Registry | None = None
        self.cache: Registry | None = None
        self.tracker: Proc | None = None
        self.agents: list[AgentProc] = []
        self.image: Image | None = None
        self.notes: list[str] = []
        self.timeline: dict[str, list[tuple[float, int, int]]] = {}
        self.client_cores = 0.0

    # hosts
    @property
    def upstream_host(self) -> Host:
        return self.topo.host(1)

    @property
    def tracker_host(self) -> Host:
        return self.topo.host(2)

    @property
    def node_hosts(self) -> list[Host]:
        return [self.topo.host(i) for i in range(3, 3 + self.p.nodes)]

    @property
    def extra(self) -> Host:
        return self.topo.host(3 + self.p.nodes)

    @property
    def tracker_url(self) -> str:
        return f"http://{self.tracker_host.ip}:{TRACKER_PORT}"

    def __enter__(self) -> ScenarioRun:
        self.topo.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for agent in self.agents:
                agent.stop()
            for proc in (self.tracker, self.cache, self.registry):
                if proc is not None:
                    proc.stop()
        finally:
            self.topo.close()

    # setup
    def setup(self) -> None:
        self.registry = Registry(
            self.work / "upstream", host=self.upstream_host.ip, netns=self.upstream_host.name
        ).start()
        # skopeo pushes from inside the upstream's own namespace (its lo: not shaped).
        self.image = push(self.layout, self.registry, REPO, TAG)
        if self.name == "regional-cache":
            self.cache = Registry(
                self.work / "cache",
                host=self.extra.ip,
                netns=self.extra.name,
                proxy_remoteurl=self.registry.url,
                name="cache",
            ).start()
        if self.layerswarm:
            self._start_tracker()
            for host in self.node_hosts:
                self._start_agent(host, "peer")
            if self.name == "layerswarm-preheated":
                self._start_agent(self.extra, "seed")
            self._wait_agents(len(self.agents))
            if self.name == "layerswarm-blackholed":
                self._start_blackholes()

    def _start_blackholes(self) -> None:
        assert self.image is not None
        blobs = [f"{d}:{len(self.layout.blob(d))}" for d in self.image.blob_digests]
        proc = self.extra.popen(
            [sys.executable, "-m", "bench.blackhole", self.extra.ip, str(BLACKHOLE_PORT),
             str(BLACKHOLES), self.tracker_url, str(self.work / "tracker-token"), *blobs],
            stdout=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[1]),
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise ProcError("the black-hole peers did not start")

    def _start_tracker(self) -> None:
        token_file = self.work / "tracker-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        host = self.tracker_host
        self.tracker = Proc(
            [sys.executable, "-m", "layerswarm", "tracker",
             "--listen", f"{host.ip}:{TRACKER_PORT}", "--token-file", str(token_file),
             "--agent-ttl", TRACKER_AGENT_TTL],
            self.work / "tracker-logs", name="tracker", netns=host.name,
        ).start()  # fmt: skip
        wait_for_port(host.ip, TRACKER_PORT, 30, netns=host.name, proc=self.tracker)

    def _start_agent(self, host: Host, role: str) -> None:
        assert self.registry is not None
        agent = AgentProc(
            self.work / f"agent-{host.index}",
            {self.registry.host_port: self.registry.url},
            default_upstream=self.registry.host_port,
            host=host.ip,
            port=AGENT_PORT,
            netns=host.name,
            extra=[
                "--tracker", self.tracker_url,
                "--tracker-token-file", str(self.work / "tracker-token"),
                "--peer-listen", f"{host.ip}:{PEER_PORT}",
                "--advertise-address", host.ip,
                "--zone", "z1", "--region", "r1",
                "--role", role,
                "--segment-size", self.p.segment_size,
                "--peer-transport", self.transport,
                *self.p.agent_args,
                *self.variant_args,
            ],
        )  # fmt: skip
        self.agents.append(agent)
        agent.start()
        assert agent.proc is not None
        wait_for_port(host.ip, AGENT_PORT, 30, netns=host.name, proc=agent.proc)

    def _wait_agents(self, count: int, timeout: float = 30.0) -> None:
        # A node that pulls before its first heartbeat is unknown to its peers: start the
        # clock only once the tracker lists the whole fleet.
        deadline = time.monotonic() + timeout
        live = 0
        while time.monotonic() < deadline:
            fleet = http_json(self.tracker_host, "GET", f"{self.tracker_url}/v1/fleet", self.token)
            live = len(fleet.get("agents", []))
            if live >= count:
                return
            time.sleep(0.3)
        raise ProcError(f"tracker lists {live} of {count} agents after {timeout}s")

    def preheat(self) -> float:
        """POST /preheat (scope seeds) and wait until the job is done; returns its seconds."""
        assert self.image is not None
        t0 = time.monotonic()
        job = http_json(
            self.tracker_host, "POST", f"{self.tracker_url}/preheat", self.token,
            {"image": self.image.ref, "scope": "seeds"},
        )  # fmt: skip
        deadline = t0 + self.p.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = http_json(
                self.tracker_host, "GET", f"{self.tracker_url}/preheat/{job['id']}", self.token
            )
            if status.get("state") == "done":
                return time.monotonic() - t0
            if status.get("state") == "failed":
                raise ProcError(f"preheat failed: {json.dumps(status)[:2000]}")
            time.sleep(0.5)
        raise ProcError(f"preheat not done in {self.p.timeout}s: {json.dumps(status)[:2000]}")

    # instruments
    def link_counters(self) -> dict[int, tuple[int, int]]:
        """Host index -> (bytes the host received, bytes it sent), read off its switch port
        in one command for the whole fleet (the switch's tx is the host's rx)."""
        res = subprocess.run(
            ["ip", "-n", self.topo.switch, "-s", "-j", "link", "show"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        out: dict[int, tuple[int, int]] = {}
        if res.returncode != 0:
            return out
        for link in json.loads(res.stdout):
            name = link.get("ifname", "")
            if name.startswith("v") and name[1:].isdigit():
                st = link["stats64"]
                out[int(name[1:])] = (int(st["tx"]["bytes"]), int(st["rx"]["bytes"]))
        return out

    def tracker_requests(self) -> dict[str, float]:
        """Tracker requests so far by endpoint, from its own metrics."""
        if self.tracker is None:
            return {}
        script = (
            "import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
        )
        res = self.tracker_host.run(
            [sys.executable, "-c", script, f"{self.tracker_url}/metrics"], timeout=30
        )
        counts: dict[str, float] = defaultdict(float)
        for line in res.stdout.splitlines():
            if line.startswith("layerswarm_tracker_requests_total{"):
                labels, _, value = line.rpartition(" ")
                endpoint = labels.split('endpoint="', 1)[1].split('"', 1)[0]
                counts[endpoint] += float(value)
        return dict(counts)

    def disk_ratio(self) -> float | None:
        """Bytes under every node's data dir / bytes of the blobs they cached."""
        total = blobs = 0
        for agent in self.agents:
            for path in agent.data_dir.rglob("*"):
                if path.is_file():
                    size = path.stat().st_size
                    total += size
                    if "blobs" in path.relative_to(agent.data_dir).parts[:1]:
                        blobs += size
        return total / blobs if blobs else None

    # the rollout
    def _registries_conf(self, host: Host) -> Path:
        assert self.image is not None
        mirror: str | None = None
        if self.cache is not None:
            mirror = self.cache.host_port
        elif self.layerswarm:
            mirror = f"{host.ip}:{AGENT_PORT}"
        return write_registries_conf(self.work / f"reg-{host.index}.conf", self.image.host, mirror)

    def server_pids(self) -> list[int]:
        procs = [r.proc for r in (self.registry, self.cache) if r is not None]
        procs += [p for p in (self.tracker, *(a.proc for a in self.agents)) if p is not None]
        return [p.pid for p in procs if p.running]

    def _start_gated_clients(
        self, go: Path, env: dict[str, str]
    ) -> list[tuple[Host, Path, subprocess.Popen[bytes]]]:
        """One skopeo per node, each waiting in its namespace for ``go`` to exist."""
        assert self.image is not None
        procs: list[tuple[Host, Path, subprocess.Popen[bytes]]] = []
        for host in self.node_hosts:
            dest = self.work / f"pull-{host.index}"
            conf = self._registries_conf(host)
            target = f"oci:{dest}:{TAG}" if self.p.client_dest == "oci" else f"dir:{dest}"
            skopeo = [
                "skopeo", "--registries-conf", str(conf), "copy", "--quiet", "--src-no-creds",
                f"docker://{self.image.ref}", target,
            ]  # fmt: skip
            # The barrier: each process is already running in its namespace and execs skopeo
            # as soon as the go-file exists (polled every 10 ms, a few wake-ups per second).
            gate = [
                "sh", "-c",
                'i=0; while [ ! -e "$1" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done; '
                'shift; exec "$@"',
                "gate", str(go), *skopeo,
            ]  # fmt: skip
            err = (self.work / f"skopeo-{host.index}.err").open("wb")
            procs.append((host, dest, host.popen(gate, env=env, stdout=err, stderr=err)))
            err.close()
        return procs

    def _result(
        self, host: Host, dest: Path, p: subprocess.Popen[bytes], seconds: float
    ) -> NodeResult:
        """A node's pull: its time, exit code and whether what it wrote is the image."""
        assert self.image is not None
        nr = NodeResult(host.index - 2, seconds, p.returncode, verified=False)
        if p.returncode == 0:
            try:
                if self.p.client_dest == "oci":
                    compare_oci_with_image(dest, self.image)
                else:
                    compare_dir_with_image(dest, self.image)
                nr.verified = True
            except AssertionError as exc:
                nr.error = str(exc)[:500]
        else:
            err = self.work / f"skopeo-{host.index}.err"
            nr.error = err.read_text(errors="replace")[-500:]
        shutil.rmtree(dest, ignore_errors=True)
        return nr

    def rollout(self) -> tuple[list[NodeResult], float, float, float]:
        """Release every node's skopeo at once.

        Returns (per-node results, machine busy fraction, cores used by the scenario's own
        processes, wall seconds).
        """
        assert self.image is not None
        go = self.work / "go"
        auth = self.work / "empty-auth.json"
        auth.write_text("{}")
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth)}
        procs = self._start_gated_clients(go, env)
        time.sleep(1.0)  # every gate is polling by now
        ends: dict[int, float] = {}
        client_cpu: dict[int, float] = {}
        lock = threading.Lock()

        def wait(i: int, p: subprocess.Popen[bytes]) -> None:
            cpu = _wait_for_pull(p, self.p.timeout)
            with lock:
                ends[i] = time.monotonic()
                client_cpu[i] = cpu

        meter = CpuMeter()
        servers = self.server_pids()
        server_cpu0 = sum(proc_cpu_seconds(pid) for pid in servers)
        base = self.link_counters()
        samples: list[tuple[float, dict[int, tuple[int, int]]]] = []
        done = threading.Event()

        def sample(t0: float) -> None:
            while not done.wait(0.5):
                samples.append((time.monotonic() - t0, self.link_counters()))

        with concurrent.futures.ThreadPoolExecutor(len(procs) + 1) as pool:
            meter.start()
            t0 = time.monotonic()
            go.touch()
            sampler = pool.submit(sample, t0)
            futures = [pool.submit(wait, i, p) for i, (_, _, p) in enumerate(procs)]
            try:
                for f in futures:
                    f.result()
            finally:
                # Else a failed wait leaves the sampler running and the pool's exit waits
                # on it forever (a hung run, namespaces never deleted).
                done.set()
            sampler.result()
        cpu = meter.stop()
        samples.append((time.monotonic() - t0, self.link_counters()))
        self.timeline = _timeline(base, samples)
        wall = max(ends.values()) - t0
        own = sum(proc_cpu_seconds(pid) for pid in servers) - server_cpu0
        self.client_cores = sum(client_cpu.values()) / wall if wall > 0 else 0.0
        own += sum(client_cpu.values())
        results = [
            self._result(host, dest, p, ends[i] - t0) for i, (host, dest, p) in enumerate(procs)
        ]
        return results, cpu, own / wall if wall > 0 else 0.0, wall

    def upstream_blob_lines(self) -> list[tuple[str, int]]:
        assert self.registry is not None
        lines = self.registry.requests(kind="blobs", statuses=(200, 206))
        return [(line.remote.rsplit(":", 1)[0], line.bytes) for line in lines]


def bound_seconds(name: str, p: Params, image_bytes: int) -> float:
    """The physical bound: every byte must cross the WAN once and each node's link once.

    Preheated: the image is already in the region, so only the node link counts.
    """
    node = image_bytes / mbit_to_bytes(p.node_mbit)
    if name == "layerswarm-preheated":
        return node
    return max(image_bytes / mbit_to_bytes(p.upstream_mbit), node)


def _keep_logs(work: Path, dest: Path) -> None:
    # Server, agent and client logs are small and are what explains a slow node.
    for path in work.rglob("*.log"):
        target = dest / path.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for path in work.glob("skopeo-*.err"):
        shutil.copy2(path, dest / path.name)


def run_scenario(
    name: str,
    p: Params,
    layout: ImageLayout,
    work: Path,
    logs: Path | None = None,
    transport: str = "relay",
    variant: tuple[str, tuple[str, ...]] = ("", ()),
) -> ScenarioResult:
    work.mkdir(parents=True, exist_ok=True)
    image_bytes = sum(len(layout.blob(d)) for d in layout.blob_digests)
    kind = f"{transport}/{variant[0]}" if variant[0] else transport
    label = f"{name}[{kind}]" if name.startswith("layerswarm") else name
    log.info("scenario %s: setting up %d nodes", label, p.nodes)
    with ScenarioRun(name, p, layout, work, transport, variant[1]) as run:
        run.setup()
        preheat_s = None
        if name == "layerswarm-preheated":
            preheat_s = run.preheat()
            log.info("scenario %s: preheat done in %.1fs", label, preheat_s)
        before = len(run.upstream_blob_lines())
        requests0 = run.tracker_requests()
        log.info("scenario %s: rollout", label)
        nodes, cpu, own_cores, wall = run.rollout()
        requests1 = run.tracker_requests()
        per_node = {
            k: round((v - requests0.get(k, 0.0)) / p.nodes, 2)
            for k, v in requests1.items()
            if v > requests0.get(k, 0.0)
        }
        lines = run.upstream_blob_lines()
        by_remote: dict[str, int] = defaultdict(int)
        for remote, size in lines:
            by_remote[remote] += size
        failed = [n for n in nodes if not n.verified]
        if failed:
            run.notes.append(f"{len(failed)} node(s) failed: {failed[0].error[:300]}")
            for agent in run.agents:
                log.warning("agent log:\n%s", agent.log()[-3000:])
        res = ScenarioResult(
            scenario=name,
            image_bytes=image_bytes,
            upstream_bytes=sum(size for _, size in lines),
            upstream_bytes_rollout=sum(size for _, size in lines[before:]),
            upstream_by_remote=dict(by_remote),
            bound_seconds=bound_seconds(name, p, image_bytes),
            nodes=nodes,
            cpu_busy=cpu,
            cpu_bench_cores=own_cores,
            wall_seconds=wall,
            preheat_seconds=preheat_s,
            notes=run.notes,
            label=label,
            timeline=run.timeline,
            tracker_requests_per_node=per_node,
            disk_ratio=run.disk_ratio() if run.layerswarm else None,
            cpu_client_cores=run.client_cores,
        )
    if logs is not None:
        _keep_logs(work, logs)
    # The scenario's caches and registries go with it: the next one starts from nothing.
    shutil.rmtree(work, ignore_errors=True)
    return res


# ---- the machine's capacity --------------------------------------------------------------------


def measure_capacity(work: Path) -> dict[str, float]:
    """iperf3 between two unshaped namespaces, and the peer engine (1 seed -> 4 receivers)."""
    out: dict[str, float] = {}
    require_binary("iperf3")
    with Topology(2) as topo:
        # No "-1": the readiness probe is a connection too. The topology kills the server.
        topo.host(1).popen(
            ["iperf3", "-s", "-B", topo.host(1).ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(topo.host(1).ip, 5201, 10, netns=topo.host(1).name)
        res = topo.host(2).run(
            ["iperf3", "-c", topo.host(1).ip, "-t", "3", "-J"], timeout=30, check=True
        )
        data = json.loads(res.stdout)
        out["iperf3_mbit"] = data["end"]["sum_received"]["bits_per_second"] / 1e6
    from bench.p2p_engine import run_once

    size = 32 * MiB
    seg_dir = work / "p2p" / "seed"
    seg_dir.mkdir(parents=True)
    segments = []
    for i in range(size // (4 * MiB)):
        path = seg_dir / f"seg{i}"
        path.write_bytes(os.urandom(4 * MiB))
        segments.append(path)
    r = asyncio.run(run_once(work / "p2p", segments, 4, False, size / MiB))
    out["p2p_mib_s"] = r.aggregate
    out["p2p_cores"] = r.cpu_seconds / r.seconds
    shutil.rmtree(work / "p2p", ignore_errors=True)
    return out


# ---- the whole run -----------------------------------------------------------------------------


def run(p: Params, out: Path) -> dict[str, Any]:
    """Run every scenario in ``p`` and write results.json, results.md and cdf.png to ``out``."""
    for s in p.scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    out.mkdir(parents=True, exist_ok=True)
    delete_stale_namespaces()
    work = Path(tempfile.mkdtemp(prefix="lsw-fleet-bench-"))
    try:
        capacity: dict[str, float] = {}
        warnings: list[str] = []
        if p.capacity:
            capacity = measure_capacity(work)
            log.info("capacity: %s", capacity)
            demand = p.nodes * mbit_to_bytes(p.node_mbit) / MiB
            if demand > 0.5 * capacity["p2p_mib_s"]:
                warnings.append(
                    f"N*B = {demand:.0f} MiB/s is over half of the peer engine's measured "
                    f"{capacity['p2p_mib_s']:.0f} MiB/s on this machine: CPU, not links, may "
                    "set the layerswarm times"
                )
        layer_bytes = int(p.image_mib * MiB / p.layers)
        layout = build_image(work / "image", [layer_bytes] * p.layers, seed=p.seed, tag=TAG)
        results = []
        for name in p.scenarios:
            swarm = name.startswith("layerswarm")
            transports = p.transports if swarm else ("",)
            variants = p.variants if swarm and p.variants else (("", ()),)
            for rep in range(p.repeat):
                for transport in transports:
                    for variant in variants:
                        parts = [name, transport, variant[0], str(rep)]
                        tag = "-".join(x for x in parts if x)
                        res = run_scenario(
                            name,
                            p,
                            layout,
                            work / tag,
                            out / "logs" / tag,
                            transport or "relay",
                            variant,
                        )
                        log.info("scenario %s: %s", res.label, res.summary())
                        results.append(res)
        doc = {
            "params": asdict(p),
            "machine": {"cores": os.cpu_count(), **capacity},
            "warnings": warnings,
            "image_bytes": results[0].image_bytes if results else 0,
            "scenarios": [{**asdict(r), "summary": r.summary(), "times": r.times} for r in results],
        }
        from bench.fleet_report import write_cdf, write_markdown, write_timelines

        (out / "results.json").write_text(json.dumps(doc, indent=2))
        (out / "results.md").write_text(write_markdown(doc))
        write_cdf(doc, out / "cdf.png")
        write_timelines(doc, out / "timeline.png")
        return doc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Params, Path]:
    d = Params()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--image-mib", type=float, default=d.image_mib)
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--upstream-mbit", type=float, default=d.upstream_mbit)
    ap.add_argument("--node-mbit", type=float, default=d.node_mbit)
    ap.add_argument("--cache-mbit", type=float, default=None, help="default: --node-mbit")
    ap.add_argument("--segment-size", default=d.segment_size)
    ap.add_argument("--timeout", type=float, default=d.timeout)
    ap.add_argument("--no-capacity", action="store_true", help="skip the capacity check")
    ap.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"some of {','.join(SCENARIOS)}; layerswarm-blackholed: every holder the tracker "
        "hands out accepts connections and never sends a byte (compare with direct)",
    )
    ap.add_argument(
        "--agent-args", default="", help='extra agent flags, space-separated: "--peer-wait 60"'
    )
    ap.add_argument(
        "--transports", default="relay", help="relay,torrent: layerswarm runs per transport"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='agent configurations side by side, e.g. --variant "depth=--peer-fanout depth" '
        "--variant upload=--peer-fanout=upload (repeatable; runs take turns)",
    )
    ap.add_argument("--repeat", type=int, default=d.repeat, help="runs of each scenario")
    ap.add_argument(
        "--client-dest",
        choices=("oci", "dir"),
        default=d.client_dest,
        help="oci: skopeo fetches layers concurrently (like Docker, containerd); dir: serially",
    )
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    p = Params(
        nodes=a.nodes,
        image_mib=a.image_mib,
        layers=a.layers,
        upstream_mbit=a.upstream_mbit,
        node_mbit=a.node_mbit,
        cache_mbit=a.cache_mbit,
        segment_size=a.segment_size,
        scenarios=tuple(s.strip() for s in a.scenarios.split(",") if s.strip()),
        timeout=a.timeout,
        capacity=not a.no_capacity,
        agent_args=tuple(a.agent_args.split()),
        transports=tuple(t.strip() for t in a.transports.split(",") if t.strip()),
        repeat=a.repeat,
        client_dest=a.client_dest,
        variants=tuple(_variant(v) for v in a.variant),
    )
    out = a.out or Path("bench/out") / time.strftime("fleet-%Y%m%d-%H%M%S")
    return p, out


def _variant(raw: str) -> tuple[str, tuple[str, ...]]:
    name, sep, args = raw.partition("=")
    if not sep or not name.replace("-", "").isalnum():
        raise SystemExit(f"--variant wants NAME=ARGS, got {raw!r}")
    return name, tuple(args.split())


def _exit_on_sigterm(_sig: int, _frame: object) -> None:
    # A killed benchmark must still delete its namespaces and stop its servers (the
    # topologies' `finally` blocks run on SystemExit, not on a bare SIGTERM).
    raise SystemExit(143)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    p, out = parse_args(argv)
    doc = run(p, out)
    print((out / "results.md").read_text())
    print(f"written to {out}")
    bad = [s["scenario"] for s in doc["scenarios"] if not s["summary"]["all_verified"]]
    return 1 if bad else 0


def _timeline(
    base: dict[int, tuple[int, int]], samples: list[tuple[float, dict[int, tuple[int, int]]]]
) -> dict[str, list[tuple[float, int, int]]]:
    """Per node: (seconds, bytes received, bytes sent) since the rollout started."""
    return {
        str(idx): [
            (
                round(t, 2),
                c[idx][0] - base.get(idx, (0, 0))[0],
                c[idx][1] - base.get(idx, (0, 0))[1],
            )
            for t, c in samples
            if idx in c
        ]
        for idx in base
    }


def _wait_for_pull(p: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a node's skopeo (killed past ``timeout``); its CPU seconds.

    wait4 rather than Popen.wait: its rusage is skopeo's own CPU (the gate and
    `ip netns exec` exec into it, so the PID is the same process).
    """
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            _, status, usage = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    p.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
