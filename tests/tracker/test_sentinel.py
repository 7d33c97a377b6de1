"""The Redis store behind a real Redis Sentinel: the master dies, the sentinel promotes its
replica, and the store follows it (``--store redis+sentinel://...``)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

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


def wait_sentinel_has_master(sport: int, sentinel: Proc) -> None:
    """A sentinel answers on its port before it has looked at its master; until then it
    names none (redis-py: MasterNotFoundError), as any client would find on a fresh start."""
    sentinels = Sentinel([("127.0.0.1", sport)], socket_timeout=2)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 30
    while True:
        try:
            sentinels.discover_master(MASTER)  # type: ignore[no-untyped-call]
            return
        except MasterNotFoundError:
            assert time.monotonic() < deadline, sentinel.log_tail()
            time.sleep(0.2)
        finally:
            for s in sentinels.sentinels:
                s.close()


def wait_sentinel_knows_replica(sport: int, rport: int, sentinel: Proc) -> None:
    client = redis.Redis(port=sport, decode_responses=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            replicas = client.sentinel_slaves(MASTER)
            for info in replicas:
                if int(info.get("port", 0)) == rport and info.get("flags") == "slave":
                    return
            assert time.monotonic() < deadline, (replicas, sentinel.log_tail())
            time.sleep(0.2)
    finally:
        client.close()


async def test_store_follows_a_sentinel_failover(tmp_path: Path) -> None:
    mport, rport, sport = free_port(), free_port(), free_port()
    # The sentinel fsyncs its config on every change, on its only thread; on a disk under
    # writeback that took 2 s and a stall of 2 s puts a sentinel in TILT mode, where it
    # acts on nothing for 30 s. Its files live on tmpfs.
    shm = Path(tempfile.mkdtemp(prefix="layerswarm-sentinel-", dir="/dev/shm"))
    conf = shm / "sentinel.conf"
    conf.write_text(
        f"port {sport}\nbind 127.0.0.1\ndir {shm}\n"
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
        wait_sentinel_has_master(sport, sentinel)
        store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{sport}/{MASTER}/0", timeout=2)
        raw = redis.Redis(port=mport)
        try:
            d = digest_of("layer")
            await store.bind_agent(agent("a1", region="eu"), "k" * 20, 0.0, 1e9)
            await store.put_holdings("a1", [(d, Holding("a1", "holding", 1, 1, 0.0))])
            # Acknowledged by the replica, so the failover keeps it.
            assert raw.wait(1, 20000) == 1
            # A sentinel learns of replicas from the master's INFO, every 10 s: killing the
            # master before it has seen one leaves nothing to promote (a loaded machine's
            # replica may connect after the sentinel's first look).
            wait_sentinel_knows_replica(sport, rport, sentinel)
            master.stop()
            # A sentinel that entered TILT anyway (a starved CPU) waits out its 30 s first.
            deadline = time.monotonic() + 90
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
        shutil.rmtree(shm, ignore_errors=True)
