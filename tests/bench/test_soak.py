"""The soak's in-suite version: 100 seconds instead of 30 minutes, the same checks, with
peer-to-peer on (three agents and a tracker; the single --no-p2p agent's paths are the same
cache and upstream paths, exercised here too).

Restarts at random (SIGKILL and SIGTERM) of agents others stream from, tags moved upstream, a
cache smaller than the working set; then no growth beyond the stated bounds, no orphan files,
every cached blob and manifest verified, served bytes by source adding up to what the clients
received.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakParams, report, soak

pytestmark = pytest.mark.integration


async def test_soak_short(tmp_path: Path) -> None:
    params = SoakParams(duration=100.0, restart_every=(6.0, 14.0), agents=3, p2p=True)
    result = await soak(params, tmp_path)
    print("\n" + report(result))
    assert result.problems == [], report(result)
    # The faults really happened, and pulls really ran through them.
    assert result.restarts_kill + result.restarts_term >= 3, report(result)
    assert result.tag_moves >= 5 and result.pulls_ok >= 100, report(result)
    assert result.cached_blobs_verified >= 1
    assert result.served_by_source_phase2["upstream"] > 0
    assert result.served_by_source_phase2["cache"] > 0
    assert result.served_by_source_phase2["peer"] > 0, report(result)
