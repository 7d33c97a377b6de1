"""Soak: pulls for a long time through agents under eviction pressure, with agents restarted
at random (SIGKILL or SIGTERM) and tags moved upstream, then a steady phase that measures
growth and checks that nothing was lost, leaked or corrupted.

Run:  .venv/bin/python -m bench.soak [--minutes 30] [--p2p AGENTS] [--json OUT]

Real registry, real agents (the CLI), loopback only. Without ``--p2p``: one agent with
--no-p2p. With ``--p2p N``: N agents and a real tracker, peer-to-peer on with the default
(relay) transport, so pulls on one agent stream layers from the others while those are
killed, restarted and evicting. Phase 1 (all but the last third): ``pullers`` clients pull
random images by tag from random agents, a mover pushes a new image under a random tag every
few seconds, a restarter kills or stops a random agent every so often. Phase 2 (the last
third, and at least a third of ``duration`` from when it really starts): every agent
restarted cleanly, pulls and tag moves go on without restarts; each
agent's RSS and fds are sampled after a warm-up and at the end.

Checks (``SoakResult.problems`` lists every failure):
- every pull completed with the right digests, except those overlapping a restart of the
  agent it asked (which may fail, but never with a complete body of the wrong digest, nor by
  going silent for the client's read timeout); a restart of a peer the agent was streaming
  from must not fail a pull;
- a pull started ``tag_ttl`` + 1 s after a tag moved got the new manifest (or a newer one);
- each agent's RSS grew by at most ``rss_growth_bound`` and its fds by at most
  ``fd_growth_bound`` in phase 2;
- no orphan files in any data dir: partial/ and tmp/ empty, no ``*.tmp``, blobs/ exactly the
  cache's index;
- every cached blob and stored manifest hashes to its name;
- served bytes by source (cache + peer + upstream), summed over the agents, equal the bytes
  clients received in phase 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.workload import (
    CorruptPull,
    PullError,
    Pushed,
    StalledPull,
    check_data_dir,
    pull_image,
    push_image,
    sample,
    served_by_source,
    start_tracker,
)

MiB = 1 << 20


@dataclass(frozen=True)
class SoakParams:
    duration: float = 1800.0
    repos: int = 6
    layers: int = 3
    min_layer: int = 128 << 10
    max_layer: int = 2 * MiB
    # Smaller than the working set (repos x layers x ~1 MiB), so eviction runs all the time.
    cache_size: int = 8 * MiB
    tag_ttl: float = 2.0
    pullers: int = 3
    # Each puller rests up to this long between pulls: a soak, not a load test (2 shared cores).
    pause: float = 0.5
    restart_every: tuple[float, float] = (8.0, 20.0)
    move_every: tuple[float, float] = (3.0, 8.0)
    # Phase 2 samples RSS and fds this long after its start (pools and caches warm).
    warmup: float = 10.0
    rss_growth_bound: int = 32 * MiB
    fd_growth_bound: int = 32
    seed: int = 7
    # 1 agent with --no-p2p, or this many agents and a tracker with peer-to-peer on.
    agents: int = 1
    p2p: bool = False
    # Every loop is bounded in count as well as in time.
    max_pulls: int = 500_000
    max_moves: int = 10_000
    max_restarts: int = 1_000


@dataclass
class SoakResult:
    params: SoakParams
    pulls_ok: int = 0
    pulls_disrupted: int = 0
    restarts_kill: int = 0
    restarts_term: int = 0
    tag_moves: int = 0
    stale_tag_answers: int = 0
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rss_start: int = 0
    rss_end: int = 0
    fds_start: int = 0
    fds_end: int = 0
    client_bytes_phase2: int = 0
    served_by_source_phase2: dict[str, float] = field(default_factory=dict)
    cached_blobs_verified: int = 0
    manifests_verified: int = 0
    seconds: float = 0.0


class Soak:
    def __init__(self, params: SoakParams, registry_url: str, agents: list[Any]) -> None:
        # ``agents`` are testbed.agent.AgentProc (imported lazily by soak()).
        self.p = params
        self.registry_url = registry_url
        self.agents = agents
        self.rng = random.Random(params.seed)
        self.result = SoakResult(params)
        # repo -> [(monotonic time pushed, manifest digest)], oldest first.
        self.history: dict[str, list[tuple[float, str]]] = {}
        # Restart windows per agent [(down_at, up_at)]; up_at is None while it is down.
        self.windows: list[list[tuple[float, float | None]]] = [[] for _ in agents]
        self.phase2_bytes = 0
        self.attempts = 0
        self.phase = 1
        self.stop_at = 0.0

    # -- the upstream side ------------------------------------------------------------------

    async def move_tag(self, session: aiohttp.ClientSession, repo: str) -> Pushed:
        layers = [
            self.rng.randbytes(self.rng.randint(self.p.min_layer, self.p.max_layer))
            for _ in range(self.p.layers)
        ]
        pushed = await push_image(session, self.registry_url, repo, "live", layers)
        self.history.setdefault(repo, []).append((time.monotonic(), pushed.manifest_digest))
        return pushed

    def acceptable(self, repo: str, started: float) -> set[str]:
        """Digests a pull of ``repo`` started at ``started`` may get: the one current
        ``tag_ttl`` + 1 s earlier, and any pushed since."""
        cutoff = started - self.p.tag_ttl - 1.0
        hist = self.history[repo]
        ok = {d for t, d in hist if t >= cutoff}
        older = [d for t, d in hist if t < cutoff]
        if older:
            ok.add(older[-1])
        return ok

    def disrupted(self, agent: int, start: float, end: float) -> bool:
        # A restart of the agent asked overlapping the pull, widened by a second for requests
        # in flight. Restarts of its peers are not an excuse: it must fall back on its own.
        for down, up in self.windows[agent]:
            if start <= (up if up is not None else end) + 1.0 and end >= down - 1.0:
                return True
        return False

    # -- tasks ------------------------------------------------------------------------------

    async def puller(self, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < self.stop_at and self.attempts < self.p.max_pulls:
            self.attempts += 1
            repo = self.rng.choice(sorted(self.history))
            index = self.rng.randrange(len(self.agents))
            t0 = time.monotonic()
            phase = self.phase

            def counted(n: int, phase: int = phase) -> None:
                # Bytes of a phase-2 request count for phase 2, also in a pull that fails.
                if phase == 2 and self.phase == 2:
                    self.phase2_bytes += n

            try:
                url = self.agents[index].url
                got = await pull_image(session, url, repo, "live", on_bytes=counted)
            except PullError as exc:
                # A restart of the agent asked excuses a cut or refused pull, never a wrong
                # body or a silent one (a restart resets connections, it does not stall them:
                # the stall of a request the restarted agent left waiting hid here).
                excused = not isinstance(exc, CorruptPull | StalledPull)
                if excused and self.disrupted(index, t0, time.monotonic()):
                    self.result.pulls_disrupted += 1
                    await asyncio.sleep(0.2)
                else:
                    # When and which process: to find the request in that agent's log.
                    began = time.time() - (time.monotonic() - t0)
                    stamp = time.strftime("%H:%M:%S", time.localtime(began))
                    pid = self.agents[index].proc.pid
                    self.result.errors.append(f"agent {index} (pid {pid}) {repo} at {stamp}: {exc}")
                continue
            if got.manifest_digest not in self.acceptable(repo, t0):
                self.result.stale_tag_answers += 1
                self.result.errors.append(f"{repo}: stale tag answer {got.manifest_digest}")
            self.result.pulls_ok += 1
            await asyncio.sleep(self.rng.uniform(0, self.p.pause))

    async def mover(self, session: aiohttp.ClientSession) -> None:
        while self.result.tag_moves < self.p.max_moves:
            await asyncio.sleep(self.rng.uniform(*self.p.move_every))
            # Until shortly before the end of phase 2 (phase 1's end is not the run's: the
            # mover used to stop for good when a move fell between the two phases).
            if self.phase == 2 and time.monotonic() >= self.stop_at - self.p.tag_ttl:
                return
            await self.move_tag(session, self.rng.choice(sorted(self.history)))
            self.result.tag_moves += 1

    async def restart(self, index: int, *, kill: bool) -> None:
        windows = self.windows[index]
        windows.append((time.monotonic(), None))
        agent = self.agents[index]
        proc = agent.proc
        if kill:
            os.kill(proc.pid, signal.SIGKILL)
            self.result.restarts_kill += 1
        else:
            self.result.restarts_term += 1
        # stop() reaps the killed process, or SIGTERMs and waits for a clean one.
        await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(agent.start)
        windows[-1] = (windows[-1][0], time.monotonic())

    async def restarter(self, phase1_end: float) -> None:
        while self.result.restarts_kill + self.result.restarts_term < self.p.max_restarts:
            await asyncio.sleep(self.rng.uniform(*self.p.restart_every))
            if time.monotonic() >= phase1_end:
                return
            index = self.rng.randrange(len(self.agents))
            await self.restart(index, kill=self.rng.random() < 0.5)

    # -- checks -----------------------------------------------------------------------------

    async def metrics(self, session: aiohttp.ClientSession, agent: Any) -> str:
        async with session.get(f"{agent.url}/metrics") as r:
            return await r.text()

    def check_accounting(self, metrics: list[str]) -> None:
        served = served_by_source(metrics)
        self.result.served_by_source_phase2 = served
        self.result.client_bytes_phase2 = self.phase2_bytes
        if sum(served.values()) != self.phase2_bytes:
            self.result.problems.append(
                f"served bytes by source {served} add up to {sum(served.values())}, "
                f"clients received {self.phase2_bytes}"
            )

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> SoakResult:
        t0 = time.monotonic()
        self.stop_at = t0 + self.p.duration
        phase1_end = t0 + self.p.duration * 2 / 3
        timeout = aiohttp.ClientTimeout(total=120, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i in range(self.p.repos):
                await self.move_tag(session, f"soak/app{i}")
            mover = asyncio.create_task(self.mover(session))
            # Phase 1: restarts at random.
            self.stop_at = phase1_end
            pullers = [asyncio.create_task(self.puller(session)) for _ in range(self.p.pullers)]
            restarter = asyncio.create_task(self.restarter(phase1_end))
            await asyncio.gather(*pullers, restarter)
            # Phase 2: clean restarts give counters that phase 2 alone moved.
            for index in range(len(self.agents)):
                await self.restart(index, kill=False)
            self.phase = 2
            # A full third from its real start: on a loaded machine the pulls still in flight
            # and the clean restarts can take all the time phase 2 was given (a 100 s run
            # once had no phase-2 pull at all, and nothing to check the byte counts against).
            self.stop_at = max(t0 + self.p.duration, time.monotonic() + self.p.duration / 3)
            pullers = [asyncio.create_task(self.puller(session)) for _ in range(self.p.pullers)]
            await asyncio.sleep(min(self.p.warmup, max(0.0, self.stop_at - time.monotonic())))
            starts = [sample(a.proc.pid) for a in self.agents]
            await asyncio.gather(*pullers)
            await mover
            ends = [sample(a.proc.pid) for a in self.agents]
            r = self.result
            r.rss_start, r.fds_start = sum(s.rss for s in starts), sum(s.fds for s in starts)
            r.rss_end, r.fds_end = sum(s.rss for s in ends), sum(s.fds for s in ends)
            for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
                if end.rss - start.rss > self.p.rss_growth_bound:
                    r.problems.append(
                        f"agent {index}: RSS grew {(end.rss - start.rss) / MiB:.1f} MiB in phase 2"
                    )
                if end.fds - start.fds > self.p.fd_growth_bound:
                    r.problems.append(f"agent {index}: fds grew by {end.fds - start.fds}")
            metrics = [await self.metrics(session, a) for a in self.agents]
            self.check_accounting(metrics)
            # Stopped (cleanly) before their files are read: a running agent writes its state
            # files aside and renames them at any moment, which is no orphan.
            for agent in self.agents:
                await asyncio.to_thread(agent.stop)
            for index, (agent, text) in enumerate(zip(self.agents, metrics, strict=True)):
                check = check_data_dir(f"agent {index}", agent.data_dir, text, self.p.cache_size)
                r.problems += check.problems
                r.cached_blobs_verified += check.blobs
                r.manifests_verified += check.manifests
        if self.result.errors:
            self.result.problems.append(f"{len(self.result.errors)} pulls failed outside restarts")
        self.result.seconds = time.monotonic() - t0
        return self.result


def report(r: SoakResult) -> str:
    mode = f"{r.params.agents} agents, p2p" if r.params.p2p else "1 agent, --no-p2p"
    return (
        f"{mode}, {r.seconds:.0f}s: {r.pulls_ok} pulls ok, {r.pulls_disrupted} cut by "
        f"{r.restarts_kill} SIGKILL + {r.restarts_term} SIGTERM restarts, {r.tag_moves} tag "
        f"moves, {len(r.errors)} errors\n"
        f"phase 2 (all agents): RSS {r.rss_start / MiB:.1f} -> {r.rss_end / MiB:.1f} MiB, fds "
        f"{r.fds_start} -> {r.fds_end}; served {r.served_by_source_phase2} vs clients "
        f"{r.client_bytes_phase2}; verified {r.cached_blobs_verified} blobs, "
        f"{r.manifests_verified} manifests\n"
        f"problems: {r.problems or 'none'}"
    )


def make_agent(workdir: Path, registry: Any, params: SoakParams, peer: list[str]) -> Any:
    """``peer``: the tracker flags (bench.workload.start_tracker), or [] for --no-p2p."""
    from testbed.agent import AgentProc

    return AgentProc(
        workdir,
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=[
            *(peer or ["--no-p2p"]),
            "--cache-size",
            str(params.cache_size),
            "--tag-ttl",
            f"{params.tag_ttl}s",
        ],
    )


async def soak(params: SoakParams, workdir: Path) -> SoakResult:
    from testbed.registry import Registry

    registry = Registry(workdir / "registry").start()
    tracker = None
    agents: list[Any] = []
    try:
        peer: list[str] = []
        if params.p2p:
            tracker, peer = start_tracker(workdir)
        agents = [
            make_agent(workdir / f"agent{i}", registry, params, peer) for i in range(params.agents)
        ]
        for agent in agents:
            await asyncio.to_thread(agent.start)
        return await Soak(params, registry.url, agents).run()
    finally:
        for agent in agents:
            agent.stop()
        if tracker is not None:
            tracker.stop()
        registry.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument(
        "--p2p",
        type=int,
        metavar="AGENTS",
        default=0,
        help="run this many agents and a tracker, peer-to-peer on (default: 1 agent, --no-p2p)",
    )
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument(
        "--workdir", type=Path, help="run (and keep logs and data) here instead of a temp dir"
    )
    args = ap.parse_args(argv)
    params = SoakParams(duration=args.minutes * 60, agents=max(1, args.p2p), p2p=args.p2p > 0)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(soak(params, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="layerswarm-soak-") as tmp:
            result = asyncio.run(soak(params, Path(tmp)))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
