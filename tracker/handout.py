"""Which peers an asking agent gets, in which order.

Order by locality class: same zone, same region, seeds, then everybody else. Within a class,
complete copies come before copies still being fetched; holders with a lower load and fetchers
further along come first, in coarse buckets; ties are shuffled. Shuffling matters: if every
asker got the same first peer, a fleet pulling one layer would all hit that peer, whereas random
tie-breaks spread askers over the holders and the swarm forms a sparse graph.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from tracker.model import AgentInfo, Holding

SAME_ZONE, SAME_REGION, SEED, OTHER = range(4)


def locality(asker: AgentInfo, peer: AgentInfo) -> int:
    same_region = asker.region == peer.region
    if asker.zone and peer.zone == asker.zone and same_region:
        return SAME_ZONE
    if asker.region and same_region:
        return SAME_REGION
    if peer.role == "seed":
        return SEED
    return OTHER


def _within_class(info: AgentInfo, holding: Holding) -> tuple[int, float]:
    if holding.state == "holding":
        # Load buckets of one active upload: finer distinctions are noise at heartbeat age.
        return (0, math.floor(info.load))
    total = holding.total_bytes or 1
    # Quarters of progress, furthest first.
    return (1, -math.floor(4 * holding.progress_bytes / total))


def order_peers(
    asker: AgentInfo,
    candidates: Sequence[tuple[AgentInfo, Holding]],
    limit: int,
    rng: random.Random,
) -> list[tuple[AgentInfo, Holding]]:
    """The best ``limit`` candidates for ``asker``; candidates must already exclude the asker."""
    keyed = [
        ((locality(asker, info), *_within_class(info, holding), rng.random()), info, holding)
        for info, holding in candidates
    ]
    keyed.sort(key=lambda t: t[0])
    return [(info, holding) for _, info, holding in keyed[:limit]]
