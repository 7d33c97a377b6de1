"""The agent's link to the tracker: heartbeats, holdings, preheat jobs, and the Coordinator
the peer layer asks for peers and segment metainfo.

Every tracker failure becomes CoordinatorUnavailable for the peer layer, which then behaves
as a plain mirror: the tracker being down never fails a pull. Nothing about clients (no
credential, no repository) is ever sent to the tracker; only digests and byte counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from agent.preheat import ProgressHook
from core.tasks import Supervisor
from core.trackerclient import TrackerClient
from core.trackererrors import (
    Forbidden,
    StoreUnavailable,
    TrackerError,
    TrackerUnavailable,
    Unauthorized,
    UnknownAgent,
)
from core.wire import AgentInfo, Announcement, LayerProgress, Peer, PreheatJob, SegmentMeta

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PreheatRunner = Callable[[str, ProgressHook], Awaitable[list[LayerProgress]]]

# A failure that persists is logged again this often, not at every heartbeat.
_REPEAT_WARNING_SECONDS = 300.0
# The heartbeat interval a tracker may set (it grows with the fleet) is taken within these.
MIN_HEARTBEAT_INTERVAL = 0.2
MAX_HEARTBEAT_INTERVAL = 60.0


@dataclass
class Lookup:
    """The tracker's answer for one digest, as the agent uses it."""

    action: str  # "fetch": we hold the lease, go upstream; "wait"/"peers": get it from peers
    peers: list[Peer]
    segments: list[SegmentMeta]
    total_size: int | None
    complete: bool
    lease_holder: str | None = None
    # The relay parent the tracker chose for us (asked with ``assign``), first in ``peers``.
    parent: str | None = None


class Coordinator(Protocol):
    """What the agent needs from the tracker. Every method raises CoordinatorUnavailable
    when no tracker answers in time; the agent then behaves as a plain mirror."""

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> Lookup:
        """``named``: agent ids to vouch for as well; ``assign``: have the tracker choose a
        relay parent (see tracker.service.Tracker.lookup)."""
        ...

    async def publish_segment(
        self, digest: str, segment: SegmentMeta, total_size: int | None
    ) -> None: ...

    async def announce(
        self, digest: str, state: str, done_bytes: int, total_bytes: int | None
    ) -> None: ...

    async def withdraw(self, digest: str) -> None: ...

    async def report_bad_peer(self, digest: str, host: str, port: int) -> None: ...

    async def report_unresponsive(self, digest: str, agent_id: str) -> None:
        """The agent fetching ``digest`` (the lease holder) stopped delivering."""
        ...


class CoordinatorUnavailable(Exception):
    """No tracker answered: fall back to the upstream."""


class InProcessTracker(Protocol):
    """A tracker run in the agent's own process by the composition root (``layerswarm agent``
    without --tracker). The agent reaches it through a client bound to its id and key, exactly
    as it would a remote one, and keeps it running for as long as the agent runs.
    """

    @property
    def reachable(self) -> bool:
        """True when other agents reach this tracker too (``--serve-tracker``): then there are
        peers, and the agent runs its peer transport."""
        ...

    def client(self, agent_id: str, key: str) -> TrackerClient: ...

    def running(self) -> AbstractAsyncContextManager[None]:
        """Its upkeep (and, when served, its HTTP API) for the duration of the block."""
        ...


@dataclass(frozen=True)
class TrackerState:
    """How the last heartbeat went: what /healthz reports about the tracker.

    ``state``: starting (no heartbeat yet), ok, unreachable, or refused (the tracker answered
    but would not take us: wrong fleet token, agent key); ``reason`` says why, for operators.
    ``registrations``: how often a tracker took this agent as new (its start, or the tracker
    forgot it) and accepted everything it holds; one more after a tracker restart means the
    fleet can find this agent's layers again.
    """

    state: str = "starting"
    reason: str = ""
    registrations: int = 0

    @property
    def healthy(self) -> bool:
        return self.state in ("starting", "ok", "none")


@dataclass
class TrackerLink:
    client: TrackerClient
    describe: Callable[[], AgentInfo]
    held: Callable[[], list[Announcement]]
    # The agent's background tasks: preheat jobs run there.
    tasks: Supervisor
    run_preheat: PreheatRunner | None = None
    # Progress of blobs this agent fetches upstream, sent with every heartbeat (lease upkeep).
    fetching: Callable[[], list[Announcement]] | None = None
    default_interval: float = 10.0
    # Where the tracker is and which token file we use, for messages (never the token).
    tracker_url: str = "embedded"
    token_file: str = ""
    state: TrackerState = field(default_factory=TrackerState)
    # Told the image of each fleet-wide tag invalidation (agent.mirror.Mirror.invalidate_tag).
    on_invalidate: Callable[[str], None] | None = None
    _invalidated_up_to: float = 0.0
    _registrations: int = 0
    _warned_at: float = -_REPEAT_WARNING_SECONDS
    _peer_ids: dict[tuple[str, int], str] = field(default_factory=dict)
    _jobs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _finished_jobs: set[str] = field(default_factory=set)

    # -- Coordinator (used by agent.swarm) -----------------------------------------------

    async def _call(self, what: Callable[[], Awaitable[_T]]) -> _T:
        try:
            try:
                return await what()
            except UnknownAgent:
                # The tracker forgot us (restart, expiry): register, then try once more.
                await self.heartbeat()
                return await what()
        except (TrackerUnavailable, StoreUnavailable) as exc:
            raise CoordinatorUnavailable(str(exc)) from exc
        except TrackerError as exc:
            log.warning("tracker %s refused a request: %s", self.tracker_url, exc)
            raise CoordinatorUnavailable(str(exc)) from exc

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> Lookup:
        reply = await self._call(lambda: self.client.lookup(digest, named, assign=assign))
        for p in reply.peers:
            self._peer_ids[(p.address, p.port)] = p.agent_id
        meta = reply.metainfo
        return Lookup(
            action=reply.action,
            peers=list(reply.peers),
            segments=list(meta.segments) if meta is not None else [],
            total_size=meta.total_size if meta is not None and meta.total_size else None,
            complete=bool(meta is not None and meta.complete),
            lease_holder=reply.lease_holder,
            parent=reply.parent,
        )

    async def publish_segment(
        self, digest: str, segment: SegmentMeta, total_size: int | None
    ) -> None:
        await self._call(lambda: self.client.put_metainfo(digest, total_size or 0, segment))

    async def announce(
        self, digest: str, state: str, done_bytes: int, total_bytes: int | None
    ) -> None:
        await self._call(
            lambda: self.client.announce(
                digest, state, progress_bytes=done_bytes, total_bytes=total_bytes or 0
            )
        )

    async def withdraw(self, digest: str) -> None:
        await self._call(lambda: self.client.withdraw(digest))

    async def report_unresponsive(self, digest: str, agent_id: str) -> None:
        await self._call(lambda: self.client.report_bad_peer(agent_id, digest))

    async def report_bad_peer(self, digest: str, host: str, port: int) -> None:
        peer_id = self._peer_ids.get((host, port))
        if peer_id is None:
            log.warning("bad peer %s:%d is not one the tracker handed out", host, port)
            return
        await self._call(lambda: self.client.report_bad_peer(peer_id, digest))

    # -- heartbeats and preheat -----------------------------------------------------------

    async def heartbeat(self) -> float:
        """One heartbeat (and lease upkeep); the seconds until the next one."""
        reply = await self.client.heartbeat(self.describe())
        fetching = list(self.fetching()) if self.fetching is not None else []
        items = list(fetching)
        full = reply.registered or reply.reannounce
        if full:
            items.extend(self.held())
        if items:
            await self.client.announce_many(items)
        if full:
            self._registrations += 1
        interval = reply.heartbeat_interval or self.default_interval
        if fetching and reply.lease_ttl > 0:
            # These heartbeats keep this agent's leases, which the tracker's interval for a
            # large fleet could outlast.
            interval = min(interval, reply.lease_ttl / 3)
        return max(MIN_HEARTBEAT_INTERVAL, min(interval, MAX_HEARTBEAT_INTERVAL))

    async def run_once(self) -> None:
        """One heartbeat and task poll, then sleep; a tracker outage only delays the next."""
        interval = self.default_interval
        try:
            interval = await self.heartbeat()
            await self._poll_tasks()
            await self._poll_invalidations()
        except (TrackerUnavailable, StoreUnavailable) as exc:
            self._enter(TrackerState("unreachable", f"tracker {self.tracker_url}: {exc}"))
        except (Unauthorized, Forbidden) as exc:
            self._enter(
                TrackerState(
                    "refused",
                    f"tracker {self.tracker_url} refused this agent ({exc}); is the token in "
                    f"{self.token_file or '--tracker-token-file'} the one in the tracker's "
                    "--token-file?",
                )
            )
        except TrackerError as exc:
            self._enter(TrackerState("refused", f"tracker {self.tracker_url} refused: {exc}"))
        except Exception:
            # Not the tracker's doing but ours (a bug, the data dir gone): said loudly, with
            # the traceback, while the heartbeat goes on, since an agent that stopped beating
            # would silently leave the fleet for good.
            log.exception("heartbeat to tracker %s failed", self.tracker_url)
        else:
            self._enter(TrackerState("ok"))
        await asyncio.sleep(interval)

    def _enter(self, new: TrackerState) -> None:
        new = dataclasses.replace(new, registrations=self._registrations)
        old, self.state = self.state, new
        if new.healthy:
            if not old.healthy:
                log.info("tracker reachable again at %s", self.tracker_url)
            return
        now = time.monotonic()
        if new != old or now - self._warned_at >= _REPEAT_WARNING_SECONDS:
            self._warned_at = now
            log.warning("%s; pulls go on from the upstream only", new.reason)

    async def _poll_invalidations(self) -> None:
        """Apply the tag invalidations made since the last poll: within one heartbeat."""
        if self.on_invalidate is None:
            return
        for inv in await self.client.invalidations(self._invalidated_up_to):
            self.on_invalidate(inv.image)
            self._invalidated_up_to = max(self._invalidated_up_to, inv.created)

    async def _poll_tasks(self) -> None:
        if self.run_preheat is None:
            return
        for job in await self.client.tasks():
            if job.id in self._jobs or job.id in self._finished_jobs:
                continue
            self._jobs[job.id] = self.tasks.spawn(self._preheat(job), name=f"preheat {job.id}")

    async def _preheat(self, job: PreheatJob) -> None:
        assert self.run_preheat is not None

        latest: list[LayerProgress] = []

        async def progress(items: list[LayerProgress]) -> None:
            latest[:] = items
            await self._report(job, items, "running")

        try:
            items = await self.run_preheat(job.image, progress)
            await self._report(job, items, "done")
            log.info("preheat job=%s image=%s done", job.id, job.image)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The reason goes to the tracker for the operator; it never names a credential.
            reason = getattr(exc, "message", None) or str(exc) or "unexpected error"
            log.warning("preheat job=%s image=%s failed: %s", job.id, job.image, reason)
            # Keep the layers that did arrive in the job's status: a retry needs only the rest.
            with contextlib.suppress(TrackerError):
                await self.client.report_preheat(job.id, latest, "failed", error=str(reason)[:500])
        finally:
            self._finished_jobs.add(job.id)
            self._jobs.pop(job.id, None)

    async def _report(self, job: PreheatJob, items: list[LayerProgress], state: str) -> None:
        with contextlib.suppress(TrackerError):
            await self.client.report_preheat(job.id, items, state)
