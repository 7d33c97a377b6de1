"""The agent's peer side, built from its config: tracker client and link, peer transport.

Kept apart from agent/app.py so the mirror can be built and tested without any of it, and
so every peer-to-peer dependency is visible in one place.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from agent.blobstore import BlobStore
from agent.config import AgentConfig
from agent.counters import LifetimeCounters
from agent.fetch import BlobFetcher, BlobSource
from agent.identity import Identity
from agent.metrics import AgentMetrics, ByteTotals
from agent.oci import Digest
from agent.p2p.engine import FleetTLS
from agent.p2p.errors import PeerTransferError
from agent.p2p.libtorrent_impl import EngineOptions, LibtorrentEngine
from agent.preheat import ProgressHook
from agent.relay.peers import Relay, client_context, server_context
from agent.swarm import SegmentFiles, Swarm
from agent.trackerlink import InProcessTracker, TrackerLink, TrackerState
from core.settings import ConfigError
from core.tasks import Supervisor
from core.trackerclient import HttpTrackerClient, TrackerClient
from core.wire import AgentInfo, Announcement, Counters

log = logging.getLogger(__name__)


def read_fleet_tls(config: AgentConfig) -> FleetTLS | None:
    if config.peer_ca_file is None or config.peer_cert_file is None or config.peer_key_file is None:
        return None
    try:
        return FleetTLS(
            ca_pem=config.peer_ca_file.read_bytes(),
            cert_pem=config.peer_cert_file.read_bytes(),
            key_pem=config.peer_key_file.read_bytes(),
        )
    except OSError as exc:
        raise ConfigError(f"peer TLS file {exc.filename}: {exc.strerror}") from None


def tracker_ssl_context(config: AgentConfig) -> ssl.SSLContext | None:
    """TLS towards an https tracker: trust its CA, and show this node's fleet certificate
    (a tracker run with --agent-ca-file then knows the agent by it). None: the defaults."""
    ca = config.tracker_ca_file or config.peer_ca_file
    if ca is None and config.peer_cert_file is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if config.tracker_ca_file is None and config.peer_ca_file is not None:
            # The fleet CA names nodes, not host names: membership is what is checked.
            ctx.check_hostname = False
        if config.peer_cert_file is not None and config.peer_key_file is not None:
            ctx.load_cert_chain(config.peer_cert_file, config.peer_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tracker TLS: {exc}") from None
    return ctx


def advertise_address(config: AgentConfig) -> str:
    if config.advertise_address:
        return config.advertise_address
    host, _ = config.peer_host_port
    if host not in ("0.0.0.0", "::", ""):
        return host
    # Best guess for a node with one interface; operators set --advertise-address otherwise.
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class PeerTransport(Protocol):
    """What the mirror needs of a peer transport (the relay or the torrent swarm)."""

    def source(self) -> BlobSource: ...

    def seeded(self) -> list[Digest]: ...

    def on_cached(self, digest: Digest, path: Path, size: int) -> None: ...

    def on_evict(self, digest: Digest) -> None: ...

    def on_corrupt(self, digest: Digest, source: str) -> None: ...

    async def start(self, cached: Callable[[Digest], bool]) -> None: ...

    async def close(self) -> None: ...


class PeerSide:
    """The agent's tracker link and, when other agents can be peers, its peer transport."""

    def __init__(
        self,
        config: AgentConfig,
        client: TrackerClient | None,
        transport: PeerTransport | None,
        engine: LibtorrentEngine | None,
        store: BlobStore,
        metrics: AgentMetrics,
        identity: Identity,
        fetcher: BlobFetcher,
        tasks: Supervisor,
        run_preheat: Callable[[str, ProgressHook], Any] | None,
        on_invalidate: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.transport = transport
        self.relay: Relay | None = None
        self.engine = engine
        self._store = store
        self._metrics = metrics
        self._identity = identity
        self._fetcher = fetcher
        self._tasks = tasks
        self._address = advertise_address(config)
        self._uploaded_seen = 0
        self._lifetime = LifetimeCounters(config.data_dir)
        # None: no tracker at all (an agent built without one, as tests do): a plain mirror.
        self.link = (
            TrackerLink(
                client,
                self.describe,
                self.held,
                tasks,
                run_preheat,
                self.fetching,
                tracker_url=config.tracker or "embedded",
                token_file=str(config.tracker_token_file or ""),
                on_invalidate=on_invalidate,
            )
            if client is not None
            else None
        )

    def tracker_state(self) -> TrackerState:
        if self.link is None:
            return TrackerState("none", "no tracker: this agent shares with no other node")
        return self.link.state

    def describe(self) -> AgentInfo:
        usage = shutil.disk_usage(self.config.data_dir)
        return AgentInfo(
            agent_id=self._identity.agent_id,
            address=self._address,
            peer_port=self._peer_port(),
            zone=self.config.zone,
            region=self.config.region,
            role="seed" if self.config.role == "seed" else "peer",
            free_bytes=usage.free,
            load=float(self._fetcher.inflight_count()),
            # Across restarts, so the tracker's fleet totals never go backwards.
            counters=self._lifetime.total(_counters(self._metrics.totals)),
        )

    def _peer_port(self) -> int:
        if self.engine is not None:
            return self.engine.peer_port
        if self.relay is not None:
            return self.relay.peer_port
        return 0

    def fetching(self) -> list[Announcement]:
        """Blobs this agent fetches from the upstream now: announcing their progress with
        every heartbeat keeps the region's lease, so nobody else fetches them meanwhile."""
        if self.relay is None:
            return []
        return [
            Announcement(str(dl.digest), "fetching", dl.written, dl.size or 0, upstream=True)
            for dl in self._fetcher.downloads()
            if dl.source == "upstream" and not dl.finished
        ]

    def held(self) -> list[Announcement]:
        if self.transport is None:
            return []
        out = []
        for digest in self.transport.seeded():
            blob = self._store.get(digest)
            if blob is not None:
                out.append(Announcement(str(digest), "holding", blob.size, blob.size))
        return out

    async def refresh_metrics(self) -> None:
        if self.engine is None:
            return
        stats = await self.engine.stats()
        if stats.uploaded_bytes > self._uploaded_seen:
            self._metrics.count_peer_sent(stats.uploaded_bytes - self._uploaded_seen)
            self._uploaded_seen = stats.uploaded_bytes

    async def start(self) -> None:
        if self.transport is not None:
            await self.transport.start(cached=lambda d: d in self._store)
        if self.link is not None:
            self._tasks.spawn(self._beat(self.link), name="tracker heartbeat")

    async def _beat(self, link: TrackerLink) -> None:
        while True:
            try:
                await self.refresh_metrics()
            except (PeerTransferError, TimeoutError) as exc:
                # The engine is stopping or slow to answer: the count catches up next beat.
                log.debug("peer engine stats unavailable: %s", exc)
            except Exception:
                # A bug of ours, said with its traceback: the heartbeat goes on regardless.
                log.exception("reading the peer engine's stats failed")
            await link.run_once()

    async def close(self) -> None:
        """Close the peer transport; the tasks that use it were ended by the owner of
        ``tasks``."""
        if self.transport is not None:
            await self.transport.close()


def build_peer_side(
    config: AgentConfig,
    identity: Identity,
    session: aiohttp.ClientSession,
    store: BlobStore,
    metrics: AgentMetrics,
    fetcher: BlobFetcher,
    tasks: Supervisor,
    run_preheat: Callable[[str, ProgressHook], Any] | None,
    on_invalidate: Callable[[str], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    tracker_token: str = "",
    in_process: InProcessTracker | None = None,
) -> PeerSide:
    """With --tracker, the remote tracker (``tracker_token`` is the fleet token, read at
    start-up) and a peer transport. Otherwise the ``in_process`` tracker, with a peer transport
    only when other agents reach it (--serve-tracker: alone, a node has no peers); with
    neither, no tracker at all."""
    client: TrackerClient | None = None
    if config.tracker:
        client = HttpTrackerClient(
            config.tracker,
            tracker_token,
            identity.agent_id,
            identity.key,
            session,
            ssl_context=tracker_ssl_context(config),
        )
    elif in_process is not None:
        client = in_process.client(identity.agent_id, identity.key)
    p2p = config.p2p and (bool(config.tracker) or (in_process is not None and in_process.reachable))
    tls = read_fleet_tls(config) if p2p else None
    if p2p and tls is None:
        log.warning(
            "peer transfers are not encrypted and any host can join the swarms: set "
            "--peer-ca-file, --peer-cert-file and --peer-key-file for fleet-only TLS"
        )
    engine: LibtorrentEngine | None = None
    if p2p and config.peer_transport == "torrent":
        host, port = config.peer_host_port
        engine = LibtorrentEngine(
            EngineOptions(
                listen=(host, port),
                upload_rate=config.upload_rate,
                download_rate=config.download_rate,
                max_connections=config.max_connections,
                max_segment_length=config.segment_size,
            ),
            tls=tls,
        )
    peer_side = PeerSide(
        config,
        client,
        None,
        engine,
        store,
        metrics,
        identity,
        fetcher,
        tasks,
        run_preheat,
        on_invalidate,
    )
    link = peer_side.link
    if p2p:
        assert link is not None  # p2p needs a tracker, remote or served in this process
    if engine is not None and link is not None:
        # The swarm asks the tracker through the peer side's link, which in turn reports what
        # the swarm seeds: so the swarm is attached once the link exists.
        peer_side.transport = Swarm(
            engine=engine,
            coordinator=link,
            files=SegmentFiles(config.data_dir),
            metrics=metrics,
            segment_size=config.segment_size,
            peer_wait=config.peer_wait,
            tasks=tasks,
            clock=clock,
        )
    elif p2p and link is not None:
        server_ssl = client_ssl = None
        if tls is not None:
            assert config.peer_cert_file is not None and config.peer_key_file is not None
            cert, key = str(config.peer_cert_file), str(config.peer_key_file)
            server_ssl = server_context(tls, cert, key)
            client_ssl = client_context(tls, cert, key)
        relay = Relay(
            identity.agent_id,
            link,
            store,
            fetcher,
            metrics,
            tasks,
            listen=config.peer_host_port,
            peer_wait=config.peer_wait,
            max_children=config.peer_children,
            fanout=config.peer_fanout,
            parent_choice=config.parent_choice,
            upload_rate=config.upload_rate,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            clock=clock,
        )
        peer_side.relay = relay
        peer_side.transport = relay
    return peer_side


def _counters(totals: ByteTotals) -> Counters:
    return Counters(
        served_cache=totals.served["cache"],
        served_upstream=totals.served["upstream"],
        served_peer=totals.served["peer"],
        upstream_bytes=totals.upstream,
        peer_bytes=totals.peer_received,
        uploaded_bytes=totals.peer_sent,
    )
