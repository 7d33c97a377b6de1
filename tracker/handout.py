"""Which peers an asking agent gets, in which order.

Order by locality class: same zone, same region, seeds, then everybody else. Within a class,
complete copies come before copies still being fetched; holders with a lower load and fetchers
further along come first, in coarse buckets; ties are shuffled. Shuffling matters: if every
asker got the same first peer, a fleet pulling one layer would all hit that peer, whereas random
tie-breaks spread askers over the holders and the swarm forms a sparse graph.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence

from core.wire import AgentInfo
from tracker.model import Holding

SAME_ZONE, SAME_REGION, SEED, OTHER = range(4)
# Candidates split by locality class, indexed by the constants above.
Classes = tuple[
    list[tuple[AgentInfo, Holding]],
    list[tuple[AgentInfo, Holding]],
    list[tuple[AgentInfo, Holding]],
    list[tuple[AgentInfo, Holding]],
]


def locality(asker: AgentInfo, peer: AgentInfo) -> int:
    """The one locality rule: what the tracker hands out first, and what the tests check."""
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
    """The best ``limit`` candidates for ``asker``; candidates must already exclude the asker.

    Partial selection: candidates are split by locality class in one pass, and only the classes
    needed to fill ``limit`` are ordered within (usually the first one or two of four).
    """
    classes: Classes = ([], [], [], [])
    for pair in candidates:
        classes[locality(asker, pair[0])].append(pair)
    return _select(classes, limit, rng)


def _select(classes: Classes, limit: int, rng: random.Random) -> list[tuple[AgentInfo, Holding]]:
    out: list[tuple[AgentInfo, Holding]] = []
    rand = rng.random
    for group in classes:
        if not group:
            continue
        keyed = [(*_within_class(info, holding), rand(), info, holding) for info, holding in group]
        want = limit - len(out)
        best = heapq.nsmallest(want, keyed, key=_rank) if want < len(keyed) else keyed
        if best is keyed:
            keyed.sort(key=_rank)
        out.extend((k[3], k[4]) for k in best)
        if len(out) >= limit:
            break
    return out


def _rank(k: tuple[int, float, float, AgentInfo, Holding]) -> tuple[int, float, float]:
    return (k[0], k[1], k[2])
