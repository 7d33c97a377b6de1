"""The agent's composition root: every dependency is built here, in order, and closed in reverse."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from agent.access import AccessChecker
from agent.blobstore import BlobStore
from agent.config import AgentConfig
from agent.fetch import BlobFetcher, BlobSource, RetryPolicy, UpstreamSource
from agent.identity import Identity, certificate_name, load_identity
from agent.manifests import ManifestStore
from agent.metrics import AgentMetrics
from agent.mirror import Mirror
from agent.peerside import PeerSide, build_peer_side
from agent.preheat import ProgressHook, preheat_image
from agent.server.middleware import make_middleware
from agent.server.ops import OpsHandlers, describe_config
from agent.server.registry import RegistryHandlers
from agent.trackerlink import InProcessTracker
from agent.upstream import UpstreamClient, load_credentials
from core import looplag
from core.fleettoken import read_fleet_token
from core.settings import ConfigError
from core.tasks import Supervisor
from core.trackererrors import InvalidRequest
from core.wire import LayerProgress, check_agent_id

log = logging.getLogger(__name__)


class AgentRuntime:
    """The live parts of one agent, reachable from tests and from the peer-to-peer layer."""

    def __init__(
        self,
        config: AgentConfig,
        session: aiohttp.ClientSession,
        store: BlobStore,
        manifests: ManifestStore,
        client: UpstreamClient,
        access: AccessChecker,
        fetcher: BlobFetcher,
        mirror: Mirror,
        metrics: AgentMetrics,
        peer_side: PeerSide,
        tasks: Supervisor,
    ) -> None:
        self.config = config
        self.session = session
        self.store = store
        self.manifests = manifests
        self.client = client
        self.access = access
        self.fetcher = fetcher
        self.mirror = mirror
        self.metrics = metrics
        self.peer_side = peer_side
        self.tasks = tasks

    async def start(self) -> None:
        # A stalled request with nothing in the log was hard to explain (docs/reliability.md,
        # the soak's 30 s stall): a blocked loop at least says so.
        self.tasks.spawn(looplag.watch(), name="event loop watch")
        await self.peer_side.start()

    async def close(self) -> None:
        """Every background task first (downloads, heartbeat, announces, preheat jobs), then
        what they used: the peer transport, then the upstream session."""
        await self.tasks.close()
        await self.peer_side.close()
        await self.session.close()


AGENT_KEY: web.AppKey[AgentRuntime] = web.AppKey("agent_runtime", AgentRuntime)


def prepare_data_dir(config: AgentConfig) -> None:
    """Fail at start-up, naming the path, when the data dir cannot hold the cache: an agent
    that starts anyway would answer every pull with an error instead."""
    data = config.data_dir
    if data.exists() and not data.is_dir():
        raise ConfigError(f"data-dir {data} exists and is not a directory")
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data-dir {data}: cannot create it: {exc.strerror}") from None
    # os.access says yes to root on a read-only mount's files in some cases; a real write is
    # the only honest test.
    probe = data / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data-dir {data} is not writable: {exc.strerror}") from None


def _open_state(config: AgentConfig, store: BlobStore, manifests: ManifestStore) -> Identity:
    """Open the cache's layout; a part of it that is not a writable directory is named."""
    try:
        # A process killed between writing a state file's .tmp and renaming it leaves the
        # .tmp behind; the state file itself is whole (old or new), so the .tmp can go.
        for leftover in config.data_dir.glob("*.tmp"):
            leftover.unlink()
        store.open()
        manifests.open()
        identity = load_identity(config.data_dir)
    except OSError as exc:
        where = exc.filename or config.data_dir
        raise ConfigError(f"data-dir {config.data_dir}: {where}: {exc.strerror}") from None
    if config.peer_cert_file is None:
        return identity
    # With a fleet certificate the agent is who its certificate says: a tracker run with
    # --agent-ca-file accepts this agent's requests only under that name.
    try:
        name = certificate_name(config.peer_cert_file.read_bytes())
        return Identity(check_agent_id(name), identity.key)
    except OSError as exc:
        raise ConfigError(f"peer-cert-file {config.peer_cert_file}: {exc.strerror}") from None
    except (ValueError, InvalidRequest) as exc:
        raise ConfigError(f"peer-cert-file {config.peer_cert_file}: {exc}") from None


async def build_app(
    config: AgentConfig,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
    in_process_tracker: InProcessTracker | None = None,
) -> web.Application:
    """The agent as an aiohttp application. Without --tracker, ``in_process_tracker`` (built
    by the composition root) is its tracker; with neither, the agent is a plain mirror."""
    prepare_data_dir(config)
    # Read before anything is opened, so a bad token stops the agent with one line.
    tracker_token = (
        read_fleet_token(config.tracker_token_file, "tracker-token-file") if config.tracker else ""
    )
    credentials = load_credentials(config.credentials_file)
    unknown = set(credentials) - set(config.upstreams)
    if unknown:
        raise ConfigError(f"credentials-file names unknown upstream {sorted(unknown)[0]}")
    # A counter's `_created` series is a timestamp that reads like a count; no one needs it.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    metrics = AgentMetrics.create(registry or CollectorRegistry(), list(config.upstreams))

    store = BlobStore(
        config.data_dir,
        config.cache_size,
        reserve_bytes=config.disk_reserve,
        # With the torrent transport, each cached blob is also kept as segment files.
        copies=2 if config.p2p and config.tracker and config.peer_transport == "torrent" else 1,
    )
    store.on_evict.append(lambda _d: metrics.evictions.inc())
    manifests = ManifestStore(config.data_dir, clock=clock)
    identity = _open_state(config, store, manifests)

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, enable_cleanup_closed=True),
        auto_decompress=False,
        # Upstream bodies are passed through byte for byte; never let aiohttp decode them.
        skip_auto_headers=("Accept-Encoding",),
    )
    client = UpstreamClient(
        session,
        config.upstreams,
        credentials,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        clock=clock,
    )
    access = AccessChecker(
        client,
        ttl=config.auth_ttl,
        grace=config.auth_grace,
        clock=clock,
        state_file=config.data_dir / "anonymous-grants.json",
        origins_file=config.data_dir / "blob-origins",
    )
    tasks = Supervisor("agent")
    sources: list[BlobSource] = []
    fetcher = BlobFetcher(store, sources, metrics, tasks)
    mirror = Mirror(config, client, store, manifests, fetcher, access, metrics, clock=clock)

    async def run_preheat(image: str, hook: ProgressHook) -> list[LayerProgress]:
        return await preheat_image(mirror, config.upstreams, image, on_progress=hook)

    peer_side = build_peer_side(
        config,
        identity,
        session,
        store,
        metrics,
        fetcher,
        tasks,
        run_preheat,
        mirror.invalidate_tag,
        clock=clock,
        tracker_token=tracker_token,
        in_process=None if config.tracker else in_process_tracker,
    )
    if peer_side.transport is not None:
        # Peers first, the upstream when no peer can serve in time.
        sources.append(peer_side.transport.source())
        fetcher.on_cached.append(peer_side.transport.on_cached)
        fetcher.on_corrupt.append(peer_side.transport.on_corrupt)
        store.on_evict.append(peer_side.transport.on_evict)
        mirror.check_access_first = True
    sources.append(UpstreamSource(client, metrics, RetryPolicy(budget=config.upstream_retry_wait)))
    runtime = AgentRuntime(
        config,
        session,
        store,
        manifests,
        client,
        access,
        fetcher,
        mirror,
        metrics,
        peer_side,
        tasks,
    )

    app = web.Application(middlewares=[make_middleware(metrics)], client_max_size=64 << 10)
    app[AGENT_KEY] = runtime
    RegistryHandlers(config, mirror, client, store, metrics).add_routes(app)
    OpsHandlers(
        metrics, store, peer_side.tracker_state, describe_config(config, identity.agent_id)
    ).add_routes(app)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # Closed also when starting failed half way (the peer port taken, say).
        try:
            await runtime.start()
            yield
        finally:
            await runtime.close()

    if in_process_tracker is not None and not config.tracker:

        async def tracker_running(_app: web.Application) -> AsyncIterator[None]:
            async with in_process_tracker.running():
                yield

        # Before the agent's own start-up: its first heartbeat goes to this tracker.
        app.cleanup_ctx.append(tracker_running)
    app.cleanup_ctx.append(lifecycle)
    return app
