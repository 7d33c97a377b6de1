"""Many clients at once on one agent: a mix of cached and uncached blobs, every body verified.

Run:  .venv/bin/python -m bench.load [--clients 200] [--rounds 5] [--json OUT]

A real registry and a real agent (the CLI, --no-p2p) on loopback. Half of the blobs are pulled
through the agent first (cached); the other half are new, and each is asked for by several
clients in the same instant, so the followers of one download are exercised too. Reports
time to first byte (p50/p99/max, cached and uncached apart), the agent's RSS and open file
descriptors (before, peak sampled every 100 ms, after), and every error. Loopback only; every
client's loop is bounded by ``rounds``, and each request by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench.workload import PullError, Sampler, get_verified, percentile, push_blob, sample

REPO = "load/blobs"


@dataclass(frozen=True)
class LoadParams:
    clients: int = 200
    rounds: int = 5
    cached_blobs: int = 20
    uncached_blobs: int = 20
    min_size: int = 64 << 10
    max_size: int = 1 << 20
    seed: int = 1
    request_timeout: float = 120.0


@dataclass
class LoadResult:
    params: LoadParams
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0
    ttfb_p50_ms: float = 0.0
    ttfb_p99_ms: float = 0.0
    ttfb_max_ms: float = 0.0
    ttfb_cached_p99_ms: float = 0.0
    ttfb_uncached_p99_ms: float = 0.0
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    fds_before: int = 0
    fds_peak: int = 0
    fds_after: int = 0


async def prepare(
    session: aiohttp.ClientSession, registry_url: str, agent_url: str, params: LoadParams
) -> tuple[list[str], list[str]]:
    """Push the blobs; pull the cached half through the agent. Returns (cached, uncached)."""
    rng = random.Random(params.seed)
    digests = []
    for _ in range(params.cached_blobs + params.uncached_blobs):
        size = rng.randint(params.min_size, params.max_size)
        digests.append(await push_blob(session, registry_url, REPO, rng.randbytes(size)))
    cached, uncached = digests[: params.cached_blobs], digests[params.cached_blobs :]
    for d in cached:
        await get_verified(session, f"{agent_url}/v2/{REPO}/blobs/{d}", d)
    return cached, uncached


async def run_load(
    agent_url: str, agent_pid: int, registry_url: str, params: LoadParams
) -> LoadResult:
    result = LoadResult(params)
    timeout = aiohttp.ClientTimeout(total=params.request_timeout)
    # One connection per client, as 200 separate runtimes would open.
    connector = aiohttp.TCPConnector(limit=params.clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cached, uncached = await prepare(session, registry_url, agent_url, params)
        before = sample(agent_pid)
        result.rss_before, result.fds_before = before.rss, before.fds
        rng = random.Random(params.seed + 1)
        everything = cached + uncached
        plans = []
        for i in range(params.clients):
            # Every client's first request is an uncached blob, so each of those is wanted by
            # several clients at the same moment; later rounds mix at random.
            plan = [uncached[i % len(uncached)]] if uncached else []
            plan += [rng.choice(everything) for _ in range(params.rounds - len(plan))]
            plans.append(plan)
        cached_set = set(cached)
        ttfb: list[float] = []
        ttfb_cached: list[float] = []
        ttfb_uncached: list[float] = []

        async def client(plan: list[str]) -> None:
            for d in plan:
                try:
                    body, first = await get_verified(session, f"{agent_url}/v2/{REPO}/blobs/{d}", d)
                except PullError as exc:
                    result.errors.append(str(exc))
                    continue
                result.bytes += len(body)
                ttfb.append(first)
                (ttfb_cached if d in cached_set else ttfb_uncached).append(first)

        t0 = time.perf_counter()
        async with Sampler(agent_pid) as sampler:
            await asyncio.gather(*(client(p) for p in plans))
        result.seconds = time.perf_counter() - t0
        result.requests = sum(len(p) for p in plans)
        # Connections closed, so the fds held for them must be gone too.
        await connector.close()
        await asyncio.sleep(0.5)
        after = sample(agent_pid)
        result.rss_after, result.fds_after = after.rss, after.fds
        result.rss_peak, result.fds_peak = sampler.max_rss, sampler.max_fds
        ms = 1000.0
        result.ttfb_p50_ms = percentile(ttfb, 50) * ms
        result.ttfb_p99_ms = percentile(ttfb, 99) * ms
        result.ttfb_max_ms = max(ttfb, default=0.0) * ms
        result.ttfb_cached_p99_ms = percentile(ttfb_cached, 99) * ms
        result.ttfb_uncached_p99_ms = percentile(ttfb_uncached, 99) * ms
    return result


def report(result: LoadResult) -> str:
    mib = 1 << 20
    return (
        f"{result.requests} requests from {result.params.clients} clients in "
        f"{result.seconds:.1f}s, {len(result.errors)} errors, {result.bytes / mib:.0f} MiB\n"
        f"TTFB p50 {result.ttfb_p50_ms:.1f} ms, p99 {result.ttfb_p99_ms:.1f} ms "
        f"(cached {result.ttfb_cached_p99_ms:.1f}, uncached {result.ttfb_uncached_p99_ms:.1f}), "
        f"max {result.ttfb_max_ms:.1f} ms\n"
        f"agent RSS {result.rss_before / mib:.0f} -> peak {result.rss_peak / mib:.0f} -> "
        f"{result.rss_after / mib:.0f} MiB; fds {result.fds_before} -> peak "
        f"{result.fds_peak} -> {result.fds_after}"
    )


def main(argv: list[str] | None = None) -> int:
    from testbed.agent import AgentProc
    from testbed.registry import Registry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    params = LoadParams(clients=args.clients, rounds=args.rounds)
    with tempfile.TemporaryDirectory(prefix="layerswarm-load-") as tmp:
        reg = Registry(Path(tmp) / "registry").start()
        agent = AgentProc(
            Path(tmp) / "agent",
            {reg.host_port: reg.url},
            default_upstream=reg.host_port,
            extra=["--no-p2p"],
        )
        try:
            agent.start()
            assert agent.proc is not None
            result = asyncio.run(run_load(agent.url, agent.proc.pid, reg.url, params))
        finally:
            agent.stop()
            reg.stop()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
