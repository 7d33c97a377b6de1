"""The Redis store behind a real Redis Sentinel: the master dies, the sentinel promotes its
replica, and the store follows it (``--store redis+sentinel://...``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis

from core.trackererrors import StoreUnavailable
from testbed.procs import Proc, free_port, wait_for_port
from tests.tracker.helpers import agent, digest_of
from tracker.model import Holding
from tracker.store.redis_store import RedisStore

MASTER = "lsm"


def redis_proc(workdir: Path, name: str, port: int, *extra: str) -> Proc:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), *extra]
    return Proc(argv, workdir / "logs", name=name)


async def test_store_follows_a_sentinel_failover(tmp_path: Path) -> None:
    mport, rport, sport = free_port(), free_port(), free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sport}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {mport} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 500\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    master = redis_proc(tmp_path, "master", mport)
    replica = redis_proc(tmp_path, "replica", rport, "--replicaof", "127.0.0.1", str(mport))
    sentinel = Proc(["redis-server", str(conf), "--sentinel"], tmp_path / "logs", name="sentinel")
    procs = [master, replica, sentinel]
    try:
        for proc, port in ((master, mport), (replica, rport), (sentinel, sport)):
            proc.start()
            wait_for_port("127.0.0.1", port, 20, proc=proc)
        store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{sport}/{MASTER}/0", timeout=2)
        raw = redis.Redis(port=mport)
        try:
            d = digest_of("layer")
            await store.bind_agent(agent("a1", region="eu"), "k" * 20, 0.0, 1e9)
            await store.put_holdings("a1", [(d, Holding("a1", "holding", 1, 1, 0.0))])
            # Acknowledged by the replica, so the failover keeps it.
            assert raw.wait(1, 5000) == 1
            master.stop()
            deadline = time.monotonic() + 30
            while True:
                try:
                    rec = await store.get_agent("a1")
                    break
                except StoreUnavailable:
                    # Until the sentinel has promoted the replica (about a second here).
                    assert time.monotonic() < deadline, sentinel.log_tail()
                    await asyncio.sleep(0.2)
            assert rec is not None and rec.info.region == "eu"
            promoted = redis.Redis(port=rport)
            try:
                assert promoted.role()[0] == b"master"
            finally:
                promoted.close()
            # Writes and the lookup script (loaded again on the new master) work.
            assert await store.bind_agent(agent("a2", region="eu"), "j" * 20, 0.0, 1e9) == "new"
            found, view = await store.lookup_view("a2", "j" * 20, d, 1.0, 64)
            assert found is not None and view is not None
            assert [h.agent_id for h, _ in view.holders] == ["a1"]
        finally:
            raw.close()
            await store.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
