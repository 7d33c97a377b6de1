"""A tracker in another component's process, reached without HTTP.

    tracker = embedded_tracker()
    client = local_client(tracker, agent_id)        # a TrackerClient, no HTTP involved
    upkeep = asyncio.create_task(tracker.maintain())  # optional: prunes expired entries

``layerswarm agent`` without --tracker composes an agent with one (layerswarm.agent_cmd);
with --serve-tracker the same tracker also serves its HTTP API to other agents.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from core import trackererrors as errors
from core.wire import (
    AgentInfo,
    Announcement,
    HeartbeatReply,
    Invalidation,
    LayerProgress,
    LookupReply,
    Metainfo,
    PreheatJob,
    SegmentMeta,
)
from tracker.clock import Clock, SystemClock
from tracker.config import TrackerConfig
from tracker.service import Tracker
from tracker.store.memory import MemoryStore


def embedded_tracker(config: TrackerConfig | None = None, *, clock: Clock | None = None) -> Tracker:
    return Tracker(MemoryStore(), clock or SystemClock(), config or TrackerConfig())


def new_agent_key() -> str:
    """The per-run secret that binds an agent id to this process."""
    return secrets.token_urlsafe(32)


def local_client(tracker: Tracker, agent_id: str, key: str | None = None) -> LocalTrackerClient:
    return LocalTrackerClient(tracker, agent_id, key or new_agent_key())


class LocalTrackerClient:
    """Calls a Tracker in this process: the agent's embedded tracker when no --tracker is set."""

    def __init__(self, tracker: Tracker, agent_id: str, key: str) -> None:
        self.tracker = tracker
        self.agent_id = agent_id
        self._key = key

    async def heartbeat(self, info: AgentInfo) -> HeartbeatReply:
        if info.agent_id != self.agent_id:
            raise errors.InvalidRequest("heartbeat for another agent id")
        return await self.tracker.heartbeat(info, self._key)

    async def announce(
        self,
        digest: str,
        state: str = "holding",
        *,
        progress_bytes: int = 0,
        total_bytes: int = 0,
    ) -> None:
        await self.tracker.announce(
            self.agent_id,
            self._key,
            digest,
            state,
            progress_bytes=progress_bytes,
            total_bytes=total_bytes,
        )

    async def announce_many(self, items: Sequence[Announcement]) -> None:
        await self.tracker.announce_many(self.agent_id, self._key, items)

    async def withdraw(self, digest: str) -> None:
        await self.tracker.withdraw(self.agent_id, self._key, digest)

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> LookupReply:
        return await self.tracker.lookup(self.agent_id, self._key, digest, named, assign=assign)

    async def put_metainfo(self, digest: str, total_size: int, segment: SegmentMeta) -> Metainfo:
        return await self.tracker.put_metainfo(
            self.agent_id, self._key, digest, total_size, segment
        )

    async def get_metainfo(self, digest: str) -> Metainfo | None:
        try:
            return await self.tracker.get_metainfo(digest)
        except errors.NotFound:
            return None

    async def report_bad_peer(self, peer_id: str, digest: str) -> None:
        await self.tracker.report_bad_peer(self.agent_id, self._key, peer_id, digest)

    async def tasks(self) -> list[PreheatJob]:
        return await self.tracker.agent_tasks(self.agent_id, self._key)

    async def invalidations(self, after: float) -> list[Invalidation]:
        return await self.tracker.invalidations(after)

    async def report_preheat(
        self, job_id: str, layers: Sequence[LayerProgress], state: str, *, error: str | None = None
    ) -> None:
        await self.tracker.report_preheat(
            self.agent_id, self._key, job_id, layers, state, error=error
        )
