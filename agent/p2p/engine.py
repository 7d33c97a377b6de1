"""The peer-transfer engine's contract: what the agent may ask of it, and what it promises.

The agent cuts each layer into segments (one file each) and moves every segment as its own
torrent. This module is the boundary; ``agent.p2p.libtorrent_impl.LibtorrentEngine`` is the
implementation and the only place libtorrent is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.p2p.errors import (
    EngineClosed,
    InvalidMetainfo,
    PeerFetchCorrupt,
    PeerFetchTimeout,
    PeerTransferError,
)
from agent.p2p.metainfo import TorrentInfo, parse_metainfo

__all__ = [
    "BadPeerCallback",
    "EngineClosed",
    "EngineStats",
    "FleetTLS",
    "InvalidMetainfo",
    "Peer",
    "PeerEngine",
    "PeerFetchCorrupt",
    "PeerFetchTimeout",
    "PeerTransferError",
    "SegmentTorrent",
    "TorrentInfo",
    "parse_metainfo",
]

Peer = tuple[str, int]
"""A peer's (IP address, port), as the tracker hands it out."""

BadPeerCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class SegmentTorrent:
    """A segment ready to publish: its info-hash (hex), bencoded metainfo and byte length."""

    info_hash: str
    metainfo: bytes
    length: int


@dataclass(frozen=True)
class FleetTLS:
    """PEM material for fleet-only swarms: the fleet CA, and this agent's cert and key.

    With it, every torrent the engine makes names the CA (``ssl-cert``), so libtorrent only
    exchanges data over mutually authenticated TLS with peers holding a cert from that CA.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        # Never put key material in logs or tracebacks.
        return "FleetTLS(ca_pem=..., cert_pem=..., key_pem=<redacted>)"


@dataclass(frozen=True)
class EngineStats:
    """Totals since start: payload bytes (no protocol overhead) and current counts."""

    uploaded_bytes: int
    downloaded_bytes: int
    failed_bytes: int  # received but failed a piece hash check
    torrents: int
    seeding: int
    peers: int


class PeerEngine(Protocol):
    """Moves segment files between agents. All methods run on the agent's event loop.

    Lifecycle: ``await start()`` once before anything else (binds the peer ports), ``await
    close()`` once at shutdown (stops every transfer; files stay). Calls on an engine that is
    not running raise EngineClosed. Every blocking call (hashing, libtorrent) runs off the loop.

    Paths: the engine never chooses one. Callers pass the file path of each segment; a torrent's
    name only feeds its hash and never becomes a path.

    Integrity: every piece is checked against the SHA-1 in the metainfo before it counts; a
    peer whose data fails is banned from that swarm and reported. Metainfo from the network is
    validated (``parse_metainfo``) before use and rejected with InvalidMetainfo. The caller is
    responsible for trusting the metainfo itself (it came from the tracker, the agent that made
    it verified the layer digest) and for checking the whole layer's digest after reassembly.

    Fleet TLS: an engine built with FleetTLS makes only SSL torrents, fetches/seeds only
    torrents whose ``ssl-cert`` is its own fleet CA, and peers must be dialled on ``peer_port``
    (the SSL port). Without it, swarms are plain, unauthenticated TCP: for one node or a
    network the operator already trusts.
    """

    @property
    def listen_port(self) -> int:
        """The bound plain peer port (after start)."""
        ...

    @property
    def ssl_listen_port(self) -> int | None:
        """The bound TLS peer port, or None without FleetTLS."""
        ...

    @property
    def peer_port(self) -> int:
        """The port to advertise to the tracker: ssl_listen_port with FleetTLS, else listen_port."""
        ...

    async def start(self) -> None:
        """Open the session and bind; raises PeerTransferError if the ports cannot be bound."""
        ...

    async def close(self) -> None:
        """Stop every transfer and release the session. Idempotent; pending fetches fail."""
        ...

    async def make_segment(
        self, path: Path, *, name: str, piece_length: int | None = None
    ) -> SegmentTorrent:
        """Hash the complete file at ``path`` into a torrent named ``name``; does not seed it.

        ``piece_length`` defaults to metainfo.default_piece_length(size). Raises
        InvalidMetainfo for an unsafe name or an empty file, OSError if the file is unreadable.
        """
        ...

    async def seed(self, metainfo: bytes, path: Path) -> None:
        """Serve the already-verified segment at ``path`` (no recheck). Idempotent per hash.

        Raises InvalidMetainfo if the metainfo is invalid, is not for this fleet, or its length
        differs from the file's.
        """
        ...

    async def fetch(
        self,
        metainfo: bytes,
        dest: Path,
        peers: Sequence[Peer],
        *,
        stall_timeout: float,
        on_bad_peer: BadPeerCallback | None = None,
    ) -> None:
        """Download the segment to ``dest`` from ``peers`` (more via add_peers), then seed it.

        Data lands in ``dest`` + ".part" and is renamed to ``dest`` only once every piece has
        passed its hash check, so a file at ``dest`` is always complete. There is no overall
        deadline (a slow but moving swarm is fine; wrap the call in ``asyncio.timeout`` for
        one): if no piece is verified for ``stall_timeout`` seconds the fetch fails with
        PeerFetchTimeout (PeerFetchCorrupt if peers were banned for bad data), the torrent
        and the partial file are removed. ``on_bad_peer(ip, port)`` is called (on the loop)
        for each peer banned for sending data that failed a hash check.

        A second fetch of a hash already being fetched waits for the first (and its dest must
        be the same); a fetch of a hash already complete here returns at once. Cancelling the
        call cancels the fetch and removes the partial file.
        """
        ...

    def add_peers(self, info_hash: str, peers: Sequence[Peer]) -> None:
        """Connect a running fetch or seed to more peers; unknown hashes are ignored."""
        ...

    async def stop(self, info_hash: str, *, delete_file: bool = False) -> None:
        """Stop serving a segment (eviction) and forget it; unknown hashes are ignored."""
        ...

    def has(self, info_hash: str) -> bool:
        """True if the engine is fetching or seeding this hash."""
        ...

    async def stats(self) -> EngineStats:
        """Fresh totals for metrics; cheap, but asks the session, so not for tight loops."""
        ...
