"""Records the tracker's stores keep: never sent to an agent as they are.

The request and reply types agents and the tracker exchange are in core.wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.wire import AgentInfo, HoldState, LayerProgress


@dataclass(frozen=True)
class AgentRecord:
    """A registered agent as the store keeps it; alive while ``expires > now``."""

    info: AgentInfo
    key: str
    last_seen: float
    expires: float

    def alive(self, now: float) -> bool:
        return self.expires > now


@dataclass(frozen=True)
class Holding:
    """One agent's copy of one layer: complete (``holding``) or on its way (``fetching``)."""

    agent_id: str
    state: HoldState
    progress_bytes: int
    total_bytes: int
    updated: float

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "state": self.state,
            "progress_bytes": self.progress_bytes,
            "total_bytes": self.total_bytes,
            "updated": self.updated,
        }

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> Holding:
        return cls(
            agent_id=d["agent_id"],
            state=d["state"],
            progress_bytes=d["progress_bytes"],
            total_bytes=d["total_bytes"],
            updated=d["updated"],
        )


@dataclass(frozen=True)
class LeaseResult:
    """The outcome of asking for the cold-fetch lease on (region, digest)."""

    granted: bool
    holder: str
    took_over: bool = False


@dataclass(frozen=True)
class PreheatReport:
    """One agent's progress on one preheat job."""

    agent_id: str
    state: str
    layers: tuple[LayerProgress, ...]
    error: str | None
    updated: float

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "state": self.state,
            "layers": [x.to_json() for x in self.layers],
            "error": self.error,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PreheatReport:
        return cls(
            agent_id=d["agent_id"],
            state=d["state"],
            layers=tuple(LayerProgress(**x) for x in d["layers"]),
            error=d.get("error"),
            updated=d["updated"],
        )
