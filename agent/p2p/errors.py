"""Errors raised by the peer-transfer engine.

Hierarchy::

    PeerTransferError         the engine could not do it; the caller falls back to upstream
    ├── InvalidMetainfo       metainfo from the network is malformed or unsafe (a ValueError)
    ├── PeerFetchTimeout      a fetch verified no piece for `stall_timeout` seconds
    │   └── PeerFetchCorrupt  ... and peers were banned for data that failed piece hashes
    └── EngineClosed          the engine was closed (or never started) during the call

libtorrent's own exceptions never leave ``agent.p2p.libtorrent_impl``: they are translated
there, with the original chained as ``__cause__``.
"""

from __future__ import annotations


class PeerTransferError(Exception):
    """A peer transfer failed; the segment must come from somewhere else."""


class InvalidMetainfo(PeerTransferError, ValueError):
    """Metainfo that must not be handed to libtorrent (bad bencode, multi-file, unsafe name...)."""


class PeerFetchTimeout(PeerTransferError):
    """No piece of the segment was verified within the stall timeout; partial data removed."""

    def __init__(
        self, message: str, *, info_hash: str, bad_peers: tuple[tuple[str, int], ...] = ()
    ):
        super().__init__(message)
        self.info_hash = info_hash
        self.bad_peers = bad_peers


class PeerFetchCorrupt(PeerFetchTimeout):
    """The fetch stalled and every byte peers sent for it failed hash checks.

    A subclass of PeerFetchTimeout because for the caller both mean "get it elsewhere"; this
    one also says which peers misbehaved (``bad_peers``), for the tracker to hear about.
    """


class EngineClosed(PeerTransferError):
    """The engine is not running."""
