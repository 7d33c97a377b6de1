"""partial/ holds only downloads worth resuming: a digest the upstream does
not have leaves no file behind, and empty or day-old partials are collected at start-up."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from agent.blobstore import BlobStore
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory


@pytest.mark.integration
async def test_missing_digests_leave_no_partials(
    registry: Registry, agent_factory: AgentFactory
) -> None:
    client, runtime = await agent_factory(registry.url, name=registry.host_port)
    for i in range(30):
        digest = "sha256:" + hashlib.sha256(f"absent {i}".encode()).hexdigest()
        resp = await client.get(f"/v2/some/app/blobs/{digest}")
        assert resp.status == 404, await resp.text()
    assert list((runtime.config.data_dir / "partial").iterdir()) == []


def test_stale_partials_collected_at_start(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    empty = partial / f"sha256-{'1' * 64}"
    empty.touch()
    old = partial / f"sha256-{'2' * 64}"
    old.write_bytes(b"x" * 100)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    fresh = partial / f"sha256-{'3' * 64}"
    fresh.write_bytes(b"y" * 100)
    BlobStore(root=tmp_path, max_bytes=1 << 30).open()
    assert sorted(p.name for p in partial.iterdir()) == [fresh.name]
