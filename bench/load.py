"""Many clients at once on one agent: a mix of cached and uncached blobs, every body verified.

Run:  .venv/bin/python -m bench.load [--clients 200] [--rounds 5] [--p2p AGENTS] [--json OUT]

A real registry and a real agent (the CLI, --no-p2p) on loopback. Half of the blobs are pulled
through the agent first (cached); the other half are new, and each is asked for by several
clients in the same instant, so the followers of one download are exercised too. Reports
time to first byte (p50/p99/max, cached and uncached apart), the agent's RSS and open file
descriptors (before, peak sampled every 100 ms, after), and every error. Loopback only; every
client's loop is bounded by ``rounds``, and each request by a timeout.

With ``--p2p N``: a tracker, a seed agent and N agents the clients talk to (spread evenly),
peer-to-peer on (relay). The "cached" half is pulled through the seed only, so the others
stream it from the seed, and the seed is restarted at random (SIGKILL or SIGTERM) all along
while they do; the client agents' caches are smaller than the working set (eviction, peers
withdrawn and asked again). RSS and fds are those of the busiest client agent. After it: no
orphan files, every cached blob verifies, and served bytes by source (cache + peer +
upstream) on the client agents equal what the clients received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.workload import (
    PullError,
    Sampler,
    check_data_dir,
    get_verified,
    percentile,
    push_blob,
    sample,
    served_by_source,
    start_tracker,
)

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
    # Peer-to-peer mode: this many client agents besides the seed (0: one agent, --no-p2p).
    p2p_agents: int = 0
    # Client agents' --cache-size in that mode, under the working set (~22 MiB).
    p2p_cache_size: int = 8 << 20
    restart_every: tuple[float, float] = (0.5, 2.0)
    max_restarts: int = 200


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
    restarts: int = 0
    served_by_source: dict[str, float] = field(default_factory=dict)
    cached_blobs_verified: int = 0
    problems: list[str] = field(default_factory=list)


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


def make_plans(params: LoadParams, cached: list[str], uncached: list[str]) -> list[list[str]]:
    """Each client's requests, in order."""
    rng = random.Random(params.seed + 1)
    everything = cached + uncached
    plans = []
    for i in range(params.clients):
        # Every client's first request is an uncached blob, so each of those is wanted by
        # several clients at the same moment; later rounds mix at random.
        plan = [uncached[i % len(uncached)]] if uncached else []
        plan += [rng.choice(everything) for _ in range(params.rounds - len(plan))]
        plans.append(plan)
    return plans


async def run_load(
    agent_url: str,
    agent_pid: int,
    registry_url: str,
    params: LoadParams,
    *,
    more: Sequence[tuple[str, int]] = (),
    prepare_url: str | None = None,
    churn: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
) -> LoadResult:
    """Clients spread over the agent at ``agent_url`` and the ``more`` (url, pid) agents;
    the cached half goes through ``prepare_url`` (default: the first agent); ``churn(done)``
    runs while the clients do, and must return soon after ``done`` is set."""
    result = LoadResult(params)
    agents = [(agent_url, agent_pid), *more]
    timeout = aiohttp.ClientTimeout(total=params.request_timeout)
    # One connection per client, as 200 separate runtimes would open.
    connector = aiohttp.TCPConnector(limit=params.clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cached, uncached = await prepare(session, registry_url, prepare_url or agent_url, params)
        befores = [sample(pid) for _, pid in agents]
        result.rss_before, result.fds_before = (
            max(b.rss for b in befores),
            max(b.fds for b in befores),
        )
        plans = make_plans(params, cached, uncached)
        cached_set = set(cached)
        ttfb: list[float] = []
        ttfb_cached: list[float] = []
        ttfb_uncached: list[float] = []

        async def client(url: str, plan: list[str]) -> None:
            for d in plan:
                try:
                    body, first = await get_verified(session, f"{url}/v2/{REPO}/blobs/{d}", d)
                except PullError as exc:
                    result.errors.append(str(exc))
                    continue
                result.bytes += len(body)
                ttfb.append(first)
                (ttfb_cached if d in cached_set else ttfb_uncached).append(first)

        t0 = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            samplers = [await stack.enter_async_context(Sampler(pid)) for _, pid in agents]
            done = asyncio.Event()
            churning = asyncio.create_task(churn(done)) if churn is not None else None
            try:
                await asyncio.gather(
                    *(client(agents[i % len(agents)][0], p) for i, p in enumerate(plans))
                )
            finally:
                done.set()
                if churning is not None:
                    await churning
        result.seconds = time.perf_counter() - t0
        result.requests = sum(len(p) for p in plans)
        # Connections closed, so the fds held for them must be gone too.
        await connector.close()
        await asyncio.sleep(0.5)
        afters = [sample(pid) for _, pid in agents]
        result.rss_after, result.fds_after = max(a.rss for a in afters), max(a.fds for a in afters)
        result.rss_peak = max(s.max_rss for s in samplers)
        result.fds_peak = max(s.max_fds for s in samplers)
    ms = 1000.0
    result.ttfb_p50_ms = percentile(ttfb, 50) * ms
    result.ttfb_p99_ms = percentile(ttfb, 99) * ms
    result.ttfb_max_ms = max(ttfb, default=0.0) * ms
    result.ttfb_cached_p99_ms = percentile(ttfb_cached, 99) * ms
    result.ttfb_uncached_p99_ms = percentile(ttfb_uncached, 99) * ms
    return result


def report(result: LoadResult) -> str:
    mib = 1 << 20
    p2p = result.params.p2p_agents
    mode = (
        f"{p2p} agents + a seed restarted {result.restarts} times, p2p: "
        if p2p
        else "1 agent, --no-p2p: "
    )
    extra = (
        f"\nserved {result.served_by_source} vs received {result.bytes}; verified "
        f"{result.cached_blobs_verified} cached blobs; problems: {result.problems or 'none'}"
        if p2p
        else ""
    )
    return (
        mode
        + (
            f"{result.requests} requests from {result.params.clients} clients in "
            f"{result.seconds:.1f}s, {len(result.errors)} errors, {result.bytes / mib:.0f} MiB\n"
            f"TTFB p50 {result.ttfb_p50_ms:.1f} ms, p99 {result.ttfb_p99_ms:.1f} ms "
            f"(cached {result.ttfb_cached_p99_ms:.1f}, "
            f"uncached {result.ttfb_uncached_p99_ms:.1f}), "
            f"max {result.ttfb_max_ms:.1f} ms\n"
            f"agent RSS {result.rss_before / mib:.0f} -> peak {result.rss_peak / mib:.0f} -> "
            f"{result.rss_after / mib:.0f} MiB; fds {result.fds_before} -> peak "
            f"{result.fds_peak} -> {result.fds_after}"
        )
        + extra
    )


def pid_of(agent: Any) -> int:
    assert agent.proc is not None, "agent not started"
    pid: int = agent.proc.pid
    return pid


class FleetLoad:
    """The peer-to-peer mode's processes: a tracker, a seed agent restarted at random, and
    the client agents; ``run`` returns the load's result with the after-checks done."""

    def __init__(self, workdir: Path, registry: Any, params: LoadParams) -> None:
        from testbed.agent import AgentProc

        self.p = params
        self.rng = random.Random(params.seed + 2)
        self.tracker, peer = start_tracker(workdir)
        upstream = {registry.host_port: registry.url}
        # A restarted seed must come back fast: its children re-attach within --peer-wait.
        peer = [*peer, "--peer-wait", "3s", "--shutdown-timeout", "2s"]
        self.seed = AgentProc(
            workdir / "seed", upstream, default_upstream=registry.host_port, extra=peer
        )
        size = ["--cache-size", str(params.p2p_cache_size)]
        self.agents = [
            AgentProc(
                workdir / f"agent{i}",
                upstream,
                default_upstream=registry.host_port,
                extra=[*peer, *size],
            )
            for i in range(params.p2p_agents)
        ]
        self.registry_url = registry.url
        self.restarts = 0

    def stop(self) -> None:
        for a in [self.seed, *self.agents]:
            a.stop()
        self.tracker.stop()

    async def churn(self, done: asyncio.Event) -> None:
        # The first restart at once: the clients' agents are asking the seed for the cached
        # half right then, so it always lands while others fetch from it.
        while not done.is_set() and self.restarts < self.p.max_restarts:
            self.restarts += 1
            if self.rng.random() < 0.5:
                os.kill(pid_of(self.seed), signal.SIGKILL)
            await asyncio.to_thread(self.seed.stop)
            await asyncio.to_thread(self.seed.start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.rng.uniform(*self.p.restart_every))

    async def run(self) -> LoadResult:
        for a in [self.seed, *self.agents]:
            await asyncio.to_thread(a.start)
        first, *rest = self.agents
        result = await run_load(
            first.url,
            pid_of(first),
            self.registry_url,
            self.p,
            more=[(a.url, pid_of(a)) for a in rest],
            prepare_url=self.seed.url,
            churn=self.churn,
        )
        result.restarts = self.restarts
        async with aiohttp.ClientSession() as session:
            texts = []
            for a in self.agents:
                async with session.get(f"{a.url}/metrics") as r:
                    texts.append(await r.text())
        result.served_by_source = served_by_source(texts)
        # Stopped (cleanly) before their files are read: a running agent writes its state
        # files aside and renames them at any moment, which is no orphan.
        for a in self.agents:
            await asyncio.to_thread(a.stop)
        if sum(result.served_by_source.values()) != result.bytes:
            result.problems.append("served bytes by source do not add up to what was received")
        for i, (a, text) in enumerate(zip(self.agents, texts, strict=True)):
            check = check_data_dir(f"agent {i}", a.data_dir, text, self.p.p2p_cache_size)
            result.problems += check.problems
            result.cached_blobs_verified += check.blobs
        return result


def main(argv: list[str] | None = None) -> int:
    from testbed.agent import AgentProc
    from testbed.registry import Registry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--p2p",
        type=int,
        metavar="AGENTS",
        default=0,
        help="spread the clients over this many agents, with a tracker and a seed restarted "
        "at random (default: one agent, --no-p2p)",
    )
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    params = LoadParams(clients=args.clients, rounds=args.rounds, p2p_agents=args.p2p)
    with tempfile.TemporaryDirectory(prefix="layerswarm-load-") as tmp:
        reg = Registry(Path(tmp) / "registry").start()
        try:
            if params.p2p_agents:
                fleet = FleetLoad(Path(tmp), reg, params)
                try:
                    result = asyncio.run(fleet.run())
                finally:
                    fleet.stop()
            else:
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
        finally:
            reg.stop()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 1 if result.errors or result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
