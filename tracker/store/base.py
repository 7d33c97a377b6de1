"""The contract between the tracker's logic and the place its state lives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from core.wire import AgentInfo, Counters, Invalidation, Metainfo, PreheatJob, SegmentMeta
from tracker.model import AgentRecord, Holding, LeaseResult, PreheatReport

BindStatus = Literal["new", "renewed", "conflict"]
PutStatus = Literal["stored", "same", "conflict"]

# A peer reported bad for a digest is left out of everyone's answers for it only once this many
# distinct agents reported it (one token holder must not silence another agent); the reporter
# itself stops getting it after its own report.
BAD_PEER_QUORUM = 2
# Lookup counts are kept for at most this many digests (the busiest); prune trims the rest.
MAX_HOT = 10_000
# Dead agents' counters are folded into one retired total; the last this many are remembered
# so an agent that comes back under the same key is not counted twice.
MAX_RETIRED_INCARNATIONS = 10_000
# Tag invalidations kept for agents that were away (each agent applies each one once).
MAX_INVALIDATIONS = 1000
# Parent links followed upward to keep a newcomer from being placed below itself; a deeper
# cycle is refused by the relay parent itself (the asker is in its lineage).
MAX_TREE_WALK = 64
# Open ends of a tree (members given no child yet) tried per assignment beyond the caller's
# candidates: newcomers of one moment do not see each other in their peer views.
MAX_TAILS_TRIED = 16


@dataclass(frozen=True)
class BadReport:
    """What ``add_bad_peer`` found: ``reporters`` distinct agents now report this peer for this
    digest (this one included); ``first`` when the reporter had reported nobody for it yet."""

    reporters: int
    first: bool


@dataclass(frozen=True)
class PeerView:
    """Everything a lookup needs about one digest, read in one go.

    ``holders`` pairs each holding with its agent's record (None when the record is gone);
    records may be expired: the caller filters with ``AgentRecord.alive(now)``.
    """

    holders: tuple[tuple[Holding, AgentRecord | None], ...]
    # Peers to leave out of this answer: reported by ``BAD_PEER_QUORUM`` distinct agents, or
    # by the asker itself.
    bad_peers: frozenset[str]
    metainfo: Metainfo | None


class TrackerStore(Protocol):
    """Fleet state shared by every tracker replica using the same store.

    Time never comes from the store: every method that depends on it takes ``now`` (seconds,
    from the tracker's injected clock), so TTLs behave the same in tests and in production and
    replicas agree as long as their clocks do.

    Agents: ``bind_agent`` registers or refreshes an agent under the secret ``key`` it chose at
    start-up. An agent is alive while ``now < expires``. Binding an id that is alive under a
    different key returns ``"conflict"`` and changes nothing; binding an id that is absent or
    expired returns ``"new"`` and, when the key differs from the stored one, first forgets the
    previous incarnation's holdings (a restarted agent re-announces what it really has);
    refreshing a live binding returns ``"renewed"``. Counters are stored per incarnation
    (agent id and key) and kept after the agent leaves, so fleet totals never go backwards
    when agents leave (agents keep their counts across restarts, agent/counters.py);
    ``region_totals`` sums them by the region each incarnation last reported.
    ``prune`` deletes agents expired before ``now`` together with their holdings, folds their
    counters into a retired total per region (both totals include it), and drops whatever else
    has expired: leases, metainfo, bad-peer reports; it trims lookup counts to ``MAX_HOT``
    digests. Every per-key structure is thereby bounded by live agents or by a time to live;
    Redis keys that exist for a limited time also carry a Redis TTL as a backstop.

    Holdings: per digest, per agent, a state (``holding`` or ``fetching``) with progress.
    ``put_holdings`` overwrites, ``remove_holding`` deletes; neither checks liveness (the
    service authenticates first). Reads return expired agents' holdings until pruned.

    Leases: at most one holder per (region, digest). ``acquire_lease`` is atomic across
    replicas: it grants (and records ``expires``) when there is no lease, the lease has expired
    (``expires <= now``), its holder is not alive, or the asker already holds it; otherwise it
    returns the current holder, ungranted. A grant over somebody else's lease has
    ``took_over=True``. ``renew_lease`` moves ``expires`` only for the current holder;
    ``release_leases`` deletes only the caller's own leases.

    Metainfo: per digest, a total size and segments by index, kept until ``expires`` (moved by
    every put). ``put_segment`` is atomic per index: ``"stored"`` the first time, ``"same"``
    for a repeat with the same offset, length and info hash (torrent files of one content may
    differ in creation date), ``"conflict"`` (nothing written) when the index or the total
    size was published differently. With ``replace`` it always writes: the digest's metainfo
    starts over with just this segment, so no publisher can lock a digest by being first.

    ``peer_view`` returns every holder of the digest, or at most ``limit`` of them when there
    are more (so a lookup's cost is bounded however popular a layer is): with ``region``
    (the asker's) a uniform sample of up to ``limit // 2`` of that region's complete copies,
    then of up to ``limit // 4`` of its fetchers, then of the rest of the fleet up to
    ``limit`` (no holder twice); without, a uniform sample of the fleet. So a region's own
    holders are found however many hold the digest elsewhere. The per-region index behind it
    follows every change: announces (a fetcher becoming a holder moves), withdrawals, a new
    incarnation forgetting its holdings, a re-registration in another region (its holdings
    move with it) and prune.

    Lookup statistics and bad peers: ``peer_view(count_lookup=True)`` also counts a lookup for
    ``hottest``; ``add_bad_peer`` records one reporter's report on a peer for one digest until
    ``expires`` (see ``PeerView.bad_peers``; ``asker`` names who is looking), counts it once,
    and says what was on record (reports not expired at ``now``) as a ``BadReport``.

    ``holding_count`` is how many digests an agent announced (to cap them); ``usage`` the
    number of entries of each structure, for tests and diagnostics.

    Parent trees (tracker-chosen relay parents), per (region, digest): which agent streams
    the blob to which, one child per parent (chains). ``assign_parent`` is atomic across
    replicas: it walks ``candidates`` (agent id, rooted) in order and claims for ``child`` the
    first one with a free slot, returning its id (None when none has one). A candidate
    qualifies when it is not ``child``, is rooted (holds a complete copy, or is the lease
    holder fetching from the upstream) or was itself assigned a parent in this tree (so no
    chain grows below an agent with no source), and is not below ``child`` (parent links
    followed up to ``MAX_TREE_WALK`` hops). Its slot is free unless another agent's claim on
    it holds: that agent is alive at ``now``, its holding of ``digest`` is ``fetching`` and its
    own link still names this parent; so a slot frees by itself when its child completes,
    withdraws, dies or is assigned elsewhere. Claiming drops ``child``'s previous link. When
    no candidate has a free slot, up to ``MAX_TAILS_TRIED`` of the tree's open ends (members
    given no child yet, alive at ``now``) are tried the same way: newcomers that ask at the
    same moment are not in each other's candidates, yet each must find the end the previous
    one made. The tree is forgotten at ``expires`` (moved by each assignment) and by prune
    after it.
    ``void_parent`` takes ``peer`` out of the tree when it is ``reporter``'s parent there
    (``reporter`` says it failed): ``peer``'s own link and slot go, so ``peer``'s parent gets
    a free slot and ``peer`` is no parent for newcomers until it is assigned again; returns
    whether anything changed.

    Preheat: jobs by id, and per job the latest report of each agent.

    Tag invalidations: ``put_invalidation`` keeps the newest ``MAX_INVALIDATIONS``;
    ``invalidations`` returns them oldest first.

    Failures of the backing service raise ``core.trackererrors.StoreUnavailable``.
    """

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def bind_agent(
        self, info: AgentInfo, key: str, now: float, expires: float
    ) -> BindStatus: ...

    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    async def live_agents(self, now: float) -> list[AgentRecord]: ...

    async def count_agents(self, now: float) -> int:
        """How many agents are alive at ``now`` (cheaper than ``live_agents``)."""
        ...

    async def prune(self, now: float) -> int: ...

    async def counter_totals(self) -> Counters: ...

    async def region_totals(self) -> dict[str, Counters]: ...

    async def put_holdings(
        self, agent_id: str, holdings: Sequence[tuple[str, Holding]]
    ) -> None: ...

    async def remove_holding(self, agent_id: str, digest: str) -> None: ...

    async def peer_view(
        self,
        digest: str,
        *,
        count_lookup: bool,
        limit: int = 1 << 30,
        asker: str = "",
        region: str | None = None,
    ) -> PeerView: ...

    async def holding_count(self, agent_id: str) -> int: ...

    async def usage(self) -> dict[str, int]: ...

    async def hottest(self, limit: int) -> list[tuple[str, int]]: ...

    async def acquire_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> LeaseResult: ...

    async def renew_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> bool: ...

    async def release_leases(self, region: str, digests: Sequence[str], agent_id: str) -> None: ...

    async def add_bad_peer(
        self, digest: str, peer_id: str, reporter: str, now: float, expires: float
    ) -> BadReport: ...

    async def bad_peer_counts(self) -> dict[str, int]: ...

    async def assign_parent(
        self,
        region: str,
        digest: str,
        child: str,
        candidates: Sequence[tuple[str, bool]],
        now: float,
        expires: float,
    ) -> str | None: ...

    async def void_parent(
        self, region: str, digest: str, reporter: str, peer: str, now: float
    ) -> bool: ...

    async def put_segment(
        self,
        digest: str,
        total_size: int,
        segment: SegmentMeta,
        *,
        now: float = 0.0,
        expires: float = float("inf"),
        replace: bool = False,
    ) -> PutStatus: ...

    async def get_metainfo(self, digest: str) -> Metainfo | None: ...

    async def put_job(self, job: PreheatJob) -> None: ...

    async def get_job(self, job_id: str) -> PreheatJob | None: ...

    async def list_jobs(self) -> list[PreheatJob]: ...

    async def delete_job(self, job_id: str) -> None: ...

    async def put_report(self, job_id: str, report: PreheatReport) -> None: ...

    async def reports(self, job_id: str) -> list[PreheatReport]: ...

    async def put_invalidation(self, inv: Invalidation) -> None: ...

    async def invalidations(self) -> list[Invalidation]: ...


@runtime_checkable
class AuthenticatedLookup(Protocol):
    """An optional capability beside ``TrackerStore``: a lookup's reads in one step.

    ``lookup_view`` returns the asker's record (None when absent) and, only when that agent is
    alive at ``now`` and registered under ``key``, ``peer_view(digest, count_lookup=True,
    limit=limit, asker=agent_id, region=<the asker's region>)``; otherwise the view is None
    and no lookup is counted. The caller still checks the record itself. A store that can do
    this in one round trip (Redis) offers it; the tracker falls back to ``get_agent`` then
    ``peer_view`` for stores that do not.
    """

    async def lookup_view(
        self, agent_id: str, key: str, digest: str, now: float, limit: int
    ) -> tuple[AgentRecord | None, PeerView | None]: ...
