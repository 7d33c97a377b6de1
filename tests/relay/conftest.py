"""In-process agents for the relay: each a real blob store, fetcher and peer server on a
loopback port, all linked to one real tracker service (memory store, in process).

The upstream here is ``ScriptedUpstream``: a fault injector, not a registry. It serves the
blob from memory at a set rate and can stall or die on demand, which the real registry cannot
do at a chosen byte. The registry-backed path is covered end to end in tests/fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.blobstore import BlobStore
from agent.config import Upstream
from agent.fetch import BlobFetcher, Download, FetchJob, SourceUnavailable
from agent.metrics import AgentMetrics
from agent.oci import Digest, parse_digest
from agent.relay.peers import Relay
from agent.trackerlink import Coordinator, Lookup, TrackerLink
from core.tasks import Supervisor
from core.wire import AgentInfo, SegmentMeta
from tracker.clock import SystemClock
from tracker.config import TrackerConfig
from tracker.embedded import local_client
from tracker.service import Tracker
from tracker.store.memory import MemoryStore

UPSTREAM = Upstream("up.example", "http://127.0.0.1:1")


def make_blob(size: int) -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, parse_digest("sha256:" + hashlib.sha256(data).hexdigest())


@dataclass
class ScriptedUpstream:
    """The upstream as a fault injector: bytes from memory at ``rate`` bytes/s; ``stall_at``
    stops sending (forever) at that offset for the agents named in ``stall_for``."""

    blobs: dict[Digest, bytes]
    rate: float = 50e6
    stall_at: int | None = None
    stall_for: set[str] = field(default_factory=set)
    start_delay: float = 0.0  # seconds before the first answer (a slow token flow, say)
    served: list[tuple[str, int, int]] = field(default_factory=list)  # (agent, offset, bytes)

    def source(self, agent_id: str) -> _UpstreamSource:
        return _UpstreamSource(self, agent_id)


class _UpstreamSource:
    name = "upstream"

    def __init__(self, up: ScriptedUpstream, agent_id: str) -> None:
        self._up = up
        self._agent = agent_id

    async def fetch(self, job: FetchJob, download: Download) -> None:
        data = self._up.blobs[job.digest]
        start = download.written
        await asyncio.sleep(self._up.start_delay)
        download.set_started(len(data))
        pos = start
        chunk = 64 << 10
        try:
            while pos < len(data):
                if (
                    self._up.stall_at is not None
                    and pos >= self._up.stall_at
                    and self._agent in self._up.stall_for
                ):
                    await asyncio.Event().wait()
                piece = data[pos : pos + chunk]
                await download.append(piece)
                pos += len(piece)
                await asyncio.sleep(len(piece) / self._up.rate)
        finally:
            self._up.served.append((self._agent, start, pos - start))


class CountingCoordinator:
    """The agent's real TrackerLink, with every tracker request counted by kind."""

    def __init__(self, link: TrackerLink) -> None:
        self._link = link
        self.calls: list[str] = []

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> Lookup:
        self.calls.append("lookup")
        return await self._link.lookup(digest, named, assign=assign)

    async def publish_segment(
        self, digest: str, segment: SegmentMeta, total_size: int | None
    ) -> None:
        raise AssertionError("the relay publishes no segments")

    async def announce(
        self, digest: str, state: str, done_bytes: int, total_bytes: int | None
    ) -> None:
        self.calls.append(f"announce:{state}")
        await self._link.announce(digest, state, done_bytes, total_bytes)

    async def withdraw(self, digest: str) -> None:
        self.calls.append("withdraw")
        await self._link.withdraw(digest)

    async def report_bad_peer(self, digest: str, host: str, port: int) -> None:
        self.calls.append("report")
        await self._link.report_bad_peer(digest, host, port)

    async def report_unresponsive(self, digest: str, agent_id: str) -> None:
        self.calls.append("report")
        await self._link.report_unresponsive(digest, agent_id)


@dataclass
class Node:
    agent_id: str
    store: BlobStore
    fetcher: BlobFetcher
    relay: Relay
    coordinator: CountingCoordinator
    metrics: AgentMetrics

    async def pull(self, digest: Digest, size: int | None) -> bytes:
        """What a client of this agent gets: the blob once it verified (as the registry
        serves peer bytes), read back from the cache."""
        dl, _ = self.fetcher.start(FetchJob(UPSTREAM, "team/app", digest, None, size=size))
        while not dl.finished:
            await dl.wait_changed()
        if dl.error is not None:
            raise dl.error
        blob = self.store.get(digest)
        assert blob is not None
        return blob.path.read_bytes()

    def seed(self, digest: Digest, data: bytes) -> None:
        tmp = self.store.new_tmp_path("seed")
        tmp.write_bytes(data)
        self.store.commit(digest, tmp)


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
def tracker() -> Tracker:
    return Tracker(MemoryStore(), SystemClock(), TrackerConfig(max_peers=16))


@pytest.fixture
async def make_node(
    tmp_path: Path, tracker: Tracker
) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    nodes: list[Node] = []
    tasks = Supervisor("relay test nodes")

    async def make(
        agent_id: str,
        upstream: ScriptedUpstream,
        *,
        peer_wait: float = 3.0,
        max_children: int = 1,
        region: str = "r1",
        peers_first: bool = True,
        upload_rate: int = 0,
        clock: Callable[[], float] = time.monotonic,
        fanout: str = "depth",
        parent_choice: str = "walk",
    ) -> Node:
        metrics = AgentMetrics.create(CollectorRegistry())
        store = BlobStore(tmp_path / agent_id, 1 << 30)
        store.open()
        sources: list[object] = []
        fetcher = BlobFetcher(store, sources, metrics, tasks)  # type: ignore[arg-type]  # filled below
        relay_box: list[Relay] = []

        def describe() -> AgentInfo:
            return AgentInfo(agent_id, "127.0.0.1", relay_box[0].peer_port, region=region)

        link = TrackerLink(local_client(tracker, agent_id), describe, list, tasks)
        coordinator = CountingCoordinator(link)
        relay = Relay(
            agent_id,
            coordinator,
            store,
            fetcher,
            metrics,
            tasks,
            listen=("127.0.0.1", 0),
            peer_wait=peer_wait,
            max_children=max_children,
            fanout=fanout,
            parent_choice=parent_choice,
            upload_rate=upload_rate,
            clock=clock,
        )
        relay_box.append(relay)
        if peers_first:
            sources.append(relay.source())
        sources.append(upstream.source(agent_id))
        fetcher.on_cached.append(relay.on_cached)
        fetcher.on_corrupt.append(relay.on_corrupt)
        await relay.start(cached=lambda d: d in store)
        await link.heartbeat()
        node = Node(agent_id, store, fetcher, relay, coordinator, metrics)
        nodes.append(node)
        return node

    yield make
    await tasks.close()
    for node in nodes:
        await node.relay.close()


async def announce_held(node: Node, digest: Digest, size: int) -> None:
    await node.coordinator.announce(str(digest), "holding", size, size)


class SilentPeer:
    """A fault injector: accepts TCP connections on loopback and never answers."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(w)

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


__all__ = ["Coordinator", "SourceUnavailable"]
