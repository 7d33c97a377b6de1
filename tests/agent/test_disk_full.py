"""Disk full: the agent's data dir on a small tmpfs, filled by the agent and by another writer.

Faults are real: the filesystem really runs out (each case asserts the ENOSPC or the refusal
happened); the upstream is the real registry, behind the fault proxy only to slow a blob
down so the disk can be filled while it is on its way.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import aiohttp
import pytest

from testbed.disk import fill, tmpfs
from testbed.faultproxy import FaultProxy
from testbed.registry import Registry
from tests.agent.conftest import AgentFactory
from tests.conftest import ImageFactory

# Mounting a tmpfs needs root, like the namespace tests.
pytestmark = [pytest.mark.integration, pytest.mark.netns]

MiB = 1 << 20
RESERVE = 2 * MiB


def leftovers(data: Path) -> list[str]:
    """Scratch files that must not outlive a failed write."""
    found = [str(p.relative_to(data)) for p in (data / "tmp").iterdir()]
    found += [p.name for p in data.glob("*.tmp")]
    return found


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


# One tmpfs and five numbered stages, each starting from the disk the one before left: split
# into tests, each would have to rebuild that state. Hence the noqa (statement count).
async def test_disk_full_refuses_aborts_evicts_and_still_serves_manifests(  # noqa: PLR0915
    tmp_path: Path,
    registry: Registry,
    image_factory: ImageFactory,
    agent_factory: AgentFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = image_factory("team/app", "v1", [6 * MiB, 6 * MiB, 3 * MiB])
    other = image_factory("team/other", "v1", [64 * 1024])
    big = image_factory("team/big", "v1", [40 * MiB])
    l1, l2, l3 = app.layers
    with FaultProxy(registry.url) as proxy, tmpfs(tmp_path / "small", 24 * MiB) as data:
        # --cache-size far above the filesystem: only the disk reserve can keep it healthy.
        client, rt = await agent_factory(
            proxy.url,
            name=registry.host_port,
            data_dir=data,
            cache_size=1 << 40,
            disk_reserve=RESERVE,
        )

        async def get_blob(image_repo: str, digest: str) -> bytes:
            resp = await client.get(f"/v2/{image_repo}/blobs/{digest}")
            assert resp.status == 200, await resp.text()
            body = await resp.read()
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
            return body

        # 1. A blob bigger than the whole filesystem is refused before any header.
        resp = await client.get(f"/v2/{big.repo}/blobs/{big.layers[0].digest}")
        assert resp.status == 503
        err = (await resp.json())["errors"][0]
        assert err["code"] == "UNAVAILABLE" and "no room" in err["message"], err
        assert "not caching digest=" + big.layers[0].digest in caplog.text
        assert not list((data / "partial").iterdir())

        # 2. Another writer fills the disk while a blob streams in, and nothing can be
        # evicted: the write fails with ENOSPC, the client's body is cut, the partial goes.
        proxy.throttle(2 * MiB)
        resp = await client.get(f"/v2/{app.repo}/blobs/{l1.digest}")
        assert resp.status == 200
        await resp.content.readexactly(64 * 1024)
        filler = fill(data)  # raises unless the disk really reported ENOSPC
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert "disk full writing digest=" + l1.digest in caplog.text
        assert not list((data / "partial").iterdir())
        assert l1.digest.split(":")[1] not in {p.name for p in (data / "blobs/sha256").iterdir()}

        # 3. Still full: manifests are served (kept in memory), and no scratch file is left
        # behind, neither in tmp/ nor beside anonymous-grants.json.
        proxy.throttle(None)
        # The discarded partial gave a few bytes back: take them too.
        filler2 = fill(data, name="filler2")
        resp = await client.get(
            f"/v2/{other.repo}/manifests/v1",
            headers={"Accept": app.local.manifest_media_type},
        )
        assert resp.status == 200, await resp.text()
        assert await resp.read() == other.manifest
        assert "kept in memory only" in caplog.text
        assert "could not save anonymous grants" in caplog.text
        assert leftovers(data) == []
        metrics = await (await client.get("/metrics")).text()
        assert metric(metrics, 'layerswarm_no_space_total{outcome="refused"}') == 1
        assert metric(metrics, 'layerswarm_no_space_total{outcome="aborted"}') == 1
        assert metric(metrics, 'layerswarm_no_space_total{outcome="manifest_not_stored"}') >= 1

        # 4. The other writer leaves; two layers get cached. Then it fills the disk again
        # mid-blob: this time the agent evicts them, retries the write and completes.
        filler.unlink()
        filler2.unlink()
        await get_blob(app.repo, l1.digest)
        await get_blob(app.repo, l2.digest)
        assert l1.digest in {str(d) for d in rt.store.digests()}
        proxy.throttle(2 * MiB)
        resp = await client.get(f"/v2/{app.repo}/blobs/{l3.digest}")
        assert resp.status == 200
        head = await resp.content.readexactly(64 * 1024)
        caplog.clear()
        filler = fill(data)
        body = head + await resp.read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == l3.digest
        assert "disk full writing digest=" + l3.digest in caplog.text
        # The least recently used layer made the room; the write needed no more than that.
        assert f"evicted digest={l1.digest} bytes={l1.size} reason=disk reserve" in caplog.text
        assert {str(d) for d in rt.store.digests()} == {l2.digest, l3.digest}

        # 5. Room short of the reserve before a download: evict first, then fetch.
        filler.unlink()
        proxy.throttle(None)
        caplog.clear()
        filler = fill(data, leave=7 * MiB)
        await get_blob(app.repo, l1.digest)
        assert f"evicted digest={l2.digest} bytes={l2.size} reason=disk reserve" in caplog.text
        assert {str(d) for d in rt.store.digests()} == {l3.digest, l1.digest}
        filler.unlink()
        assert leftovers(data) == []
        # Every cached blob verifies.
        for d in rt.store.digests():
            assert hashlib.sha256(rt.store.path_for(d).read_bytes()).hexdigest() == d.hex
        await client.close()
