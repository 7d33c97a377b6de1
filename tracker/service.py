"""The tracker's logic over a store and a clock, shared by the HTTP server and in-process clients.

Every agent-bound method authenticates first: the agent must be alive (``UnknownAgent``
otherwise: heartbeat first) and present the key it registered with (``Forbidden`` otherwise),
so one agent can never change another's entries. Validation happens before any write, so a
refused request leaves the state untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import re
import secrets
from collections import Counter, deque
from collections.abc import Collection, Sequence
from typing import Any

from core.trackererrors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    UnknownAgent,
)
from core.wire import (
    AgentInfo,
    Announcement,
    Counters,
    HeartbeatReply,
    Invalidation,
    LayerProgress,
    LookupReply,
    Metainfo,
    Peer,
    PreheatJob,
    SegmentMeta,
    check_agent_id,
    check_digest,
    check_key,
)
from tracker.clock import Clock
from tracker.config import TrackerConfig
from tracker.handout import order_peers
from tracker.model import AgentRecord, Holding, PreheatReport
from tracker.store.base import BAD_PEER_QUORUM, AuthenticatedLookup, PeerView, TrackerStore

log = logging.getLogger(__name__)

# How soon an agent told to wait should ask again if it got no peer to pipeline from.
WAIT_RETRY = 1.0
# Live seeds are listed at most this often for task assignment; 10,000 agents polling tasks
# must not each list the whole fleet.
SEED_CACHE_SECONDS = 5.0
# The fleet is counted at most this often to set the heartbeat interval.
FLEET_COUNT_SECONDS = 5.0
# The longest heartbeat interval the tracker asks for: tag invalidations and preheat jobs
# reach agents with their heartbeat, and a dead agent is noticed after three intervals.
MAX_HEARTBEAT_INTERVAL = 60.0
MAX_SEGMENTS = 100_000
MAX_PREHEAT_LAYERS = 1000
HOTTEST = 10
# What one fleet-token holder can make the tracker keep is bounded:
# torrent bytes per digest (a 10 GiB layer in 16 MiB segments needs well under 1 MiB),
# how long metainfo lives after its last publish, digests one agent may hold, live preheat jobs.
MAX_METAINFO_BYTES = 4 << 20
METAINFO_TTL = 7 * 86400.0
MAX_HOLDINGS_PER_AGENT = 100_000
MAX_PREHEAT_JOBS = 1000
# A bad-peer report counts this long (the peer may have been briefly overloaded, or the
# reporter wrong, or lying).
BAD_PEER_TTL = 600.0
# The fleet page's chart: this many samples of the fleet totals, at most one per heartbeat
# interval (2 h at the default --agent-ttl), kept in this replica's memory.
HISTORY_POINTS = 720
# Preheat jobs shown on the fleet page, newest first.
PAGE_JOBS = 10
# A holding announce with at most this many layers keeps their leases (one round trip each).
_KEEP_LEASE_ITEMS = 4
# Agent ids one lookup may ask the tracker to vouch for.
MAX_NAMED = 16
# A (region, digest)'s relay parent tree is kept this long after its last assignment.
PARENT_TREE_TTL = 3600.0
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$")
REPORT_STATES = ("running", "done", "failed")


def _in_scope(job: PreheatJob, info: AgentInfo) -> bool:
    return (job.zone is None or job.zone == info.zone) and (
        job.region is None or job.region == info.region
    )


def _conflicts(current: Metainfo, total_size: int, segment: SegmentMeta) -> bool:
    """Does ``segment`` disagree with what is published (size, overlap, order, content)?"""
    if current.total_size != total_size:
        return True
    for other in current.segments:
        if other.index == segment.index:
            if (other.offset, other.length, other.info_hash) != (
                segment.offset,
                segment.length,
                segment.info_hash,
            ):
                return True
            continue
        overlaps = (
            other.offset < segment.offset + segment.length
            and segment.offset < other.offset + other.length
        )
        misordered = (other.index < segment.index) != (other.offset < segment.offset)
        if overlaps or misordered:
            return True
    return False


def describe_scope(job: PreheatJob) -> str:
    who = "seeds, or every agent when no seed is live" if job.scope == "seeds" else "every agent"
    where = [f"zone {job.zone}" if job.zone else "", f"region {job.region}" if job.region else ""]
    place = " and ".join(w for w in where if w) or "any zone or region"
    return f"{who}, in {place}"


def check_image(image: str) -> str:
    if not _IMAGE.match(image) or ".." in image:
        raise InvalidRequest("image must be a reference like registry/repo:tag or repo@sha256:...")
    return image


class Tracker:
    def __init__(
        self,
        store: TrackerStore,
        clock: Clock,
        config: TrackerConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config or TrackerConfig()
        # Peer shuffling needs no cryptographic strength, only spread across holders.
        self._rng = rng or random.Random()  # noqa: S311
        self._seed_cache: tuple[float, list[AgentInfo]] | None = None
        self._fleet_count: tuple[float, int] | None = None
        # Checked once: a runtime Protocol check costs microseconds on every lookup.
        self._one_step = store if isinstance(store, AuthenticatedLookup) else None
        self._history: deque[tuple[float, int, int]] = deque(maxlen=HISTORY_POINTS)

    # -- agents ---------------------------------------------------------------------------

    async def authenticate(self, agent_id: str, key: str) -> AgentRecord:
        check_agent_id(agent_id)
        rec = await self.store.get_agent(agent_id)
        return self._check(agent_id, key, rec, self.clock.now())

    async def heartbeat_interval(self) -> float:
        """How often agents should heartbeat: ``--heartbeat-rate`` spread over the live fleet.

        Agents fetching from the upstream heartbeat at least every lease ttl / 3 whatever this
        says (agent.trackerlink), since their heartbeats keep their leases.
        """
        base = self.config.agent_ttl / 3
        rate = self.config.heartbeat_rate
        if rate <= 0:
            return base
        now = self.clock.now()
        if self._fleet_count is None or self._fleet_count[0] + FLEET_COUNT_SECONDS <= now:
            self._fleet_count = (now, await self.store.count_agents(now))
        return min(max(base, self._fleet_count[1] / rate), max(base, MAX_HEARTBEAT_INTERVAL))

    async def heartbeat(self, agent: AgentInfo, key: str) -> HeartbeatReply:
        check_key(key)
        interval = await self.heartbeat_interval()
        # Three intervals: one lost heartbeat never makes a live agent look gone.
        ttl = max(self.config.agent_ttl, 3 * interval)
        now = self.clock.now()
        status = await self.store.bind_agent(agent, key, now, now + ttl)
        if status == "conflict":
            raise Forbidden(f"agent {agent.agent_id} is registered under another key")
        if status == "new":
            log.info(
                "agent registered agent=%s zone=%s region=%s role=%s",
                agent.agent_id,
                agent.zone,
                agent.region,
                agent.role,
            )
        return HeartbeatReply(
            registered=status == "new",
            reannounce=status == "new",
            agent_ttl=ttl,
            heartbeat_interval=interval,
            lease_ttl=self.config.lease_ttl,
        )

    async def announce(
        self,
        agent_id: str,
        key: str,
        digest: str,
        state: str = "holding",
        *,
        progress_bytes: int = 0,
        total_bytes: int = 0,
    ) -> None:
        item = Announcement.from_json(
            {
                "digest": digest,
                "state": state,
                "progress_bytes": progress_bytes,
                "total_bytes": total_bytes,
            }
        )
        await self.announce_many(agent_id, key, [item])

    async def announce_many(self, agent_id: str, key: str, items: Sequence[Announcement]) -> None:
        """Record several holdings at once (an agent re-announcing its cache after start-up)."""
        if len(items) > self.config.max_announce:
            raise InvalidRequest(f"at most {self.config.max_announce} announcements per request")
        rec = await self.authenticate(agent_id, key)
        now = self.clock.now()
        held = await self.store.holding_count(agent_id)
        if held + len(items) > MAX_HOLDINGS_PER_AGENT:
            raise InvalidRequest(f"an agent may hold at most {MAX_HOLDINGS_PER_AGENT} layers")
        await self.store.put_holdings(
            agent_id,
            [
                (a.digest, Holding(agent_id, a.state, a.progress_bytes, a.total_bytes, now))
                for a in items
            ],
        )
        region = rec.info.region
        # Progress keeps a cold-fetch lease alive, and so does the complete copy: the lease
        # holder stays the region's root for lease_ttl more. Releasing it at once let a
        # lookup that read the holders just before this announce and asks for the lease just
        # after it (one round trip later, long under load) win a fresh lease and fetch the
        # layer from the upstream again: bench.fleet_sim saw a quarter of the regions fetch
        # a layer twice. Now such a lookup is handed this holder as the lease holder.
        done = [a.digest for a in items if a.state == "holding"]
        until = now + self.config.lease_ttl
        for a in items:
            if a.upstream:
                # Fetching from the upstream: keep the lease, or take it when nobody holds
                # it (after Redis came back empty, the region's next lookup would otherwise
                # start a second upstream fetch beside this one).
                lease = await self.store.acquire_lease(region, a.digest, agent_id, now, until)
                if lease.granted and lease.took_over:
                    log.info(
                        "lease claimed by its upstream fetcher digest=%s region=%s agent=%s",
                        a.digest,
                        region,
                        agent_id,
                    )
            elif a.state == "fetching" or len(done) <= _KEEP_LEASE_ITEMS:
                await self.store.renew_lease(region, a.digest, agent_id, now, until)
        if len(done) > _KEEP_LEASE_ITEMS:
            # A bulk announce is a cache re-announced after a restart, not fetches ending:
            # any lease it still names is stale, and one round trip ends them all.
            await self.store.release_leases(region, done, agent_id)

    async def withdraw(self, agent_id: str, key: str, digest: str) -> None:
        check_digest(digest)
        rec = await self.authenticate(agent_id, key)
        await self.store.remove_holding(agent_id, digest)
        await self.store.release_leases(rec.info.region, [digest], agent_id)

    def _check(self, agent_id: str, key: str, rec: AgentRecord | None, now: float) -> AgentRecord:
        if rec is None or not rec.alive(now):
            raise UnknownAgent(f"agent {agent_id} is not registered: send a heartbeat first")
        if not hmac.compare_digest(rec.key.encode(), key.encode()):
            raise Forbidden(f"agent {agent_id} is registered under another key")
        return rec

    async def lookup(
        self,
        agent_id: str,
        key: str,
        digest: str,
        named: Sequence[str] = (),
        *,
        assign: bool = False,
    ) -> LookupReply:
        """Peers for ``digest`` and what to do (fetch with the lease, wait, or use peers).

        ``named``: agent ids another agent pointed this one to (the children of a busy relay
        parent); each that is alive is handed out too, so an agent only ever dials addresses
        the tracker vouches for.

        ``assign``: the asker (a relay follower) wants a parent chosen for it: the tracker
        claims a free child slot in the region's tree of this digest (see
        ``TrackerStore.assign_parent``) and names it in ``parent``, first among ``peers``.
        Simultaneous askers get one slot each, so they line up in one chain in the order their
        claims land, instead of each walking a chain to its end.
        """
        check_digest(digest)
        if len(named) > MAX_NAMED:
            raise InvalidRequest(f"at most {MAX_NAMED} named agents per lookup")
        for other in named:
            check_agent_id(other)
        now = self.clock.now()
        # Bounded sample: a layer held by thousands costs a lookup no more than one held by
        # 64. The store samples the asker's region first (its complete copies, then its
        # fetchers), so a region's own holders are found however many hold it elsewhere.
        limit = self.config.max_candidates
        view: PeerView | None = None
        if self._one_step is not None:
            check_agent_id(agent_id)
            found, view = await self._one_step.lookup_view(agent_id, key, digest, now, limit)
            rec = self._check(agent_id, key, found, now)
        else:
            rec = await self.authenticate(agent_id, key)
        region = rec.info.region
        if view is None:
            # Only after a race with a re-registration on the fast path, or for plain stores.
            view = await self.store.peer_view(
                digest, count_lookup=True, limit=limit, asker=agent_id, region=region
            )
        bad = view.bad_peers
        candidates, region_holds = _candidates(view, agent_id, region, now)
        lease_holder: str | None = None
        if region_holds:
            action = "peers"
        else:
            lease = await self.store.acquire_lease(
                region, digest, agent_id, now, now + self.config.lease_ttl
            )
            lease_holder = lease.holder
            action = "fetch" if lease.granted else "wait"
            if lease.took_over:
                log.info("lease taken over digest=%s region=%s agent=%s", digest, region, agent_id)
        chosen = order_peers(rec.info, candidates, self.config.max_peers, self._rng)
        if action == "wait" and lease_holder and all(i.agent_id != lease_holder for i, _ in chosen):
            # Followers stream from the agent fetching upstream as its bytes arrive: hand it
            # out even before its first progress announcement reaches us.
            holder = await self.store.get_agent(lease_holder)
            if holder is not None and holder.alive(now) and lease_holder not in bad:
                chosen = [(holder.info, Holding(lease_holder, "fetching", 0, 0, now)), *chosen]
        parent: str | None = None
        if assign and action != "fetch":
            parent, chosen = await self._assign(
                region, digest, agent_id, candidates, chosen, lease_holder, now
            )
        chosen += await self._named(named, chosen, agent_id, bad, now)
        return LookupReply(
            action=action,  # type: ignore[arg-type]  # one of the three literals above
            peers=tuple(_peer(info, h) for info, h in chosen),
            metainfo=view.metainfo,
            lease_holder=lease_holder,
            retry_after=WAIT_RETRY if action == "wait" else 0.0,
            parent=parent,
        )

    async def _assign(
        self,
        region: str,
        digest: str,
        asker: str,
        candidates: list[tuple[AgentInfo, Holding]],
        chosen: list[tuple[AgentInfo, Holding]],
        lease_holder: str | None,
        now: float,
    ) -> tuple[str | None, list[tuple[AgentInfo, Holding]]]:
        """Claim a parent for ``asker`` among the region's holders and fetchers; the answer's
        peers with it first.

        Every candidate of the sample is offered, not just the handed-out few: a chain's free
        end is its least advanced member, which the hand-out order puts last. Complete copies
        first (they never wait on anyone), then the lease holder, then fetchers furthest along
        (nearer the root: less lag). Ties are shuffled so that several free holders share.
        """
        pairs = {i.agent_id: (i, h) for i, h in chosen}
        for info, h in candidates:
            if info.region == region:
                pairs.setdefault(info.agent_id, (info, h))
        rand = self._rng.random
        ranked = sorted(
            pairs.values(),
            key=lambda p: (
                p[1].state != "holding",
                p[0].agent_id != lease_holder,
                -p[1].progress_bytes,
                rand(),
            ),
        )
        offer = [
            (i.agent_id, h.state == "holding" or i.agent_id == lease_holder)
            for i, h in ranked
            if i.region == region
        ]
        parent = await self.store.assign_parent(
            region, digest, asker, offer, now, now + PARENT_TREE_TTL
        )
        if parent is None:
            return None, chosen
        first = pairs[parent]
        return parent, [first, *(p for p in chosen if p[0].agent_id != parent)]

    async def _named(
        self,
        named: Sequence[str],
        chosen: list[tuple[AgentInfo, Holding]],
        asker: str,
        bad: Collection[str],
        now: float,
    ) -> list[tuple[AgentInfo, Holding]]:
        """The live agents among ``named`` not handed out yet (nor the asker, nor bad)."""
        listed = {i.agent_id for i, _ in chosen}
        out: list[tuple[AgentInfo, Holding]] = []
        for other in named:
            if other in listed or other == asker or other in bad:
                continue
            rec_other = await self.store.get_agent(other)
            if rec_other is not None and rec_other.alive(now):
                listed.add(other)
                out.append((rec_other.info, Holding(other, "fetching", 0, 0, now)))
        return out

    async def report_bad_peer(self, agent_id: str, key: str, peer_id: str, digest: str) -> None:
        check_digest(digest)
        check_agent_id(peer_id)
        rec = await self.authenticate(agent_id, key)
        if peer_id == agent_id:
            raise InvalidRequest("an agent cannot report itself")
        if await self.store.get_agent(peer_id) is None:
            # Reports on ids nobody registered would only grow the tracker's state.
            raise NotFound(f"no agent {peer_id}")
        log.warning("bad peer reported digest=%s peer=%s by=%s", digest, peer_id, agent_id)
        now = self.clock.now()
        # One report leaves the peer out only for the reporter; several distinct reporters
        # leave it out for everyone; either way only for BAD_PEER_TTL.
        report = await self.store.add_bad_peer(digest, peer_id, agent_id, now, now + BAD_PEER_TTL)
        # A lease held by a peer that sends bad data or stopped answering is void: the next
        # asker in the region gets it, instead of every follower going upstream on its own.
        # A follower reports a stalled parent once, so one agent's first report on a layer
        # voids it; after that only BAD_PEER_QUORUM reporters do, so a rogue reporter moves a
        # layer's lease at most once per BAD_PEER_TTL, not at every report.
        if report.first or report.reporters >= BAD_PEER_QUORUM:
            await self.store.release_leases(rec.info.region, [digest], peer_id)
        # A relay child whose tracker-chosen parent failed it: that parent leaves the tree
        # (its own parent's slot frees), and the child's next lookup gets another.
        if await self.store.void_parent(rec.info.region, digest, agent_id, peer_id, now):
            log.info("parent voided digest=%s parent=%s by=%s", digest, peer_id, agent_id)

    # -- metainfo ---------------------------------------------------------------------------

    async def put_metainfo(
        self, agent_id: str, key: str, digest: str, total_size: int, segment: SegmentMeta
    ) -> Metainfo:
        check_digest(digest)
        if total_size < 1 or total_size > 1 << 50:
            raise InvalidRequest("total_size out of range")
        if segment.index >= MAX_SEGMENTS:
            raise InvalidRequest(f"segment index must be below {MAX_SEGMENTS}")
        if segment.length < 1 or segment.offset + segment.length > total_size:
            raise InvalidRequest("segment must be non-empty and lie within total_size")
        if not segment.torrent or len(segment.torrent) > self.config.max_torrent:
            raise InvalidRequest(f"torrent must be 1 to {self.config.max_torrent} bytes")
        await self.authenticate(agent_id, key)
        now = self.clock.now()
        current = await self.store.get_metainfo(digest)
        conflict = current is not None and _conflicts(current, total_size, segment)
        if current is not None and not conflict:
            held = sum(len(s.torrent) for s in current.segments if s.index != segment.index)
            if held + len(segment.torrent) > MAX_METAINFO_BYTES:
                raise InvalidRequest(f"metainfo of one layer is limited to {MAX_METAINFO_BYTES}")
        expires = now + METAINFO_TTL
        status = "conflict"
        if not conflict:
            status = await self.store.put_segment(
                digest, total_size, segment, now=now, expires=expires
            )
        if status == "conflict":
            # Someone published this layer differently, and the tracker cannot tell who is
            # right (pieces are verified by those who download them). The newer publisher's
            # metainfo replaces it, so a first writer, maybe a rogue one, never locks a digest.
            log.warning(
                "metainfo of digest=%s replaced by agent=%s: it conflicted", digest, agent_id
            )
            await self.store.put_segment(
                digest, total_size, segment, now=now, expires=expires, replace=True
            )
        meta = await self.store.get_metainfo(digest)
        if meta is None:
            raise Conflict(f"metainfo of {digest} changed while it was written; retry")
        return meta

    async def get_metainfo(self, digest: str) -> Metainfo:
        check_digest(digest)
        meta = await self.store.get_metainfo(digest)
        if meta is None:
            raise NotFound(f"no metainfo for {digest}")
        return meta

    # -- tag invalidation -------------------------------------------------------------------

    async def invalidate(self, image: str) -> Invalidation:
        """Ask every agent to forget what the tag ``image`` pointed to (next heartbeat)."""
        check_image(image)
        last = image.rsplit("/", 1)[-1]
        if "@" in image or ":" not in last:
            raise InvalidRequest(
                "name a tag (registry/repo:tag): a digest never changes, so there is nothing "
                "to invalidate"
            )
        inv = Invalidation(secrets.token_hex(8), image, self.clock.now())
        await self.store.put_invalidation(inv)
        log.info("tag invalidated image=%s id=%s", image, inv.id)
        return inv

    async def invalidations(self, after: float) -> list[Invalidation]:
        """Invalidations newer than ``after`` (a ``created`` an agent saw last), oldest first."""
        return [i for i in await self.store.invalidations() if i.created > after]

    # -- preheat ----------------------------------------------------------------------------

    async def create_preheat(
        self,
        image: str,
        scope: str = "seeds",
        zone: str | None = None,
        region: str | None = None,
    ) -> str:
        return (await self.create_preheats([image], scope, zone, region))[0]

    async def create_preheats(
        self,
        images: Sequence[str],
        scope: str = "seeds",
        zone: str | None = None,
        region: str | None = None,
    ) -> list[str]:
        """One job per image; everything is validated before the first job is stored."""
        for image in images:
            check_image(image)
        if scope not in ("seeds", "all"):
            raise InvalidRequest("scope must be seeds or all")
        for name, value in (("zone", zone), ("region", region)):
            if value is not None and not re.match(r"^[A-Za-z0-9._-]{1,63}$", value):
                raise InvalidRequest(f"{name} must be a label of A-Z a-z 0-9 . _ -")
        now = self.clock.now()
        await self._expire_jobs(now)
        if len(await self.store.list_jobs()) + len(images) > MAX_PREHEAT_JOBS:
            raise InvalidRequest(
                f"at most {MAX_PREHEAT_JOBS} preheat jobs at a time; older ones expire"
                f" after {self.config.preheat_ttl:g}s"
            )
        ids = []
        for image in images:
            # The scope literal was checked above.
            job = PreheatJob(secrets.token_hex(8), image, scope, zone, region, now)  # type: ignore[arg-type]
            await self.store.put_job(job)
            log.info("preheat job created id=%s image=%s scope=%s", job.id, image, scope)
            ids.append(job.id)
        return ids

    async def _expire_jobs(self, now: float) -> None:
        for job in await self.store.list_jobs():
            if job.created + self.config.preheat_ttl <= now:
                await self.store.delete_job(job.id)

    async def _live_seeds(self) -> list[AgentInfo]:
        now = self.clock.now()
        if self._seed_cache is None or self._seed_cache[0] + SEED_CACHE_SECONDS <= now:
            agents = await self.store.live_agents(now)
            self._seed_cache = (now, [r.info for r in agents if r.info.role == "seed"])
        return self._seed_cache[1]

    def _assigned(self, job: PreheatJob, info: AgentInfo, seeds: list[AgentInfo]) -> bool:
        if not _in_scope(job, info):
            return False
        if job.scope == "all" or info.role == "seed":
            return True
        # Scope "seeds" with no live seed in scope falls back to every agent in scope.
        return not any(_in_scope(job, s) for s in seeds)

    async def agent_tasks(self, agent_id: str, key: str) -> list[PreheatJob]:
        rec = await self.authenticate(agent_id, key)
        now = self.clock.now()
        jobs = [
            j for j in await self.store.list_jobs() if j.created + self.config.preheat_ttl > now
        ]
        if not jobs:
            return []
        seeds = await self._live_seeds() if rec.info.role != "seed" else []
        out = []
        for job in sorted(jobs, key=lambda j: j.created):
            if not self._assigned(job, rec.info, seeds):
                continue
            mine = [r for r in await self.store.reports(job.id) if r.agent_id == agent_id]
            if mine and mine[0].state in ("done", "failed"):
                continue
            out.append(job)
        return out

    async def report_preheat(
        self,
        agent_id: str,
        key: str,
        job_id: str,
        layers: Sequence[LayerProgress],
        state: str,
        *,
        error: str | None = None,
    ) -> None:
        if state not in REPORT_STATES:
            raise InvalidRequest("state must be running, done or failed")
        if len(layers) > MAX_PREHEAT_LAYERS:
            raise InvalidRequest(f"at most {MAX_PREHEAT_LAYERS} layers per report")
        if error is not None and len(error) > 1000:
            error = error[:1000]
        await self.authenticate(agent_id, key)
        if await self.store.get_job(job_id) is None:
            raise NotFound(f"no preheat job {job_id}")
        report = PreheatReport(agent_id, state, tuple(layers), error, self.clock.now())
        await self.store.put_report(job_id, report)

    async def preheat_status(self, job_id: str) -> dict[str, Any]:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no preheat job {job_id}")
        reports = {r.agent_id: r for r in await self.store.reports(job_id)}
        now = self.clock.now()
        live = [r.info for r in await self.store.live_agents(now)]
        seeds = [a for a in live if a.role == "seed"]
        targets = sorted({a.agent_id for a in live if self._assigned(job, a, seeds)} | set(reports))
        states = [reports[a].state if a in reports else "pending" for a in targets]
        reason = ""
        if not targets:
            waited = now - job.created
            where = describe_scope(job)
            if waited > self.no_agent_grace:
                # Pending forever would hide the mistake (a typo in --region, no seeds yet).
                overall = "no_agents"
                reason = f"no live agent in scope ({where}) within {self.no_agent_grace:.0f}s"
            else:
                overall = "pending"
                reason = f"no live agent in scope ({where}) yet"
        elif all(s == "pending" for s in states):
            overall = "pending"
            reason = (
                f"waiting for {len(targets)} agent(s) in scope to pick it up (they ask with "
                "every heartbeat)"
            )
        elif any(s in ("running", "pending") for s in states):
            overall = "running"
        elif any(s == "failed" for s in states):
            overall = "failed"
        else:
            overall = "done"
        # In the order agents report them, which is the manifest's; the config apart.
        blobs: dict[str, dict[str, Any]] = {}
        by_source: Counter[str] = Counter()
        for agent_id in targets:
            r = reports.get(agent_id)
            for lp in r.layers if r is not None else ():
                agg = blobs.setdefault(
                    lp.digest,
                    {
                        "digest": lp.digest,
                        "kind": lp.kind,
                        "size": lp.size,
                        "done_bytes": 0,
                        "agents_done": 0,
                        "sources": {},
                    },
                )
                agg["size"] = max(agg["size"], lp.size)
                agg["done_bytes"] += lp.done_bytes
                if lp.size and lp.done_bytes >= lp.size:
                    agg["agents_done"] += 1
                if lp.source:
                    agg["sources"][lp.source] = agg["sources"].get(lp.source, 0) + 1
                    by_source[lp.source] += lp.done_bytes
        layers = [b for b in blobs.values() if b["kind"] != "config"]
        config = next((b for b in blobs.values() if b["kind"] == "config"), None)
        return {
            **job.to_json(),
            "state": overall,
            "reason": reason,
            "config": config,
            "bytes_by_source": dict(by_source),
            "agents_done": [a for a in targets if a in reports and reports[a].state == "done"],
            "agents": [
                reports[a].to_json()
                if a in reports
                else {
                    "agent_id": a,
                    "state": "pending",
                    "layers": [],
                    "error": None,
                    "updated": None,
                }
                for a in targets
            ],
            "layers": layers,
        }

    @property
    def no_agent_grace(self) -> float:
        """A job with no live agent in scope this long after its creation ends as no_agents:
        long enough for every agent to have sent a heartbeat in between."""
        return 2 * self.config.agent_ttl

    # -- fleet ------------------------------------------------------------------------------

    async def fleet_summary(self) -> tuple[Counters, dict[str, int], dict[str, Counters]]:
        """Counter totals over every agent incarnation (also by region), live agents by role."""
        regions = await self.store.region_totals()
        totals = sum(regions.values(), Counters())
        self._sample(self.clock.now(), totals)
        agents = await self.store.live_agents(self.clock.now())
        roles = Counter(r.info.role for r in agents)
        return totals, {"peer": roles.get("peer", 0), "seed": roles.get("seed", 0)}, regions

    async def fleet(self) -> dict[str, Any]:
        now = self.clock.now()
        agents = await self.store.live_agents(now)
        regions = await self.store.region_totals()
        totals = sum(regions.values(), Counters())
        self._sample(now, totals)
        preheats = await self._recent_preheats()
        # The tracker sees digests only; preheat jobs are where it learns which image a
        # layer belongs to, so the page can say "team/app:2.0" instead of a bare digest.
        images = {
            layer["digest"]: job["image"] for job in reversed(preheats) for layer in job["layers"]
        }
        hottest = []
        for digest, lookups in await self.store.hottest(HOTTEST):
            view = await self.store.peer_view(digest, count_lookup=False)
            live = [h for h, r in view.holders if r is not None and r.alive(now)]
            size = view.metainfo.total_size if view.metainfo is not None else 0
            size = size or max((h.total_bytes for h in live), default=0)
            hottest.append(
                {
                    "digest": digest,
                    "image": images.get(digest),
                    "size": size,
                    "lookups": lookups,
                    "holders": sum(1 for h in live if h.state == "holding"),
                    "fetchers": sum(1 for h in live if h.state == "fetching"),
                }
            )
        zones = Counter(f"{r.info.region}/{r.info.zone}" for r in agents)
        moved = totals.peer_bytes + totals.upstream_bytes
        return {
            "agents": [
                {
                    "agent_id": r.info.agent_id,
                    "address": r.info.address,
                    "peer_port": r.info.peer_port,
                    "zone": r.info.zone,
                    "region": r.info.region,
                    "role": r.info.role,
                    "load": r.info.load,
                    "free_bytes": r.info.free_bytes,
                    "last_seen": r.last_seen,
                    "counters": r.info.counters.to_json(),
                }
                for r in sorted(agents, key=lambda r: r.info.agent_id)
            ],
            "zones": [
                {"region": k.split("/", 1)[0], "zone": k.split("/", 1)[1], "agents": n}
                for k, n in sorted(zones.items())
            ],
            "hottest": hottest,
            "totals": totals.to_json(),
            "savings_ratio": totals.peer_bytes / moved if moved else 0.0,
            # Since the fleet began, including agents gone since: "each region pulls once".
            "regions": [
                {
                    "region": region,
                    "upstream_bytes": c.upstream_bytes,
                    "peer_bytes": c.peer_bytes,
                    "savings_ratio": (
                        c.peer_bytes / (c.peer_bytes + c.upstream_bytes)
                        if c.peer_bytes + c.upstream_bytes
                        else 0.0
                    ),
                }
                for region, c in sorted(regions.items())
            ],
            "now": now,
            "history": [
                {"time": t, "upstream_bytes": u, "peer_bytes": p} for t, u, p in self._history
            ],
            "preheats": preheats,
        }

    def _sample(self, now: float, totals: Counters) -> None:
        """One point of the page's chart per heartbeat interval, whoever asks first."""
        spacing = self.config.agent_ttl / 3
        if self._history and now - self._history[-1][0] < spacing:
            return
        self._history.append((now, totals.upstream_bytes, totals.peer_bytes))

    async def _recent_preheats(self) -> list[dict[str, Any]]:
        jobs = sorted(await self.store.list_jobs(), key=lambda j: j.created, reverse=True)
        out = []
        for job in jobs[:PAGE_JOBS]:
            try:
                out.append(await self.preheat_status(job.id))
            except NotFound:
                continue  # expired between the listing and now
        return out

    # -- upkeep -----------------------------------------------------------------------------

    async def prune(self) -> int:
        removed = await self.store.prune(self.clock.now())
        if removed:
            log.info("pruned expired agents count=%d", removed)
        return removed

    async def maintain(self, interval: float | None = None) -> None:
        """Prune expired agents forever; run it as a task beside the server or embedded tracker.

        Correctness does not depend on it (every answer filters by expiry); it bounds memory.
        """
        period = interval if interval is not None else max(self.config.agent_ttl / 2, 0.1)
        while True:
            await asyncio.sleep(period)
            try:
                await self.prune()
            except StoreUnavailable as exc:
                log.warning("prune failed: %s", exc)


def _candidates(
    view: PeerView, asker: str, region: str, now: float
) -> tuple[list[tuple[AgentInfo, Holding]], bool]:
    """The live holders and fetchers of a view other than the asker and peers reported bad,
    and whether one of them holds a complete copy in the asker's region."""
    candidates: list[tuple[AgentInfo, Holding]] = []
    region_holds = False
    for h, r in view.holders:
        if r is None or r.expires <= now:
            continue
        if h.agent_id == asker or h.agent_id in view.bad_peers:
            continue
        if r.info.region == region and h.state == "holding":
            region_holds = True
        candidates.append((r.info, h))
    return candidates, region_holds


def _peer(info: AgentInfo, h: Holding) -> Peer:
    return Peer(
        agent_id=info.agent_id,
        address=info.address,
        port=info.peer_port,
        zone=info.zone,
        region=info.region,
        role=info.role,
        state=h.state,
        progress_bytes=h.progress_bytes,
        total_bytes=h.total_bytes,
    )
