"""The relay transport as the agent sees it: one object built in one place, with the same
hooks the torrent swarm offers (source, cache events, what to announce)."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from agent.blobstore import BlobStore
from agent.fetch import BlobFetcher
from agent.metrics import AgentMetrics
from agent.oci import Digest
from agent.p2p.engine import FleetTLS
from agent.relay.server import PeerServer
from agent.relay.source import RelaySource
from agent.relay.state import RelayState
from agent.trackerlink import Coordinator, CoordinatorUnavailable
from core.tasks import Supervisor

log = logging.getLogger(__name__)


def server_context(tls: FleetTLS, cert_file: str, key_file: str) -> ssl.SSLContext:
    """Peers must show a certificate from the fleet CA (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=tls.ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def client_context(tls: FleetTLS, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A parent must show a certificate from the fleet CA. Agent certificates name agents,
    not addresses, so membership of the fleet is what is checked, not the host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=tls.ca_pem.decode())
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class Relay:
    def __init__(
        self,
        agent_id: str,
        coordinator: Coordinator,
        store: BlobStore,
        fetcher: BlobFetcher,
        metrics: AgentMetrics,
        tasks: Supervisor,
        *,
        listen: tuple[str, int],
        peer_wait: float,
        max_children: int,
        fanout: str = "depth",
        parent_choice: str = "walk",
        upload_rate: int = 0,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coordinator = coordinator
        self._store = store
        self._listen = listen
        self._server_ssl = server_ssl
        self._tasks = tasks
        self.state = RelayState(agent_id)
        self.server = PeerServer(
            self.state,
            store,
            fetcher,
            metrics,
            max_children=max_children,
            fanout=fanout,
            upload_rate=upload_rate,
        )
        self._source = RelaySource(
            self.state,
            coordinator,
            metrics,
            tasks,
            peer_wait=peer_wait,
            tracker_parents=parent_choice == "tracker",
            ssl_context=client_ssl,
            clock=clock,
        )

    @property
    def peer_port(self) -> int:
        return self.server.port

    async def start(self, cached: Callable[[Digest], bool]) -> None:
        del cached  # every cached blob is served as it is: nothing to re-seed
        await self.server.start(*self._listen, self._server_ssl)

    async def close(self) -> None:
        """Close the peer port and the source's connections; the tasks that use them were
        ended by the owner of ``tasks``."""
        await self.server.close()
        await self._source.close()

    def seeded(self) -> list[Digest]:
        return self._store.digests()

    def source(self) -> RelaySource:
        return self._source

    # -- cache events ---------------------------------------------------------------

    def on_cached(self, digest: Digest, _path: object, size: int) -> None:
        self._source.forget(digest)
        self._tasks.spawn(self._announce(digest, "holding", size), name=f"announce {digest}")

    def on_evict(self, digest: Digest) -> None:
        self._tasks.spawn(self._withdraw(digest), name=f"withdraw {digest}")

    def on_corrupt(self, digest: Digest, source: str) -> None:
        self._source.on_corrupt(digest, source)

    async def _announce(self, digest: Digest, state: str, size: int) -> None:
        try:
            await self._coordinator.announce(str(digest), state, size, size)
        except CoordinatorUnavailable:
            log.info("tracker unavailable; digest=%s is announced with the next register", digest)

    async def _withdraw(self, digest: Digest) -> None:
        with contextlib.suppress(CoordinatorUnavailable):
            await self._coordinator.withdraw(str(digest))
