"""Load a real tracker process with a simulated fleet and report lookups/s, latency, CPU, RSS.

    .venv/bin/python -m bench.tracker_load [--agents 10000] [--seconds 15] [--out FILE]

A simulated fleet of ``--agents`` agents registers (heartbeat), announces 50 digests each (one
batch announce per agent), then random agents look up random digests. The tracker runs as a
subprocess on loopback, with the memory store, then with a real redis-server, then as two
replicas on that Redis with lookups spread over both.

Lookups come from ``wrk`` (``--client wrk``, the default): a C load generator driven by a
generated Lua script that cycles through pre-formatted POST /v1/agents/{id}/lookup requests,
so the client costs a small fraction of the tracker's CPU and the figures describe the tracker.
``--client python`` keeps the older aiohttp client (about one core of its own) for comparison.
Set-up (heartbeats, announces) always uses aiohttp. Every phase is bounded in time or count.
``--profile DIR`` also records each tracker with py-spy during the lookups (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from testbed.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_hex(24)
DIGESTS_PER_AGENT = 50
DIGEST_POOL = 2000
REGIONS = 4
ZONES_PER_REGION = 4
CONCURRENCY = 64
# Distinct (agent, digest) requests the wrk script cycles through.
WRK_REQUESTS = 20_000


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def start_tracker(store: str, token_file: Path, root: Path = ROOT) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "--log-level",
            "WARNING",
            "tracker",
            "--listen",
            f"127.0.0.1:{port}",
            "--store",
            store,
            "--token-file",
            str(token_file),
            "--agent-ttl",
            "10m",
            "--lease-ttl",
            "10m",
        ],
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return Server(proc, url)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("tracker did not start")


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


async def run_requests(
    session: aiohttp.ClientSession, jobs: list[tuple[str, str, dict[str, Any], str]]
) -> list[float]:
    """POST each (url, path, body, key) with bounded concurrency; returns latencies (s)."""
    latencies: list[float] = []
    it = iter(jobs)

    async def worker() -> None:
        for url, path, body, key in it:
            headers = {"Authorization": f"Bearer {TOKEN}", "X-Layerswarm-Agent-Key": key}
            t0 = time.perf_counter()
            async with session.post(url + path, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}")
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def setup_fleet(
    session: aiohttp.ClientSession, url: str, agents: int, rng: random.Random
) -> dict[str, str]:
    keys = {f"agent-{i:05d}": secrets.token_hex(16) for i in range(agents)}
    beats = []
    announces = []
    for i, (aid, key) in enumerate(keys.items()):
        region = i % REGIONS
        info = {
            "address": f"10.{region}.{i // 250 % 250}.{i % 250}",
            "peer_port": 6881,
            "region": f"r{region}",
            "zone": f"r{region}z{i // REGIONS % ZONES_PER_REGION}",
            "role": "seed" if i % 20 == 0 else "peer",
            "load": rng.random() * 3,
        }
        beats.append((url, f"/v1/agents/{aid}/heartbeat", info, key))
        held = rng.sample(range(DIGEST_POOL), DIGESTS_PER_AGENT)
        body = {
            "holdings": [
                {"digest": digest(d), "state": "holding", "progress_bytes": 1, "total_bytes": 1}
                for d in held
            ]
        }
        announces.append((url, f"/v1/agents/{aid}/announce", body, key))
    await run_requests(session, beats)
    await run_requests(session, announces)
    return keys


def lookup_jobs(
    servers: list[Server], keys: dict[str, str], lookups: int, rng: random.Random
) -> list[tuple[str, str, dict[str, Any], str]]:
    ids = list(keys)
    jobs = []
    for n in range(lookups):
        aid = rng.choice(ids)
        jobs.append(
            (
                servers[n % len(servers)].url,
                f"/v1/agents/{aid}/lookup",
                {"digest": digest(rng.randrange(DIGEST_POOL))},
                keys[aid],
            )
        )
    return jobs


def _lua_str(s: str) -> str:
    # Agent ids, keys, digests and the token are all [A-Za-z0-9:._-]: no escaping needed.
    assert all(c.isalnum() or c in ":._-/ " for c in s), s
    return '"' + s + '"'


def wrk_script(jobs: list[tuple[str, str, dict[str, Any], str]]) -> str:
    """Lua for wrk: pre-formats every request once, then cycles through them.

    ``done`` prints one JSON line (wrk's own latency histogram is exact to the microsecond).
    """
    rows = ",\n".join(
        "{" + ",".join(_lua_str(x) for x in (path, key, body["digest"])) + "}"
        for _, path, body, key in jobs
    )
    return f"""
local token = {_lua_str("Bearer " + TOKEN)}
local items = {{
{rows}
}}
local reqs = {{}}
for i, it in ipairs(items) do
  reqs[i] = wrk.format("POST", it[1], {{
    ["Host"] = wrk.host .. ":" .. wrk.port,
    ["Authorization"] = token,
    ["X-Layerswarm-Agent-Key"] = it[2],
    ["Content-Type"] = "application/json",
  }}, '{{"digest":"' .. it[3] .. '"}}')
end
local n = 0
function setup(thread)
  thread:set("offset", math.random(#reqs))
end
function init(args)
  n = offset or 0
end
function request()
  n = n % #reqs + 1
  return reqs[n]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"us":%d,"p50":%d,"p99":%d,"errors":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def redis_cpu(url: str | None) -> float:
    if url is None:
        return 0.0
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def start_profiles(servers: list[Server], seconds: float, out: Path | None) -> list[Any]:
    if out is None:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, s in enumerate(servers):
        dest = out / f"tracker-{s.proc.pid}-{i}.txt"
        procs.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(s.proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(dest),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


async def measure(
    session: aiohttp.ClientSession,
    servers: list[Server],
    keys: dict[str, str],
    args: argparse.Namespace,
    rng: random.Random,
    redis_url: str | None,
    name: str,
) -> dict[str, Any]:
    cpu0 = [s.cpu_seconds() for s in servers]
    rcpu0 = redis_cpu(redis_url)
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    prof = args.profile / name.replace(" ", "").replace(",", "-") if args.profile else None
    if args.client == "wrk":
        jobs = lookup_jobs(servers[:1], keys, WRK_REQUESTS, rng)
        script = Path(tempfile.mkdtemp(prefix="ls-wrk-")) / "lookup.lua"
        script.write_text(wrk_script(jobs))
        spies = start_profiles(servers, args.seconds, prof)
        t0 = time.perf_counter()
        # One wrk per replica, the connections split between them; one thread each keeps
        # the client's share of the 2 cores small.
        wrks = [
            await asyncio.create_subprocess_exec(
                "wrk",
                "-t1",
                f"-c{CONCURRENCY // len(servers)}",
                f"-d{round(args.seconds)}s",
                "--timeout",
                "5s",
                "-s",
                str(script),
                s.url,
                stdout=asyncio.subprocess.PIPE,
            )
            for s in servers
        ]
        outs = [(await w.communicate())[0].decode() for w in wrks]
        wall = time.perf_counter() - t0
        for sp in spies:
            sp.wait(timeout=30)
        shutil.rmtree(script.parent)
        stats = [
            json.loads(line.split(" ", 1)[1])
            for out in outs
            for line in out.splitlines()
            if line.startswith("WRKJSON ")
        ]
        if len(stats) != len(servers):
            raise RuntimeError(f"wrk gave no result: {outs}")
        errors = sum(x["errors"] for x in stats)
        if errors:
            raise RuntimeError(f"{errors} lookups failed")
        lookups = sum(x["requests"] for x in stats)
        rate = sum(x["requests"] / (x["us"] / 1e6) for x in stats)
        # wrk reports percentiles per process; the slower replica's bound the whole.
        p50 = max(x["p50"] for x in stats) / 1000
        p99 = max(x["p99"] for x in stats) / 1000
    else:
        lookups = args.lookups if redis_url is None else args.redis_lookups
        jobs = lookup_jobs(servers, keys, lookups, rng)
        spies = start_profiles(servers, 10, prof)
        t0 = time.perf_counter()
        lat = await run_requests(session, jobs)
        wall = time.perf_counter() - t0
        for sp in spies:
            sp.wait(timeout=30)
        rate = lookups / wall
        p50 = 1000 * pct(lat, 50)
        p99 = 1000 * pct(lat, 99)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True))
    # Children reaped during the phase: the wrk processes (py-spy too when profiling).
    client_cpu = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    if args.client == "python":
        own = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = own.ru_utime + own.ru_stime  # whole run: an upper bound, labelled so
    rcpu = redis_cpu(redis_url) - rcpu0
    return {
        "lookups": lookups,
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "cpu_s": cpu,
        "cpu_per_lookup_us": 1e6 * cpu / lookups,
        "client_us": 1e6 * client_cpu / lookups if args.client == "wrk" and not prof else None,
        "redis_us": 1e6 * rcpu / lookups if redis_url else None,
        "rss_mib": max(s.rss_mib() for s in servers),
        "wall_s": wall,
    }


async def main_async(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(1)
    results: list[tuple[str, dict[str, Any]]] = []
    root = args.tracker_root
    with tempfile.TemporaryDirectory(prefix="ls-bench-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            if "memory" in args.setups:
                server = start_tracker("memory", token_file, root)
                try:
                    t0 = time.perf_counter()
                    keys = await setup_fleet(session, server.url, args.agents, rng)
                    print(f"memory: set up in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                    name = "memory, 1 process"
                    results.append(
                        (name, await measure(session, [server], keys, args, rng, None, name))
                    )
                finally:
                    server.stop()
            if "redis" not in args.setups:
                return results
            with RedisServer(Path(tmp) / "redis") as redis_server:
                store = redis_server.url + "/0"
                first = start_tracker(store, token_file, root)
                servers = [first]
                try:
                    t0 = time.perf_counter()
                    keys = await setup_fleet(session, first.url, args.agents, rng)
                    print(f"redis: set up in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                    name = "redis, 1 process"
                    results.append(
                        (name, await measure(session, servers, keys, args, rng, store, name))
                    )
                    servers.append(start_tracker(store, token_file, root))
                    name = "redis, 2 replicas"
                    results.append(
                        (name, await measure(session, servers, keys, args, rng, store, name))
                    )
                finally:
                    for s in servers:
                        s.stop()
    return results


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} us"


def render(
    results: list[tuple[str, dict[str, Any]]], args: argparse.Namespace, seconds: float
) -> str:
    client = (
        f"wrk (1 thread per replica, {args.seconds:.0f} s per setup)"
        if args.client == "wrk"
        else "one aiohttp client process"
    )
    lines = [
        "## Tracker load",
        "",
        "Command: `.venv/bin/python -m bench.tracker_load "
        f"--agents {args.agents} --client {args.client} --seconds {args.seconds:g}`",
        "",
        f"{args.agents} simulated agents in {REGIONS} regions x {ZONES_PER_REGION} zones "
        f"(5% seeds), {DIGESTS_PER_AGENT} digests each from a pool of {DIGEST_POOL} (about "
        f"{args.agents * DIGESTS_PER_AGENT // DIGEST_POOL} holders per digest), then lookups "
        f"of random digests by random agents, {CONCURRENCY} in flight, from {client}. "
        f"Machine: {os.cpu_count()} cores shared by client, tracker(s) and Redis. "
        f"Total run {seconds:.0f}s.",
        "",
        "| setup | lookups | lookups/s | p50 ms | p99 ms | tracker CPU/lookup "
        "| Redis CPU/lookup | client CPU/lookup | tracker RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results:
        lines.append(
            f"| {name} | {r['lookups']} | {r['rate']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {_us(r['cpu_per_lookup_us'])} | {_us(r['redis_us'])} | "
            f"{_us(r['client_us'])} | {r['rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--seconds", type=float, default=15.0, help="wrk run per setup")
    parser.add_argument(
        "--lookups", type=int, default=40_000, help="lookups against memory (python client)"
    )
    parser.add_argument(
        "--redis-lookups", type=int, default=10_000, help="lookups per Redis setup (python client)"
    )
    parser.add_argument(
        "--setups", nargs="+", choices=("memory", "redis"), default=["memory", "redis"]
    )
    parser.add_argument(
        "--tracker-root",
        type=Path,
        default=ROOT,
        help="checkout whose tracker to run (to measure an older version with this client)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (scripts/bootstrap.sh installs it)")
    t0 = time.perf_counter()
    results = asyncio.run(main_async(args))
    text = render(results, args, time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
