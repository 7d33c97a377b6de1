"""Where fleet state lives: ``base`` is the contract; ``memory`` and ``redis_store`` keep it."""

from __future__ import annotations

from tracker.store.base import TrackerStore
from tracker.store.memory import MemoryStore
from tracker.store.redis_store import RedisStore


def open_store(url: str, *, timeout: float = 5.0) -> TrackerStore:
    """Build the store a ``--store`` setting names (``memory``, ``redis://HOST:PORT/DB`` or
    ``redis+sentinel://HOST:PORT,.../MASTER/DB``)."""
    if url == "memory":
        return MemoryStore()
    return RedisStore.from_url(url, timeout=timeout)


__all__ = ["MemoryStore", "RedisStore", "TrackerStore", "open_store"]
