"""Load a real tracker process with a simulated fleet and report lookups/s, latency, CPU, RSS.

    .venv/bin/python -m bench.tracker_load [--agents 10000] [--lookups 40000] [--out FILE]

A simulated fleet of ``--agents`` agents registers (heartbeat), announces 50 digests each (one
batch announce per agent), then random agents look up random digests. The tracker runs as a
subprocess on loopback, with the memory store, then with a real redis-server, then as two
replicas on that Redis with lookups spread over both. Client and server share the machine's
cores, so the client's own CPU use caps what one can measure here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
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

from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_hex(24)
DIGESTS_PER_AGENT = 50
DIGEST_POOL = 2000
REGIONS = 4
ZONES_PER_REGION = 4
CONCURRENCY = 64


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


def start_tracker(store: str, token_file: Path) -> Server:
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
        cwd=ROOT,
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


async def measure(
    session: aiohttp.ClientSession,
    servers: list[Server],
    keys: dict[str, str],
    lookups: int,
    rng: random.Random,
) -> dict[str, Any]:
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
    cpu0 = [s.cpu_seconds() for s in servers]
    t0 = time.perf_counter()
    lat = await run_requests(session, jobs)
    wall = time.perf_counter() - t0
    cpu = sum(s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True))
    return {
        "lookups": lookups,
        "rate": lookups / wall,
        "p50_ms": 1000 * pct(lat, 50),
        "p99_ms": 1000 * pct(lat, 99),
        "cpu_s": cpu,
        "cpu_per_lookup_us": 1e6 * cpu / lookups,
        "rss_mib": max(s.rss_mib() for s in servers),
        "wall_s": wall,
    }


async def main_async(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(1)
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="ls-bench-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            server = start_tracker("memory", token_file)
            try:
                t0 = time.perf_counter()
                keys = await setup_fleet(session, server.url, args.agents, rng)
                print(f"memory: fleet set up in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                results.append(
                    ("memory, 1 process", await measure(session, [server], keys, args.lookups, rng))
                )
            finally:
                server.stop()
            with RedisServer(Path(tmp) / "redis") as redis_server:
                store = redis_server.url + "/0"
                first = start_tracker(store, token_file)
                servers = [first]
                try:
                    t0 = time.perf_counter()
                    keys = await setup_fleet(session, first.url, args.agents, rng)
                    print(
                        f"redis: fleet set up in {time.perf_counter() - t0:.1f}s", file=sys.stderr
                    )
                    results.append(
                        (
                            "redis, 1 process",
                            await measure(session, servers, keys, args.redis_lookups, rng),
                        )
                    )
                    servers.append(start_tracker(store, token_file))
                    results.append(
                        (
                            "redis, 2 replicas",
                            await measure(session, servers, keys, args.redis_lookups, rng),
                        )
                    )
                finally:
                    for s in servers:
                        s.stop()
    return results


def render(
    results: list[tuple[str, dict[str, Any]]], args: argparse.Namespace, seconds: float
) -> str:
    lines = [
        "## Tracker load",
        "",
        "Command: `.venv/bin/python -m bench.tracker_load "
        f"--agents {args.agents} --lookups {args.lookups} --redis-lookups {args.redis_lookups}`",
        "",
        f"{args.agents} simulated agents in {REGIONS} regions x {ZONES_PER_REGION} zones "
        f"(5% seeds), {DIGESTS_PER_AGENT} digests each from a pool of {DIGEST_POOL} (about "
        f"{args.agents * DIGESTS_PER_AGENT // DIGEST_POOL} holders per digest), then "
        f"{args.lookups} (memory) or {args.redis_lookups} (Redis) lookups of random digests "
        f"by random agents, {CONCURRENCY} in flight, "
        "one aiohttp client "
        f"process. Machine: {os.cpu_count()} cores shared by client, tracker(s) and Redis. "
        f"Total run {seconds:.0f}s.",
        "",
        "| setup | lookups | lookups/s | p50 ms | p99 ms | tracker CPU per lookup | tracker RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results:
        lines.append(
            f"| {name} | {r['lookups']} | {r['rate']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | "
            f"{r['cpu_per_lookup_us']:.0f} us | {r['rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=40_000, help="lookups against memory")
    parser.add_argument(
        "--redis-lookups", type=int, default=10_000, help="lookups per Redis setup (slower)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = asyncio.run(main_async(args))
    text = render(results, args, time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
