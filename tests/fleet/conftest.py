from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.fleet import Fleet
from testbed.netns import Rate, Topology

FleetFactory = Callable[..., Fleet]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    """``fleet(agents, upstream_rate=..., agent_rates=...)``: host 1 = upstream registry +
    tracker, 2.. = agents; ``agent_rates`` shapes agents' uploads (agent index -> rate)."""
    made: list[tuple[Fleet, Topology]] = []

    def make(
        agents: int,
        *,
        upstream_rate: Rate | None = None,
        agent_rates: dict[int, Rate] | None = None,
    ) -> Fleet:
        upload = {i + 1: rate for i, rate in (agent_rates or {}).items()}
        if upstream_rate:
            upload[1] = upstream_rate
        topo = Topology(agents + 1, upload=upload).__enter__()
        f = Fleet(topo, tmp_path)
        made.append((f, topo))
        f.start_registry()
        f.start_tracker()
        return f

    try:
        yield make
    finally:
        for f, topo in made:
            try:
                f.stop()
            finally:
                topo.close()
