"""The tracker inside an agent: used when the agent is given no --tracker URL.

    tracker = embedded_tracker()
    client = local_client(tracker, agent_id)        # a TrackerClient, no HTTP involved
    upkeep = asyncio.create_task(tracker.maintain())  # optional: prunes expired entries

To let other agents use this tracker too, serve it: ``tracker.app.build_app(config,
store=tracker.store)`` shares the same in-memory state over HTTP.
"""

from __future__ import annotations

import secrets

from tracker.client import LocalTrackerClient
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
