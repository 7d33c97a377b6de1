"""Small builders shared by the tracker tests."""

from __future__ import annotations

import base64
import hashlib

from core.wire import AgentInfo, Counters, SegmentMeta


def digest_of(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def agent(
    agent_id: str,
    *,
    zone: str = "",
    region: str = "",
    role: str = "peer",
    load: float = 0.0,
    counters: Counters | None = None,
) -> AgentInfo:
    return AgentInfo(
        agent_id=agent_id,
        address=f"127.0.0.{1 + sum(agent_id.encode()) % 200}",
        peer_port=6881,
        zone=zone,
        region=region,
        role=role,  # type: ignore[arg-type]  # tests pass valid roles
        load=load,
        counters=counters or Counters(),
    )


def segment(
    index: int, offset: int, length: int, payload: bytes = b"d8:announce0:e"
) -> SegmentMeta:
    info_hash = hashlib.sha1(payload + bytes([index])).hexdigest()
    return SegmentMeta(index, offset, length, info_hash, payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
