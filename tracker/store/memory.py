"""The in-process store: one replica (or the agent's embedded tracker).

Every method body runs without an ``await`` in between reads and writes, so each one is atomic
on the event loop, which is what the contract's atomicity asks for.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Sequence
from typing import TypeVar

from core.wire import AgentInfo, Counters, Invalidation, Metainfo, PreheatJob, SegmentMeta
from tracker.model import AgentRecord, Holding, LeaseResult, PreheatReport
from tracker.store.base import (
    BAD_PEER_QUORUM,
    MAX_HOT,
    MAX_INVALIDATIONS,
    MAX_RETIRED_INCARNATIONS,
    MAX_TAILS_TRIED,
    MAX_TREE_WALK,
    BadReport,
    BindStatus,
    PeerView,
    PutStatus,
)

T = TypeVar("T")

# Bad-peer reports kept at most (oldest digests dropped first); they also expire.
MAX_BAD_REPORTS = 100_000
# Regions the retired totals are kept for; pruned agents of further regions count as OTHER.
MAX_RETIRED_REGIONS = 1000
OTHER_REGION = "(other)"


def same_segment(a: SegmentMeta, b: SegmentMeta) -> bool:
    """One content: torrent files of it may differ in creation date, never in info hash."""
    return (a.offset, a.length, a.info_hash) == (b.offset, b.length, b.info_hash)


def counters_minus(a: Counters, b: Counters) -> Counters:
    return Counters(**{k: max(0, v - getattr(b, k)) for k, v in a.to_json().items()})


def incarnation(agent_id: str, key: str) -> str:
    """Names one run of an agent without exposing its key."""
    return f"{agent_id}/{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def sample(rng: random.Random, seq: Sequence[T], k: int) -> list[T]:
    """A uniform random ``k``-subset of ``seq`` (in no particular order), ``k <= len(seq)``.

    ``random.sample`` draws each index through Python-level ``_randbelow``; for a small ``k``
    against a few hundred holders, rejecting repeats of ``int(random() * n)`` costs a third.
    """
    n = len(seq)
    if 2 * k > n:
        return rng.sample(seq, k)
    rand = rng.random
    picked: set[int] = set()
    while len(picked) < k:
        picked.add(int(rand() * n))
    return [seq[i] for i in picked]


class ParentTree:
    """One (region, digest)'s relay links: child -> parent and parent -> child."""

    __slots__ = ("child_of", "expires", "parent_of", "tails")

    def __init__(self, expires: float) -> None:
        self.parent_of: dict[str, str] = {}
        self.child_of: dict[str, str] = {}
        # Members given no child yet (their slot may still be taken by a walker: checked).
        self.tails: set[str] = set()
        self.expires = expires

    def below(self, node: str, ancestor: str) -> bool:
        """Whether ``ancestor`` is on ``node``'s path to the root (``node`` itself included)."""
        for _ in range(MAX_TREE_WALK):
            if node == ancestor:
                return True
            up = self.parent_of.get(node)
            if up is None:
                return False
            node = up
        return False

    def unlink(self, child: str) -> None:
        old = self.parent_of.pop(child, None)
        if old is not None and self.child_of.get(old) == child:
            del self.child_of[old]


class MemoryStore:
    def __init__(self) -> None:
        self._agents: dict[str, AgentRecord] = {}
        self._holders: dict[str, dict[str, Holding]] = defaultdict(dict)
        self._agent_digests: dict[str, set[str]] = defaultdict(set)
        self._counters: dict[str, tuple[str, Counters]] = {}  # incarnation -> (region, counts)
        self._leases: dict[tuple[str, str], tuple[str, float]] = {}
        self._trees: dict[tuple[str, str], ParentTree] = {}
        self._lookups: Counter[str] = Counter()
        # digest -> reported peer -> reporter -> expires
        self._bad: dict[str, dict[str, dict[str, float]]] = {}
        self._bad_reports = 0
        self._bad_counts: Counter[str] = Counter()
        self._meta: dict[str, tuple[int, dict[int, SegmentMeta]]] = {}
        self._meta_expires: dict[str, float] = {}
        # Counters of agents that are gone, and (for a while) of which incarnations.
        self._retired: dict[str, Counters] = {}  # region -> counts of agents pruned
        self._retired_inc: OrderedDict[str, tuple[str, Counters]] = OrderedDict()
        self._jobs: dict[str, PreheatJob] = {}
        self._invalidations: deque[Invalidation] = deque(maxlen=MAX_INVALIDATIONS)
        self._reports: dict[str, dict[str, PreheatReport]] = defaultdict(dict)
        # Per digest, its holders' ids as a sequence to sample from; dropped on any change to
        # that digest's holders (rare next to lookups), rebuilt by the next lookup. Ids only:
        # strings are not tracked by the garbage collector, pairs would add 500k objects to
        # every full collection (long pauses, seen as p99 latency).
        self._holder_seq: dict[str, tuple[str, ...]] = {}
        # (region, digest, complete?) -> holder ids: the region-first part of a lookup. An
        # agent's holdings are indexed under the region of its record (moved when that
        # changes); the sequences to sample from are cached like _holder_seq.
        self._by_region: dict[tuple[str, str, bool], set[str]] = {}
        self._region_seq: dict[tuple[str, str, bool], tuple[str, ...]] = {}
        # Sampling holders needs spread, not unpredictability.
        self._rng = random.Random()  # noqa: S311

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def bind_agent(self, info: AgentInfo, key: str, now: float, expires: float) -> BindStatus:
        cur = self._agents.get(info.agent_id)
        status: BindStatus = "new"
        if cur is not None:
            if cur.key != key:
                if cur.alive(now):
                    return "conflict"
                self._forget_holdings(info.agent_id, cur.info.region)
                # That incarnation can never come back: its id now has another key.
                self._retire(incarnation(info.agent_id, cur.key), remember=False)
            elif cur.alive(now):
                status = "renewed"
            if cur.key == key and cur.info.region != info.region:
                # Its holdings stay (same incarnation) and are found in its new region.
                self._move_region(info.agent_id, cur.info.region, info.region)
        self._agents[info.agent_id] = AgentRecord(info, key, now, expires)
        inc = incarnation(info.agent_id, key)
        came_back = self._retired_inc.pop(inc, None)
        if came_back is not None:
            # Pruned, then back under the same key (agents keep their key across restarts):
            # its counts count once, live again.
            region, counts = came_back
            self._retired[region] = counters_minus(self._retired.get(region, Counters()), counts)
        self._counters[inc] = (info.region, info.counters)
        return status

    def _retire(self, inc: str, *, remember: bool) -> None:
        entry = self._counters.pop(inc, None)
        if entry is None:
            return
        region, c = entry
        if region not in self._retired and len(self._retired) >= MAX_RETIRED_REGIONS:
            # Region labels come from agents: a rogue could invent one per heartbeat.
            region = OTHER_REGION
        self._retired[region] = self._retired.get(region, Counters()) + c
        if remember:
            self._retired_inc[inc] = (region, c)
            while len(self._retired_inc) > MAX_RETIRED_INCARNATIONS:
                self._retired_inc.popitem(last=False)

    def _forget_holdings(self, agent_id: str, region: str) -> None:
        for digest in self._agent_digests.pop(agent_id, set()):
            self._drop_holding(agent_id, digest, region)

    def _drop_holding(self, agent_id: str, digest: str, region: str) -> None:
        self._holder_seq.pop(digest, None)
        holders = self._holders.get(digest)
        if holders is None:
            return
        held = holders.pop(agent_id, None)
        if not holders:
            del self._holders[digest]
        if held is not None:
            self._unindex(region, digest, agent_id, held.state == "holding")

    def _index(self, region: str, digest: str, agent_id: str, complete: bool) -> None:
        ikey = (region, digest, complete)
        self._by_region.setdefault(ikey, set()).add(agent_id)
        self._region_seq.pop(ikey, None)

    def _unindex(self, region: str, digest: str, agent_id: str, complete: bool) -> None:
        ikey = (region, digest, complete)
        ids = self._by_region.get(ikey)
        if ids is None:
            return
        ids.discard(agent_id)
        self._region_seq.pop(ikey, None)
        if not ids:
            del self._by_region[ikey]

    def _move_region(self, agent_id: str, old: str, new: str) -> None:
        for digest in self._agent_digests.get(agent_id, ()):
            held = self._holders.get(digest, {}).get(agent_id)
            if held is not None:
                complete = held.state == "holding"
                self._unindex(old, digest, agent_id, complete)
                self._index(new, digest, agent_id, complete)

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    async def live_agents(self, now: float) -> list[AgentRecord]:
        return [r for r in self._agents.values() if r.alive(now)]

    async def count_agents(self, now: float) -> int:
        return sum(1 for r in self._agents.values() if r.alive(now))

    async def prune(self, now: float) -> int:
        dead = [aid for aid, r in self._agents.items() if not r.alive(now)]
        for aid in dead:
            rec = self._agents.pop(aid)
            self._forget_holdings(aid, rec.info.region)
            self._retire(incarnation(aid, rec.key), remember=True)
            self._bad_counts.pop(aid, None)
        for lkey in [k for k, (_, until) in self._leases.items() if until <= now]:
            del self._leases[lkey]
        for tkey in [k for k, tree in self._trees.items() if tree.expires <= now]:
            del self._trees[tkey]
        for digest in [d for d, exp in self._meta_expires.items() if exp <= now]:
            del self._meta_expires[digest]
            self._meta.pop(digest, None)
        for digest in list(self._bad):
            peers = self._bad[digest]
            for peer in list(peers):
                reporters = peers[peer]
                for reporter in [r for r, exp in reporters.items() if exp <= now]:
                    del reporters[reporter]
                    self._bad_reports -= 1
                if not reporters:
                    del peers[peer]
            if not peers:
                del self._bad[digest]
        if len(self._lookups) > MAX_HOT:
            self._lookups = Counter(dict(self._lookups.most_common(MAX_HOT)))
        return len(dead)

    async def counter_totals(self) -> Counters:
        total = Counters()
        for c in self._retired.values():
            total = total + c
        for _, c in self._counters.values():
            total = total + c
        return total

    async def region_totals(self) -> dict[str, Counters]:
        out: dict[str, Counters] = dict(self._retired)
        for region, c in self._counters.values():
            out[region] = out.get(region, Counters()) + c
        return out

    async def put_holdings(self, agent_id: str, holdings: Sequence[tuple[str, Holding]]) -> None:
        rec = self._agents.get(agent_id)
        for digest, holding in holdings:
            self._holder_seq.pop(digest, None)
            before = self._holders[digest].get(agent_id)
            self._holders[digest][agent_id] = holding
            self._agent_digests[agent_id].add(digest)
            if rec is None:
                continue  # unknown agents are never handed out; nothing to index
            complete = holding.state == "holding"
            if before is not None and (before.state == "holding") != complete:
                self._unindex(rec.info.region, digest, agent_id, not complete)
            self._index(rec.info.region, digest, agent_id, complete)

    async def remove_holding(self, agent_id: str, digest: str) -> None:
        rec = self._agents.get(agent_id)
        self._drop_holding(agent_id, digest, rec.info.region if rec is not None else "")
        self._agent_digests.get(agent_id, set()).discard(digest)

    async def holding_count(self, agent_id: str) -> int:
        return len(self._agent_digests.get(agent_id, ()))

    async def usage(self) -> dict[str, int]:
        return {
            "agents": len(self._agents),
            "holder_digests": len(self._holders),
            "region_index": len(self._by_region),
            "counters": len(self._counters),
            "retired_incarnations": len(self._retired_inc),
            "leases": len(self._leases),
            "parent_trees": len(self._trees),
            "lookups": len(self._lookups),
            "bad_digests": len(self._bad),
            "bad_reports": self._bad_reports,
            "bad_counts": len(self._bad_counts),
            "metainfo": len(self._meta),
            "metainfo_bytes": sum(
                len(seg.torrent) for _, segs in self._meta.values() for seg in segs.values()
            ),
            "jobs": len(self._jobs),
        }

    def _bad_for(self, digest: str, asker: str) -> frozenset[str]:
        peers = self._bad.get(digest)
        if not peers:
            return frozenset()
        return frozenset(
            peer
            for peer, reporters in peers.items()
            if len(reporters) >= BAD_PEER_QUORUM or (asker and asker in reporters)
        )

    async def lookup_view(
        self, agent_id: str, key: str, digest: str, now: float, limit: int
    ) -> tuple[AgentRecord | None, PeerView | None]:
        """``AuthenticatedLookup``: the asker is known here, so its own reports count."""
        rec = self._agents.get(agent_id)
        if rec is None or not rec.alive(now) or not hmac.compare_digest(rec.key, key):
            return rec, None
        view = await self.peer_view(
            digest, count_lookup=True, limit=limit, asker=agent_id, region=rec.info.region
        )
        return rec, view

    async def peer_view(
        self,
        digest: str,
        *,
        count_lookup: bool,
        limit: int = 1 << 30,
        asker: str = "",
        region: str | None = None,
    ) -> PeerView:
        if count_lookup:
            self._lookups[digest] += 1
        holders = self._holders.get(digest)
        if not holders:
            return PeerView((), self._bad_for(digest, asker), self._metainfo(digest))
        seq = self._holder_seq.get(digest)
        if seq is None:
            seq = self._holder_seq[digest] = tuple(holders)
        chosen: Sequence[str] = seq
        if len(seq) > limit:
            if region is None:
                chosen = sample(self._rng, seq, limit)
            else:
                chosen = self._region_first(digest, region, seq, limit)
        agents = self._agents
        return PeerView(
            holders=tuple([(holders[aid], agents.get(aid)) for aid in chosen]),
            bad_peers=self._bad_for(digest, asker),
            metainfo=self._metainfo(digest),
        )

    def _region_first(
        self, digest: str, region: str, fleet: tuple[str, ...], limit: int
    ) -> list[str]:
        """``limit`` ids: the region's complete copies, its fetchers, then the fleet."""
        picked: dict[str, None] = {}
        for complete, share in ((True, limit // 2), (False, limit // 4)):
            ikey = (region, digest, complete)
            ids = self._by_region.get(ikey)
            if not ids:
                continue
            seq = self._region_seq.get(ikey)
            if seq is None:
                seq = self._region_seq[ikey] = tuple(ids)
            picked.update(dict.fromkeys(sample(self._rng, seq, share) if len(seq) > share else seq))
        # Drawn as many as the limit: at most len(picked) of them are already in.
        for aid in sample(self._rng, fleet, limit):
            if len(picked) >= limit:
                break
            picked.setdefault(aid)
        return list(picked)

    async def hottest(self, limit: int) -> list[tuple[str, int]]:
        return self._lookups.most_common(limit)

    async def acquire_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> LeaseResult:
        cur = self._leases.get((region, digest))
        took_over = False
        if cur is not None:
            holder, until = cur
            if holder == agent_id and until > now:
                return LeaseResult(True, agent_id)
            if holder != agent_id:
                rec = self._agents.get(holder)
                if until > now and rec is not None and rec.alive(now):
                    return LeaseResult(False, holder)
                took_over = True
        self._leases[(region, digest)] = (agent_id, expires)
        return LeaseResult(True, agent_id, took_over)

    async def renew_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> bool:
        cur = self._leases.get((region, digest))
        if cur is None or cur[0] != agent_id:
            return False
        self._leases[(region, digest)] = (agent_id, expires)
        return True

    async def release_leases(self, region: str, digests: Sequence[str], agent_id: str) -> None:
        for digest in digests:
            cur = self._leases.get((region, digest))
            if cur is not None and cur[0] == agent_id:
                del self._leases[(region, digest)]

    async def add_bad_peer(
        self, digest: str, peer_id: str, reporter: str, now: float, expires: float
    ) -> BadReport:
        peers = self._bad.setdefault(digest, {})
        first = not any(r.get(reporter, now) > now for r in peers.values())
        reporters = peers.setdefault(peer_id, {})
        others = sum(1 for who, until in reporters.items() if who != reporter and until > now)
        if reporter not in reporters:
            self._bad_counts[peer_id] += 1
            self._bad_reports += 1
        reporters[reporter] = expires
        while self._bad_reports > MAX_BAD_REPORTS:
            oldest = next(iter(self._bad))
            self._bad_reports -= sum(len(r) for r in self._bad.pop(oldest).values())
        return BadReport(others + 1, first)

    async def assign_parent(
        self,
        region: str,
        digest: str,
        child: str,
        candidates: Sequence[tuple[str, bool]],
        now: float,
        expires: float,
    ) -> str | None:
        tree = self._trees.get((region, digest))
        if tree is None or tree.expires <= now:
            tree = self._trees[(region, digest)] = ParentTree(expires)
        tails = [
            (t, False)
            for t in sample(self._rng, sorted(tree.tails), min(len(tree.tails), MAX_TAILS_TRIED))
        ]
        for cand, rooted in [*candidates, *tails]:
            if cand == child or not (rooted or cand in tree.parent_of):
                continue
            rec = self._agents.get(cand)
            if rec is None or not rec.alive(now):
                tree.tails.discard(cand)
                continue
            taken = tree.child_of.get(cand)
            if (
                taken is not None
                and taken != child
                and self._claim_holds(tree, digest, taken, cand, now)
            ):
                continue
            if tree.below(cand, child):
                continue
            tree.unlink(child)
            tree.parent_of[child] = cand
            tree.child_of[cand] = child
            tree.tails.discard(cand)
            tree.tails.add(child)
            tree.expires = max(tree.expires, expires)
            return cand
        return None

    def _claim_holds(
        self, tree: ParentTree, digest: str, child: str, parent: str, now: float
    ) -> bool:
        rec = self._agents.get(child)
        held = self._holders.get(digest, {}).get(child)
        return (
            rec is not None
            and rec.alive(now)
            and held is not None
            and held.state == "fetching"
            and tree.parent_of.get(child) == parent
        )

    async def void_parent(
        self, region: str, digest: str, reporter: str, peer: str, now: float
    ) -> bool:
        tree = self._trees.get((region, digest))
        if tree is None or tree.expires <= now or tree.parent_of.get(reporter) != peer:
            return False
        tree.unlink(peer)
        tree.child_of.pop(peer, None)
        tree.parent_of.pop(reporter, None)
        tree.tails.discard(peer)
        tree.tails.discard(reporter)
        return True

    async def bad_peer_counts(self) -> dict[str, int]:
        return dict(self._bad_counts)

    async def put_segment(
        self,
        digest: str,
        total_size: int,
        segment: SegmentMeta,
        *,
        now: float = 0.0,
        expires: float = float("inf"),
        replace: bool = False,
    ) -> PutStatus:
        cur = self._meta.get(digest)
        if cur is None or replace:
            self._meta[digest] = (total_size, {segment.index: segment})
            self._meta_expires[digest] = expires
            return "stored"
        size, segments = cur
        if size != total_size:
            return "conflict"
        old = segments.get(segment.index)
        if old is not None and not same_segment(old, segment):
            return "conflict"
        self._meta_expires[digest] = expires
        if old is not None:
            return "same"
        segments[segment.index] = segment
        return "stored"

    async def get_metainfo(self, digest: str) -> Metainfo | None:
        return self._metainfo(digest)

    def _metainfo(self, digest: str) -> Metainfo | None:
        cur = self._meta.get(digest)
        if cur is None:
            return None
        size, segments = cur
        return Metainfo(digest, size, tuple(segments[i] for i in sorted(segments)))

    async def put_job(self, job: PreheatJob) -> None:
        self._jobs[job.id] = job

    async def get_job(self, job_id: str) -> PreheatJob | None:
        return self._jobs.get(job_id)

    async def list_jobs(self) -> list[PreheatJob]:
        return list(self._jobs.values())

    async def delete_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._reports.pop(job_id, None)

    async def put_report(self, job_id: str, report: PreheatReport) -> None:
        self._reports[job_id][report.agent_id] = report

    async def reports(self, job_id: str) -> list[PreheatReport]:
        return list(self._reports.get(job_id, {}).values())

    async def put_invalidation(self, inv: Invalidation) -> None:
        self._invalidations.append(inv)

    async def invalidations(self) -> list[Invalidation]:
        return list(self._invalidations)
