"""A simulated fleet rolling out an image against real trackers on a real redis-server.

    .venv/bin/python -m bench.fleet_sim [--agents 10000] [--regions 20] [--layers 10]
        [--trackers 2] [--tracker-workers 1] [--procs 3]
        [--scenarios cold,preheated,churn,kill-tracker] [--redis-memory-agents 10000]
        [--out DIR]

Per scenario a fresh redis-server and ``--trackers`` real ``layerswarm tracker`` processes
(each ``--workers N``) start on loopback; ``--procs`` worker processes then run the simulated
agents (bench/fleet_sim_node.py: the agent's own tracker client and TrackerLink, the relay's
request pattern, data transfer modelled at ``--peer-mbit`` / ``--upstream-mbit``). Regions are
split between worker processes, so a follower's parent is nearly always in its own process.

Scenarios: ``cold`` (nobody holds the image; every node starts pulling at once, or spread
over ``--ramp`` seconds), ``preheated`` (one seed per region holds every layer first),
``churn`` (5% of the pulling agents die and 5% more join during the first ``--churn-window``
seconds), ``kill-tracker`` (the first replica is killed with SIGKILL ``--kill-at`` seconds
into the rollout and stays down), ``restart-redis`` (redis-server is killed ``--kill-at``
seconds in and started again empty on its port: the fleet's state is lost).

Reported per scenario (results.json, results.md): requests/s per tracker, p50/p99 client-side
latency per endpoint, tracker requests per node per layer with heartbeats apart, time until
every node has its first hand-out (a parent, the lease or the upstream) for every layer,
completion time, lease hand-outs per region and layer, upstream fetches, failures, tracker
and Redis CPU per request, Redis memory; after a kill, per node when it first saw a failed
tracker request and how long until one was answered again, and after a Redis restart how
long until each node was registered again. ``--redis-memory-agents N`` also measures Redis
memory for N agents holding 50 digests each, announced through the agent's client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis

from core.trackerclient import HttpTrackerClient
from core.wire import AgentInfo, Announcement
from testbed.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("cold", "preheated", "churn", "kill-tracker", "restart-redis")


@dataclass(frozen=True)
class Params:
    agents: int = 200
    regions: int = 20
    zones: int = 3
    layers: int = 10
    layer_mib: int = 100
    peer_mbit: float = 1000.0
    upstream_mbit: float = 1000.0
    trackers: int = 2
    tracker_workers: int = 1
    procs: int = 2
    scenarios: tuple[str, ...] = SCENARIOS
    ramp: float = 0.0
    churn_window: float = 10.0
    kill_at: float = 2.0
    peer_wait: float = 10.0
    max_children: int = 1
    # The agent's --parent-choice: tracker (the default) or walk.
    parent_choice: str = "tracker"
    connections: int = 512
    timeout: float = 300.0
    warmup: float = 0.0
    seed: int = 1
    redis_memory_agents: int = 0
    # More `layerswarm tracker` flags for every replica, e.g. ("--heartbeat-rate", "10").
    tracker_args: tuple[str, ...] = ()


class Tracker:
    """One ``layerswarm tracker`` replica, in its own session so its group is ours alone."""

    def __init__(
        self, store: str, token_file: Path, workers: int, log: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "layerswarm", "--log-level", "WARNING", "tracker"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--store", store]
        argv += ["--token-file", str(token_file)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        argv += extra
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracker exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"tracker {self.url} not ready in {timeout}s")

    def pids(self) -> list[int]:
        """This replica's process and its workers (direct children)."""
        out = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                out.append(int(stat.parent.name))
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def redis_info(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = dict(client.info("cpu"))
        info.update(client.info("memory"))
        info["dbsize"] = client.dbsize()
        return info
    finally:
        client.close()


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def layer_digest(i: int) -> str:
    return f"sha256:{(0x5CA1E << 200) + i:064x}"


def plan_agents(
    params: Params, scenario: str, rng: random.Random
) -> list[tuple[int, str, str, str, float, float, bool]]:
    """(index, region, zone, role, join_at, die_at, pulls) for every simulated agent."""
    agents: list[tuple[int, str, str, str, float, float, bool]] = []
    n = params.agents
    for i in range(n):
        region = i % params.regions
        zone = (i // params.regions) % params.zones
        agents.append((i, f"r{region:02d}", f"r{region:02d}-z{zone}", "peer", 0.0, -1.0, True))
    if scenario == "churn":
        dying = rng.sample(range(n), max(1, n // 20))
        for i in dying:
            a = agents[i]
            agents[i] = (*a[:5], rng.uniform(0.1, params.churn_window), a[6])
        for j in range(max(1, n // 20)):
            i = n + j
            region = i % params.regions
            zone = (i // params.regions) % params.zones
            join = rng.uniform(0.1, params.churn_window)
            agents.append((i, f"r{region:02d}", f"r{region:02d}-z{zone}", "peer", join, -1.0, True))
    if scenario == "preheated":
        for r in range(params.regions):
            i = n + n // 20 + 1 + r
            agents.append((i, f"r{r:02d}", f"r{r:02d}-z0", "seed", 0.0, -1.0, False))
    return agents


def run_scenario(params: Params, scenario: str, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(params.seed)  # a simulation, not a secret
    token = secrets.token_hex(24)
    token_file = workdir / "token"
    token_file.write_text(token)
    with RedisServer(workdir / "redis") as rs:
        trackers = [
            Tracker(
                rs.url + "/0",
                token_file,
                params.tracker_workers,
                workdir / f"tracker{i}.log",
                params.tracker_args,
            )
            for i in range(params.trackers)
        ]
        try:
            for t in trackers:
                t.wait_ready()
            return _drive(params, scenario, workdir, rng, token, rs, trackers)
        finally:
            for t in trackers:
                t.stop()


def _drive(
    params: Params,
    scenario: str,
    workdir: Path,
    rng: random.Random,
    token: str,
    rs: RedisServer,
    trackers: list[Tracker],
) -> dict[str, Any]:
    redis_url = rs.url
    agents = plan_agents(params, scenario, rng)
    size = params.layer_mib << 20
    layers = [(layer_digest(i), size) for i in range(params.layers)]
    # Every agent registers before the rollout, as a fleet that is already running would.
    warmup = params.warmup or max(3.0, len(agents) / 400)
    # Worker processes take a second or two to import on a busy machine.
    start_at = time.time() + warmup + 2.0 + 0.5 * params.procs
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    for w in range(params.procs):
        mine = [a for a in agents if int(a[1][1:]) % params.procs == w]
        out = workdir / f"worker{w}.json"
        spec = {
            "trackers": [t.url for t in trackers],
            "token": token,
            "agents": mine,
            "layers": layers,
            "start_at": start_at,
            "ramp": params.ramp,
            "peer_rate": params.peer_mbit * 1e6 / 8,
            "upstream_rate": params.upstream_mbit * 1e6 / 8,
            "peer_wait": params.peer_wait,
            "max_children": params.max_children,
            "parent_choice": params.parent_choice,
            "preheated": scenario == "preheated",
            "timeout": params.timeout,
            "connections": params.connections,
            "seed": params.seed * 1000 + w,
            "out": str(out),
            "settle_file": str(workdir / "fault_at") if scenario == "restart-redis" else None,
        }
        spec_file = workdir / f"worker{w}.spec.json"
        spec_file.write_text(json.dumps(spec))
        with (workdir / f"worker{w}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_sim_node", str(spec_file)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append((proc, out))
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = [t.cpu_seconds() for t in trackers]
    info0 = redis_info(redis_url)
    killed_at: float | None = None
    try:
        deadline = start_at + params.timeout + 60
        while any(p.poll() is None for p, _ in workers):
            now = time.time()
            if (
                scenario in ("kill-tracker", "restart-redis")
                and killed_at is None
                and now >= start_at + params.kill_at
            ):
                killed_at = _inject(scenario, trackers, rs, info0, workdir, now - start_at)
            if now > deadline:
                raise RuntimeError("simulation workers did not finish in time")
            time.sleep(0.2)
    finally:
        for p, _ in workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    cpu1 = [
        t.cpu_seconds() if t.proc.poll() is None else c for t, c in zip(trackers, cpu0, strict=True)
    ]
    info1 = redis_info(redis_url)
    parts = []
    for p, out in workers:
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(f"simulation worker failed ({p.returncode}); see {out.parent}")
        parts.append(json.loads(out.read_text()))
    return summarise(params, scenario, parts, trackers, cpu0, cpu1, info0, info1, killed_at)


def _inject(
    scenario: str,
    trackers: list[Tracker],
    rs: RedisServer,
    info0: dict[str, Any],
    workdir: Path,
    at: float,
) -> float:
    """Kill the first replica, or restart Redis empty; returns ``at``."""
    if scenario == "kill-tracker":
        trackers[0].kill()
        return at
    # Its CPU counters restart with it: what it used until now counts too.
    last = redis_info(rs.url)
    for k in ("used_cpu_sys", "used_cpu_user"):
        info0[k] = float(info0[k]) - float(last[k])
    rs.crash_and_restart()
    # The workers keep their agents beating until each registered anew.
    tmp = workdir / "fault_at.tmp"
    tmp.write_text(repr(at))
    tmp.replace(workdir / "fault_at")
    return at


def summarise(
    params: Params,
    scenario: str,
    parts: list[dict[str, Any]],
    trackers: list[Tracker],
    cpu0: list[float],
    cpu1: list[float],
    info0: dict[str, Any],
    info1: dict[str, Any],
    killed_at: float | None,
) -> dict[str, Any]:
    nodes = [n for part in parts for n in part["records"]]
    alive = [n for n in nodes if not n["dead"]]
    failed = [
        n["agent"]
        for n in alive
        if len(n["layers"]) < params.layers or any(r["done"] is None for r in n["layers"])
    ]
    complete = [n for n in alive if n["agent"] not in failed]
    handout = [max(r["handout"] for r in n["layers"]) for n in complete]
    handout_own = [max(r["handout"] - r["pull_start"] for r in n["layers"]) for n in complete]
    done = [max(r["done"] for r in n["layers"]) for n in complete]
    kinds: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    upstream_by: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lookups: list[int] = []
    for n in nodes:
        for r in n["layers"]:
            kinds[r["handout_kind"] or "none"] += 1
            if r["source"]:
                sources[r["source"]] += 1
            if r["source"] == "upstream":
                upstream_by[f"{n['region']} {r['layer']}"] += 1
            if r["error"]:
                errors[r["error"].split(":")[0]] += 1
            lookups.append(r["lookups"])
    leases: Counter[str] = Counter()
    latency: dict[str, list[float]] = {}
    by_tracker: Counter[str] = Counter()
    rollout: Counter[str] = Counter()
    heartbeat: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    client_errors: Counter[str] = Counter()
    timeline: Counter[int] = Counter()
    for part in parts:
        leases.update(part["leases"])
        for k, v in part["latency"].items():
            latency.setdefault(k, []).extend(v)
        by_tracker.update(part["by_tracker"])
        rollout.update(part["rollout_requests"])
        heartbeat.update(part["heartbeat_requests"])
        statuses.update(part["statuses"])
        client_errors.update(part["errors"])
        timeline.update({int(k): v for k, v in part["timeline"].items()})
    pulling = sum(1 for n in nodes)
    region_layers = params.regions * params.layers
    lease_counts = [
        leases.get(f"r{r:02d} {i}", 0) for r in range(params.regions) for i in range(params.layers)
    ]
    upstream_counts = [
        upstream_by.get(f"r{r:02d} {i}", 0)
        for r in range(params.regions)
        for i in range(params.layers)
    ]
    span = max(done) if done else max(1.0, max(timeline, default=1))
    total_requests = sum(by_tracker.values())
    tracker_cpu = sum(c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True))
    redis_cpu_s = redis_cpu(info1) - redis_cpu(info0)
    during = [v for k, v in timeline.items() if 0 <= k <= span]

    return {
        "scenario": scenario,
        "params": params.__dict__ | {"scenarios": list(params.scenarios)},
        "nodes": pulling,
        "nodes_alive": len(alive),
        "nodes_died": pulling - len(alive),
        "nodes_failed": len(failed),
        "failed_sample": failed[:10],
        "handout_s": {
            "p50": r3(pct(handout, 50)),
            "p99": r3(pct(handout, 99)),
            "max": r3(max(handout, default=None)),
        },
        "handout_since_own_start_s": {
            "p50": r3(pct(handout_own, 50)),
            "p99": r3(pct(handout_own, 99)),
        },
        "complete_s": {
            "p50": r3(pct(done, 50)),
            "p99": r3(pct(done, 99)),
            "max": r3(max(done, default=None)),
        },
        "handout_kinds": dict(kinds),
        "sources": dict(sources),
        "layer_errors": dict(errors),
        "lookups_per_layer": {
            "mean": r3(statistics.fmean(lookups)) if lookups else None,
            "max": max(lookups, default=0),
        },
        "rollout_requests": dict(rollout),
        "heartbeat_requests": dict(heartbeat),
        "requests_per_node_per_layer": r3(sum(rollout.values()) / max(1, pulling * params.layers)),
        "requests_total": total_requests,
        "requests_per_s": {t: round(c / span, 1) for t, c in sorted(by_tracker.items())},
        "requests_per_s_peak": max(during, default=0),
        "latency_ms": {
            k: {
                "n": len(v),
                "p50": r3(1000 * (pct(v, 50) or 0)),
                "p99": r3(1000 * (pct(v, 99) or 0)),
            }
            for k, v in sorted(latency.items())
        },
        "statuses": dict(statuses),
        "client_errors": dict(client_errors),
        "leases_per_region_layer": {
            "exactly_one": sum(1 for c in lease_counts if c == 1),
            "zero": sum(1 for c in lease_counts if c == 0),
            "more": sum(1 for c in lease_counts if c > 1),
            "max": max(lease_counts, default=0),
            "of": region_layers,
        },
        "upstream_per_region_layer": {
            "mean": r3(statistics.fmean(upstream_counts)) if upstream_counts else None,
            "max": max(upstream_counts, default=0),
        },
        "takeovers": sum(p["takeovers"] for p in parts),
        "tracker_cpu_s": round(tracker_cpu, 2),
        "redis_cpu_s": round(redis_cpu_s, 2),
        "sim_cpu_s": round(sum(p["cpu_seconds"] for p in parts), 2),
        "tracker_cpu_us_per_request": round(1e6 * tracker_cpu / max(1, total_requests), 1),
        "redis_cpu_us_per_request": round(1e6 * redis_cpu_s / max(1, total_requests), 1),
        "redis_used_memory_mib": round(int(info1["used_memory"]) / (1 << 20), 2),
        "redis_keys": int(info1["dbsize"]),
        "killed_at_s": killed_at,
        "after_kill": _after_kill(alive, killed_at, scenario) if killed_at is not None else None,
        "heartbeats_per_node_per_min": r3(
            60 * sum(heartbeat.values()) / max(1, len(nodes)) / max(span, 1.0)
        ),
        "unfinished_tasks": sum(p["unfinished"] for p in parts),
        "crashed": [c for p in parts for c in p["crashed"]],
    }


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": r3(pct(values, 50)),
        "p99": r3(pct(values, 99)),
        "max": r3(max(values, default=None)),
    }


def _after_kill(alive: list[dict[str, Any]], killed_at: float, scenario: str) -> dict[str, Any]:
    """When each node first saw a failed tracker request after the kill, how long until one
    was answered again, and (Redis restarted empty) how long until it was registered anew."""
    noticed: list[float] = []
    recovered: list[float] = []
    never_recovered = 0
    reregistered: list[float] = []
    not_reregistered = 0
    for n in alive:
        after = [o for o in n.get("outages", []) if o[0] >= killed_at]
        if after:
            noticed.append(after[0][0] - killed_at)
            if after[0][1] is None:
                never_recovered += 1
            else:
                recovered.append(after[0][1] - after[0][0])
        again = [t for t in n.get("registered_at", []) if t >= killed_at]
        if again:
            reregistered.append(again[0] - killed_at)
        else:
            not_reregistered += 1
    redis = scenario == "restart-redis"
    return {
        "first_failed_request_s": spread(noticed),
        "failed_until_answered_s": spread(recovered),
        "never_answered_again": never_recovered,
        "registered_again_s": spread(reregistered) if redis else None,
        "not_registered_again": not_reregistered if redis else None,
    }


async def _memory_fill(urls: list[str], token: str, agents: int, per_agent: int, pool: int) -> None:
    rng = random.Random(7)  # a simulation, not a secret
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:

        async def one(i: int) -> None:
            async with sem:
                client = HttpTrackerClient(
                    urls, token, f"mem-{i:05d}", secrets.token_hex(16), session, timeout=30
                )
                info = AgentInfo(f"mem-{i:05d}", "127.0.0.1", 1, f"z{i % 60}", f"r{i % 20}")
                await client.heartbeat(info)
                digests = rng.sample(range(pool), per_agent)
                await client.announce_many(
                    [Announcement(layer_digest(d), "holding", 1 << 20, 1 << 20) for d in digests]
                )

        await asyncio.gather(*(one(i) for i in range(agents)))


def redis_memory(params: Params, workdir: Path) -> dict[str, Any]:
    """Redis memory for ``redis_memory_agents`` agents x 50 held digests (of 2,000)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(24)
    token_file = workdir / "token"
    token_file.write_text(token)
    with RedisServer(workdir / "redis") as rs:
        trackers = [
            # Agents must outlive the fill: at the default 30 s the first ones expire (and
            # are pruned) before the last register, and the figure would be per live agent
            # of a fraction of the fleet.
            Tracker(
                rs.url + "/0",
                token_file,
                1,
                workdir / f"tracker{i}.log",
                ("--agent-ttl", "30m"),
            )
            for i in range(params.trackers)
        ]
        try:
            for t in trackers:
                t.wait_ready()
            before = redis_info(rs.url)
            t0 = time.monotonic()
            asyncio.run(
                _memory_fill([t.url for t in trackers], token, params.redis_memory_agents, 50, 2000)
            )
            seconds = time.monotonic() - t0
            after = redis_info(rs.url)
            client = redis.Redis.from_url(rs.url)
            try:
                no_ttl: Counter[str] = Counter()
                kinds: Counter[str] = Counter()
                for key in client.scan_iter(count=1000):
                    k = key.decode()
                    shape = k.split(":", 1)[0] + ":" + (k.split(":")[1] if ":" in k else "")
                    kinds[shape[:40]] += 1
                    if client.ttl(key) == -1:
                        no_ttl[shape[:40]] += 1
            finally:
                client.close()
        finally:
            for t in trackers:
                t.stop()
    used = int(after["used_memory"]) - int(before["used_memory"])
    holdings = params.redis_memory_agents * 50
    return {
        "agents": params.redis_memory_agents,
        "digests_per_agent": 50,
        "digest_pool": 2000,
        "fill_seconds": round(seconds, 1),
        "used_memory_mib": round(int(after["used_memory"]) / (1 << 20), 2),
        "used_memory_delta_mib": round(used / (1 << 20), 2),
        "bytes_per_agent": round(used / max(1, params.redis_memory_agents)),
        "bytes_per_holding": round(used / max(1, holdings), 1),
        "keys": int(after["dbsize"]),
        "agents_stored": kinds.get("layerswarm:agent", 0),
        "key_kinds": dict(kinds.most_common(20)),
        "keys_without_ttl": dict(no_ttl),
    }


def render(doc: dict[str, Any]) -> str:
    lines = ["# fleet_sim results", ""]
    for s in doc["scenarios"]:
        lines.append(f"## {s['scenario']}")
        lines.append("")
        lines.append("```json")
        lines.append(json.dumps({k: v for k, v in s.items() if k != "params"}, indent=1))
        lines.append("```")
        lines.append("")
    if doc.get("redis_memory"):
        lines += [
            "## redis memory",
            "",
            "```json",
            json.dumps(doc["redis_memory"], indent=1),
            "```",
        ]
    return "\n".join(lines) + "\n"


def run(params: Params, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "params": params.__dict__ | {"scenarios": list(params.scenarios)},
        "scenarios": [],
    }
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        for scenario in params.scenarios:
            doc["scenarios"].append(run_scenario(params, scenario, Path(tmp) / scenario))
            (out / "results.json").write_text(json.dumps(doc, indent=1))
        if params.redis_memory_agents:
            doc["redis_memory"] = redis_memory(params, Path(tmp) / "memory")
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(render(doc))
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Params()
    ap.add_argument("--agents", type=int, default=d.agents)
    ap.add_argument("--regions", type=int, default=d.regions)
    ap.add_argument("--zones", type=int, default=d.zones, help="zones per region")
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--layer-mib", type=int, default=d.layer_mib)
    ap.add_argument(
        "--peer-mbit",
        type=float,
        default=d.peer_mbit,
        help="rate a follower receives from its parent",
    )
    ap.add_argument(
        "--upstream-mbit", type=float, default=d.upstream_mbit, help="rate of one upstream fetch"
    )
    ap.add_argument("--trackers", type=int, default=d.trackers, help="tracker replicas")
    ap.add_argument(
        "--tracker-workers", type=int, default=d.tracker_workers, help="--workers of each replica"
    )
    ap.add_argument("--procs", type=int, default=d.procs, help="simulator worker processes")
    ap.add_argument("--scenarios", default=",".join(d.scenarios))
    ap.add_argument(
        "--ramp",
        type=float,
        default=d.ramp,
        help="nodes start pulling spread over this many seconds",
    )
    ap.add_argument("--churn-window", type=float, default=d.churn_window)
    ap.add_argument("--kill-at", type=float, default=d.kill_at)
    ap.add_argument("--peer-wait", type=float, default=d.peer_wait)
    ap.add_argument("--max-children", type=int, default=d.max_children)
    ap.add_argument("--parent-choice", choices=("tracker", "walk"), default=d.parent_choice)
    ap.add_argument(
        "--connections",
        type=int,
        default=d.connections,
        help="tracker connections per simulator process",
    )
    ap.add_argument("--timeout", type=float, default=d.timeout)
    ap.add_argument("--warmup", type=float, default=d.warmup)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--redis-memory-agents", type=int, default=d.redis_memory_agents)
    ap.add_argument(
        "--tracker-args",
        default="",
        help='more flags for every tracker replica, e.g. "--heartbeat-rate 10"',
    )
    ap.add_argument("--out", type=Path, default=Path("fleet-sim-out"))
    a = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every redis-server, tracker and worker started here is
    # stopped by the finally blocks that own them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenarios = tuple(s for s in a.scenarios.split(",") if s)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    params = Params(
        agents=a.agents,
        regions=a.regions,
        zones=a.zones,
        layers=a.layers,
        layer_mib=a.layer_mib,
        peer_mbit=a.peer_mbit,
        upstream_mbit=a.upstream_mbit,
        trackers=a.trackers,
        tracker_workers=a.tracker_workers,
        procs=a.procs,
        scenarios=scenarios,
        ramp=a.ramp,
        churn_window=a.churn_window,
        kill_at=a.kill_at,
        peer_wait=a.peer_wait,
        max_children=a.max_children,
        parent_choice=a.parent_choice,
        connections=a.connections,
        timeout=a.timeout,
        warmup=a.warmup,
        seed=a.seed,
        redis_memory_agents=a.redis_memory_agents,
        tracker_args=tuple(a.tracker_args.split()),
    )
    doc = run(params, a.out)
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
