"""Simulated agents for bench.fleet_sim: one worker process runs many of them on one loop.

Each simulated agent speaks to the real tracker with the agent's own code: an
``HttpTrackerClient`` under a ``TrackerLink`` (heartbeats with lease upkeep, announces,
lookups, bad-peer reports). What the relay transport does between those calls is modelled
after agent/relay/source.py and agent/relay/server.py, with the bytes left out:

* per layer a follower makes one ``announce(fetching)`` and one ``lookup``; the lease holder
  (``action == "fetch"``) "fetches" from the upstream at ``upstream_rate`` and keeps its lease
  with the progress its heartbeats announce;
* a follower asks the handed-out peers in the relay's order (holders, then the lease holder,
  then followers furthest along), three at a time; a peer admits it if it holds the layer or
  has a source of its own, the asker is not its ancestor, and it has a free child slot
  (``max_children``, 64 for layers of 2 MiB or less); a busy peer names its children, which
  the follower asks next when the tracker handed them out and names in its next lookup when
  not; at most 4 lookups per layer, one more after a second of busy answers, and the upstream
  after ``peer_wait`` seconds without a parent; with ``parent_choice`` "tracker" (the
  agent's default) the lookups of layers over 2 MiB ask the tracker to choose, and the
  follower asks that parent first and alone, again every 50 ms while it has no source yet,
  reporting it and looking up again when it is dead or does not have the layer;
* a parent's bytes arrive at ``peer_rate``, never ahead of the parent's own progress (a chain
  moves at the pace of its root); a parent that dies breaks its child's stream at once, the
  child reports it and attaches elsewhere from its offset (and asks again if it was the lease
  holder, which may hand it the lease);
* a layer done is announced as held.

Only agents of this process can be modelled as parents in detail: the orchestrator gives
each process whole regions, and the tracker hands out same-region peers first. A handed-out
holder of another process is taken as a parent with a free slot; one still fetching there
counts as busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import random
import resource
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from agent.relay.source import order_candidates
from agent.trackerlink import CoordinatorUnavailable, Lookup, TrackerLink
from core.tasks import Supervisor
from core.trackerclient import HttpTrackerClient
from core.wire import AgentInfo, Announcement, HeartbeatReply, Peer

# The relay's constants (agent/relay/source.py, agent/relay/server.py), so the simulated
# followers make the same tracker calls at the same moments.
PARALLEL_ASKS = 3
MAX_LOOKUPS = 4
RELOOKUP_AFTER = 1.0
MAX_HINTS = 8
SMALL_BLOB = 2 << 20
SMALL_CHILDREN = 64

# Set while a request belongs to a heartbeat (its lease upkeep and re-announce included):
# the report counts tracker requests per node per layer "heartbeats apart".
IN_HEARTBEAT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_heartbeat", default=False)
# The simulated agent a request belongs to (set in its task, inherited by the tasks it starts),
# for the per-node timeline of tracker failures and recoveries.
AGENT: contextvars.ContextVar[str] = contextvars.ContextVar("agent", default="")


@dataclass
class Spec:
    """One worker's share of the simulation, written by the orchestrator as JSON."""

    trackers: list[str]
    token: str
    # (index, region, zone, role, join_at, die_at, pulls): times in seconds after start_at,
    # die_at < 0 for never; pulls is False for seeds of the preheated scenario.
    agents: list[tuple[int, str, str, str, float, float, bool]]
    layers: list[tuple[str, int]]
    start_at: float
    ramp: float
    peer_rate: float
    upstream_rate: float
    peer_wait: float
    max_children: int
    parent_choice: str
    preheated: bool
    timeout: float
    connections: int
    seed: int
    out: str
    # Set for the restart-redis scenario: the orchestrator writes there (as seconds after
    # start_at) when it restarted Redis. Agents whose pulls ended before their next heartbeat
    # keep beating until each is registered anew or ``settle_timeout`` passes, so "registered
    # again within one heartbeat" is measured for every node, not only the slow ones.
    settle_file: str | None = None
    settle_timeout: float = 60.0


@dataclass
class Transfer:
    """One simulated agent's copy of one layer: where its bytes come from, and how far along.

    ``source`` is None while it has no parent (looking, or its parent died), "upstream" or
    "peer"; ``parent`` is None for the upstream and for a holder in another process.
    """

    agent: SimAgent
    digest: str
    size: int
    rate: float = 0.0
    source: str | None = None
    parent: Transfer | None = None
    offset0: float = 0.0
    t0: float = 0.0
    complete: bool = False
    children: list[Transfer] = field(default_factory=list)
    lineage: tuple[str, ...] = ()
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _chain(self) -> list[Transfer]:
        chain = [self]
        while True:
            top = chain[-1]
            if top.complete or top.source != "peer" or top.parent is None:
                return chain
            chain.append(top.parent)

    def progress(self, now: float) -> float:
        """Bytes received by ``now``: its own rate, capped by every ancestor's progress."""
        chain = self._chain()
        p = math.inf
        for t in reversed(chain):
            if t.complete:
                p = float(t.size)
            elif t.source is None:
                p = min(p, t.offset0)
            else:
                p = min(p, t.offset0 + t.rate * max(0.0, now - t.t0), float(t.size))
        return p

    def done_at(self) -> float:
        """When the last byte arrives if nothing changes; inf while a link has no source."""
        chain = self._chain()
        d = 0.0
        for t in reversed(chain):
            if t.complete:
                d = 0.0
            elif t.source is None:
                return math.inf
            else:
                d = max(d, t.t0 + (t.size - t.offset0) / t.rate)
        return d

    def notify_children(self) -> None:
        for c in self.children:
            c.changed.set()


@dataclass
class LayerRecord:
    layer: int
    pull_start: float
    handout: float | None = None
    handout_kind: str = ""
    done: float | None = None
    source: str = ""
    lookups: int = 0
    error: str = ""


class Stats:
    """What the trace hooks saw, per process."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.by_tracker: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.rollout_requests: Counter[str] = Counter()
        self.heartbeat_requests: Counter[str] = Counter()
        self.timeline: Counter[int] = Counter()
        self.zero = 0.0
        # Per agent, after the rollout started: (first failed request, first answered request
        # after it) per outage, and when a heartbeat registered it anew.
        self.outages: dict[str, list[list[float | None]]] = defaultdict(list)
        self.registered: dict[str, list[float]] = defaultdict(list)
        self.failed_replicas: dict[str, Counter[str]] = defaultdict(Counter)

    def trace(self) -> aiohttp.TraceConfig:
        tc = aiohttp.TraceConfig()

        async def start(
            _s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: aiohttp.TraceRequestStartParams
        ) -> None:
            ctx.started = time.perf_counter()
            ctx.heartbeat = IN_HEARTBEAT.get()

        async def end(
            _s: aiohttp.ClientSession, ctx: SimpleNamespace, p: aiohttp.TraceRequestEndParams
        ) -> None:
            endpoint = _endpoint(p.url.path)
            self.latency[endpoint].append(time.perf_counter() - ctx.started)
            self.by_tracker[f"{p.url.host}:{p.url.port}"] += 1
            self.statuses[f"{endpoint} {p.response.status}"] += 1
            self.timeline[int(time.time() - self.zero)] += 1
            kind = self.heartbeat_requests if ctx.heartbeat else self.rollout_requests
            kind[endpoint] += 1
            self._outage(p.response.status >= 500, f"{p.url.host}:{p.url.port}")

        async def failed(
            _s: aiohttp.ClientSession,
            _ctx: SimpleNamespace,
            p: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            self.errors[f"{_endpoint(p.url.path)} {type(p.exception).__name__}"] += 1
            self._outage(True, f"{p.url.host}:{p.url.port}")

        tc.on_request_start.append(start)
        tc.on_request_end.append(end)
        tc.on_request_exception.append(failed)
        return tc

    def _outage(self, failed: bool, replica: str) -> None:
        """An agent's request failed (a connection error, a 5xx), or one answered after that."""
        agent = AGENT.get()
        now = time.time() - self.zero
        if not agent or now < 0:
            return
        spans = self.outages.get(agent)
        if failed:
            self.failed_replicas[agent][replica] += 1
            if not spans or spans[-1][1] is not None:
                self.outages[agent].append([now, None])
        elif spans and spans[-1][1] is None:
            spans[-1][1] = now


def _endpoint(path: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[:2] == ["v1", "agents"]:
        return parts[3]
    return "/".join(parts[:2])


class SimClient(HttpTrackerClient):
    """The agent's client, noting when a heartbeat registered the agent anew."""

    registered_at: list[float]
    world: World

    async def heartbeat(self, info: AgentInfo) -> HeartbeatReply:
        reply = await super().heartbeat(info)
        if reply.registered:
            self.registered_at.append(self.world.now())
        return reply


class SimLink(TrackerLink):
    """The agent's TrackerLink, with its heartbeat's requests marked as such for the report."""

    async def heartbeat(self) -> float:
        token = IN_HEARTBEAT.set(True)
        try:
            return await super().heartbeat()
        finally:
            IN_HEARTBEAT.reset(token)


class SimAgent:
    def __init__(
        self,
        world: World,
        index: int,
        region: str,
        zone: str,
        role: str,
        session: aiohttp.ClientSession,
    ) -> None:
        self.world = world
        self.agent_id = f"sim-{index:05d}"
        self.region = region
        self.zone = zone
        self.role = role
        self.dead = False
        self.transfers: dict[str, Transfer] = {}
        self.records: list[LayerRecord] = []
        urls = world.spec.trackers
        # Each agent prefers another replica first, as a fleet configured with the same
        # list would after failovers have spread it.
        rotated = urls[index % len(urls) :] + urls[: index % len(urls)]
        client = SimClient(rotated, world.spec.token, self.agent_id, secrets.token_hex(16), session)
        client.world = world
        self.registered_at: list[float] = []
        client.registered_at = self.registered_at
        # No preheat jobs in the simulation: the link starts no tasks of its own.
        self.link = SimLink(
            client, self.describe, self.held, Supervisor(self.agent_id), fetching=self.fetching
        )
        self.tasks: list[asyncio.Task[None]] = []

    def describe(self) -> AgentInfo:
        return AgentInfo(
            agent_id=self.agent_id,
            address="127.0.0.1",
            peer_port=1,
            zone=self.zone,
            region=self.region,
            role="seed" if self.role == "seed" else "peer",
        )

    def held(self) -> list[Announcement]:
        return [
            Announcement(t.digest, "holding", t.size, t.size)
            for t in self.transfers.values()
            if t.complete
        ]

    def fetching(self) -> list[Announcement]:
        now = self.world.now()
        return [
            Announcement(t.digest, "fetching", int(t.progress(now)), t.size, upstream=True)
            for t in self.transfers.values()
            if t.source == "upstream" and not t.complete
        ]

    async def beat(self) -> None:
        while not self.dead:
            await self.link.run_once()

    def die(self) -> None:
        """The node is gone: its streams break now, its tracker entries expire later."""
        now = self.world.now()
        self.dead = True
        for t in self.transfers.values():
            t.offset0 = float(t.size) if t.complete else t.progress(now)
            t.source, t.parent, t.complete = None, None, False
            t.notify_children()
        for task in self.tasks:
            task.cancel()

    # -- one layer, as RelaySource.fetch and the fetcher's fallback do it ------------------

    async def pull_layer(self, layer: int, digest: str, size: int) -> None:
        rec = LayerRecord(layer, self.world.now())
        self.records.append(rec)
        tr = Transfer(self, digest, size)
        self.transfers[digest] = tr
        try:
            await self.link.announce(digest, "fetching", 0, size)
            lookup = await self.link.lookup(digest, assign=self._assign(size))
            rec.lookups = 1
            if lookup.action == "fetch":
                self.world.leases[f"{self.region} {layer}"] += 1
                outcome = "lease"
            else:
                outcome = await self._follow(tr, rec, lookup)
        except CoordinatorUnavailable as exc:
            rec.error = f"tracker: {exc}"[:200]
            outcome = "upstream"
        if outcome != "done":
            if rec.handout is None:
                rec.handout = self.world.now()
                rec.handout_kind = outcome
            await self._upstream(tr)
        rec.source = "upstream" if outcome != "done" else "peer"
        tr.complete = True
        tr.notify_children()
        rec.done = self.world.now()
        with contextlib.suppress(CoordinatorUnavailable):
            await self.link.announce(digest, "holding", size, size)

    async def _upstream(self, tr: Transfer) -> None:
        now = self.world.now()
        tr.offset0 = tr.progress(now) if tr.source is not None else tr.offset0
        tr.source, tr.parent, tr.t0, tr.rate = "upstream", None, now, self.world.spec.upstream_rate
        tr.lineage = ()
        tr.notify_children()
        await asyncio.sleep(max(0.0, tr.done_at() - now))

    def _assign(self, size: int) -> bool:
        return self.world.spec.parent_choice == "tracker" and size > SMALL_BLOB

    # Step for step the agent's RelaySource._follow (one loop, so the two read side by side).
    async def _follow(  # noqa: PLR0912, PLR0915
        self, tr: Transfer, rec: LayerRecord, lookup: Lookup
    ) -> str:
        world = self.world
        assign = self._assign(tr.size)
        rec.lookups = 1
        last_lookup = world.now()
        failed: set[str] = set()
        reported: set[str] = set()
        deadline = world.now() + world.spec.peer_wait
        while True:
            unknown: set[str] = set()
            parent, gone = await self._find_parent(tr, lookup, failed, unknown, deadline)
            if gone is not None:
                reported.add(gone)
                last_lookup = world.now()
                again = await self._relookup(tr, rec, gone, assign)
                if again is None:
                    return "lease"
                lookup = again
                continue
            if parent is None:
                all_failed = not self._candidates(lookup, failed)
                if world.now() >= deadline or (all_failed and rec.lookups >= MAX_LOOKUPS):
                    return "upstream"
                if not all_failed:
                    await asyncio.sleep(0.02 + 0.03 * world.rng.random())
                named = sorted(unknown)[:MAX_HINTS]
                dead = failed - reported
                if rec.lookups < MAX_LOOKUPS and (
                    all_failed or named or dead or world.now() - last_lookup >= RELOOKUP_AFTER
                ):
                    for peer_id in sorted(dead):
                        with contextlib.suppress(CoordinatorUnavailable):
                            await self.link.report_unresponsive(tr.digest, peer_id)
                    reported |= dead
                    rec.lookups += 1
                    last_lookup = world.now()
                    lookup = await self.link.lookup(tr.digest, named, assign=assign)
                    if lookup.action == "fetch":
                        world.leases[f"{self.region} {rec.layer}"] += 1
                        return "lease"
                continue
            peer_id, parent_tr = parent
            if rec.handout is None:
                rec.handout = world.now()
                rec.handout_kind = "parent"
            if await self._stream(tr, peer_id, parent_tr):
                return "done"
            failed.add(peer_id)
            reported.add(peer_id)
            if peer_id == lookup.lease_holder or assign:
                # As the agent: the lease holder's lease is voided, a tracker-chosen parent
                # leaves the tree, and the follower looks up again after the report.
                last_lookup = world.now()
                again = await self._relookup(tr, rec, peer_id, assign)
                if again is None:
                    world.takeovers += 1
                    return "lease"
                lookup = again
            else:
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.link.report_unresponsive(tr.digest, peer_id)
            deadline = world.now() + world.spec.peer_wait

    async def _relookup(
        self, tr: Transfer, rec: LayerRecord, failed_peer: str, assign: bool
    ) -> Lookup | None:
        """Report ``failed_peer``, then look up again; None when the lease came to us."""
        with contextlib.suppress(CoordinatorUnavailable):
            await self.link.report_unresponsive(tr.digest, failed_peer)
        rec.lookups += 1
        lookup = await self.link.lookup(tr.digest, assign=assign)
        if lookup.action == "fetch":
            self.world.leases[f"{self.region} {rec.layer}"] += 1
            return None
        return lookup

    async def _find_parent(
        self,
        tr: Transfer,
        lookup: Lookup,
        failed: set[str],
        unknown: set[str],
        deadline: float,
    ) -> tuple[tuple[str, Transfer | None] | None, str | None]:
        """As the agent's RelaySource._find_parent: the tracker's choice first, else the
        walk; second, the tracker's choice when it turned out dead."""
        chosen = lookup.parent
        if chosen is not None and chosen not in failed:
            got = await self._attach_chosen(tr, lookup, chosen, failed, deadline)
            if got is not None:
                return got, None
            if chosen in failed:
                return None, chosen
        return self._attach(tr, lookup, failed, unknown), None

    async def _attach_chosen(
        self, tr: Transfer, lookup: Lookup, chosen: str, failed: set[str], deadline: float
    ) -> tuple[str, Transfer | None] | None:
        """The tracker's choice, asked alone, again while it has no source yet (409)."""
        peer = next((p for p in lookup.peers if p.agent_id == chosen), None)
        while peer is not None:
            got = self._ask(tr, peer, failed)
            if isinstance(got, tuple):
                return got
            other = self.world.agents.get(chosen)
            theirs = other.transfers.get(tr.digest) if other is not None else None
            waiting = theirs is not None and not theirs.complete and theirs.source is None
            if chosen in failed or not waiting or self.world.now() >= deadline:
                return None
            await asyncio.sleep(0.05)
        return None

    def _candidates(self, lookup: Lookup, failed: set[str]) -> list[Peer]:
        return order_candidates(lookup, failed, self.agent_id, self.world.rng)

    def _attach(
        self, tr: Transfer, lookup: Lookup, failed: set[str], unknown: set[str]
    ) -> tuple[str, Transfer | None] | None:
        known = {p.agent_id: p for p in lookup.peers}
        queue = self._candidates(lookup, failed)
        tried: set[str] = set()
        while queue:
            batch: list[Peer] = []
            while queue and len(batch) < PARALLEL_ASKS:
                peer = queue.pop(0)
                if peer.agent_id not in tried and peer.agent_id not in failed:
                    tried.add(peer.agent_id)
                    batch.append(peer)
            if not batch:
                return None
            hints: list[str] = []
            for peer in batch:
                got = self._ask(tr, peer, failed)
                if isinstance(got, tuple):
                    return got
                hints.extend(got)
            below = [known[h] for h in hints if h in known and h not in tried]
            unknown.update(h for h in hints if h not in known and h not in tried)
            queue = below + queue
        return None

    def _ask(
        self, tr: Transfer, peer: Peer, failed: set[str]
    ) -> tuple[str, Transfer | None] | list[str]:
        """What the peer's relay server would answer (agent/relay/server.py ``blob``)."""
        other = self.world.agents.get(peer.agent_id)
        if other is None:
            # Another process's agent: a holder streams; one still fetching counts as busy.
            return [] if peer.state == "fetching" else (peer.agent_id, None)
        if other.dead:
            failed.add(peer.agent_id)
            return []
        theirs = other.transfers.get(tr.digest)
        if theirs is None:
            failed.add(peer.agent_id)  # 404: neither holds nor fetches it
            return []
        if not theirs.complete and theirs.source is None:
            return []  # 409: no source yet
        if self.agent_id in theirs.lineage:
            return []  # 409: the asker is its ancestor
        limit = self.world.spec.max_children if tr.size > SMALL_BLOB else SMALL_CHILDREN
        if len(theirs.children) >= limit:
            return [c.agent.agent_id for c in theirs.children][:MAX_HINTS]
        theirs.children.append(tr)
        return (peer.agent_id, theirs)

    async def _stream(self, tr: Transfer, peer_id: str, parent: Transfer | None) -> bool:
        """True when the layer is complete, False when the parent's stream broke."""
        world = self.world
        now = world.now()
        tr.offset0 = tr.progress(now) if tr.source is not None else tr.offset0
        tr.source, tr.parent, tr.t0, tr.rate = "peer", parent, now, world.spec.peer_rate
        tr.lineage = (*parent.lineage, peer_id) if parent is not None else (peer_id,)
        tr.notify_children()
        try:
            while True:
                tr.changed.clear()
                if parent is not None and parent.agent.dead:
                    now = world.now()
                    tr.offset0 = tr.progress(now)
                    tr.source, tr.parent = None, None
                    tr.notify_children()
                    return False
                wait = tr.done_at() - world.now()
                if wait <= 0:
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(wait) else wait):
                        await tr.changed.wait()
                # A change upstream moves this transfer's end, and its children's.
                tr.notify_children()
        finally:
            if parent is not None and tr in parent.children:
                parent.children.remove(tr)


class World:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)  # a simulation, not a secret
        self.agents: dict[str, SimAgent] = {}
        self.leases: Counter[str] = Counter()
        self.takeovers = 0
        self._zero = time.monotonic() + (spec.start_at - time.time())

    def now(self) -> float:
        """Seconds since the rollout started (negative before)."""
        return time.monotonic() - self._zero


async def run_agent(
    world: World, agent: SimAgent, join_at: float, die_at: float, pulls: bool
) -> None:
    spec = world.spec
    # Joiners appear mid-rollout; the rest register during the warm-up, spread out.
    if join_at > 0:
        await asyncio.sleep(max(0.0, join_at - world.now()))
    else:
        await asyncio.sleep(max(0.0, -world.now()) * world.rng.random() * 0.8)
    AGENT.set(agent.agent_id)
    me = asyncio.current_task()
    assert me is not None
    agent.tasks.append(me)
    if spec.preheated and not pulls:
        # A preheated seed holds every layer before the rollout: its first heartbeat
        # registers it and announces them, as an agent restarting with a full cache does.
        for digest, size in spec.layers:
            agent.transfers[digest] = Transfer(agent, digest, size, complete=True)
    beat = asyncio.create_task(agent.beat())
    agent.tasks.append(beat)
    if die_at >= 0:
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + max(0.0, die_at - world.now()), agent.die)
    if not pulls:
        await beat
        return
    start = max(join_at, spec.ramp * world.rng.random())
    await asyncio.sleep(max(0.0, start - world.now()))
    async with asyncio.TaskGroup() as tg:
        for i, (digest, size) in enumerate(spec.layers):
            tg.create_task(agent.pull_layer(i, digest, size))


async def settle(world: World, event: Path, timeout: float) -> None:
    """Wait (bounded) until the orchestrator's fault happened and every live agent that
    pulled has registered again after it."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        try:
            at = float(event.read_text())
        except (OSError, ValueError):
            await asyncio.sleep(0.2)
            continue
        live = [a for a in world.agents.values() if a.records and not a.dead]
        if all(any(t >= at for t in a.registered_at) for a in live):
            return
        await asyncio.sleep(0.2)


async def run_worker(spec: Spec) -> dict[str, Any]:
    stats = Stats()
    stats.zero = spec.start_at
    world = World(spec)
    connector = aiohttp.TCPConnector(limit=spec.connections)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[stats.trace()]) as session:
        runs: list[asyncio.Task[None]] = []
        for index, region, zone, role, join_at, die_at, pulls in spec.agents:
            agent = SimAgent(world, index, region, zone, role, session)
            world.agents[agent.agent_id] = agent
            runs.append(asyncio.create_task(run_agent(world, agent, join_at, die_at, pulls)))
        pulling = [r for r, a in zip(runs, spec.agents, strict=True) if a[6]]
        deadline = spec.timeout - world.now()
        done, pending = await asyncio.wait(pulling, timeout=max(1.0, deadline))
        # Heartbeats while agents only wait to register anew would inflate the per-minute
        # figure of the rollout itself: count up to here.
        rollout_beats = Counter(stats.heartbeat_requests)
        if spec.settle_file:
            await settle(world, Path(spec.settle_file), spec.settle_timeout)
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    crashed = [repr(t.exception()) for t in done if not t.cancelled() and t.exception()]
    return {
        "records": [
            {
                "agent": a.agent_id,
                "region": a.region,
                "dead": a.dead,
                "layers": [r.__dict__ for r in a.records],
                "registered_at": a.registered_at,
                "outages": stats.outages.get(a.agent_id, []),
                "failed_replicas": stats.failed_replicas.get(a.agent_id, {}),
            }
            for a in world.agents.values()
            if a.records
        ],
        "latency": stats.latency,
        "by_tracker": stats.by_tracker,
        "statuses": stats.statuses,
        "errors": stats.errors,
        "rollout_requests": stats.rollout_requests,
        "heartbeat_requests": rollout_beats,
        "timeline": {str(k): v for k, v in sorted(stats.timeline.items())},
        "leases": world.leases,
        "takeovers": world.takeovers,
        "unfinished": len(pending),
        "crashed": crashed[:10],
        "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime
        + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
    }


def main(argv: Sequence[str]) -> int:
    spec_path = Path(argv[0])
    raw = json.loads(spec_path.read_text())
    raw["agents"] = [tuple(a) for a in raw["agents"]]
    raw["layers"] = [tuple(x) for x in raw["layers"]]
    spec = Spec(**raw)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run_worker(spec))
    Path(spec.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
