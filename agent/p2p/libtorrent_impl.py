"""PeerEngine on libtorrent: the only module that imports libtorrent.

One ``lt.session`` per engine. libtorrent runs its own network and disk threads; this module
talks to it in three ways, all chosen to keep the event loop free:

* commands that only post a message to the session thread (``connect_peer``,
  ``rename_file``, ``remove_torrent``, ``post_session_stats``) are called on the loop;
* calls that block until the session thread answers (``add_torrent``, constructing or
  destroying the session) run in a worker thread;
* results come back as alerts: libtorrent writes a byte to a pipe when its alert queue
  becomes non-empty, the loop wakes on that pipe and dispatches every alert to the futures
  waiting for it. No thread ever touches our futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libtorrent as lt

from agent.p2p.engine import (
    BadPeerCallback,
    EngineStats,
    FleetTLS,
    Peer,
    SegmentTorrent,
)
from agent.p2p.errors import (
    EngineClosed,
    InvalidMetainfo,
    PeerFetchCorrupt,
    PeerFetchTimeout,
    PeerTransferError,
)
from agent.p2p.metainfo import (
    DEFAULT_MAX_LENGTH,
    TorrentInfo,
    build_metainfo,
    check_name,
    default_piece_length,
    hash_pieces,
    parse_metainfo,
)
from agent.p2p.pki import ffdhe2048_pem

log = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
_REMOVE_TIMEOUT = 10.0

_STAT_NAMES = {
    "uploaded": "net.sent_payload_bytes",
    "downloaded": "net.recv_payload_bytes",
    "failed": "net.recv_failed_bytes",
    "peers": "peer.num_peers_connected",
    "seeding": "ses.num_seeding_torrents",
}


@dataclass(frozen=True)
class EngineOptions:
    """Tuning of one engine; the agent fills it from AgentConfig.

    The throughput defaults are the ones measured best on loopback in TESTBED.md (about
    +30% over libtorrent's defaults for peer-to-peer transfers on this hardware).
    """

    listen: tuple[str, int] = ("127.0.0.1", 0)
    ssl_listen_port: int = 0  # with FleetTLS; 0 picks a free one
    upload_rate: int = 0  # bytes/s for the whole engine, 0 = unlimited
    download_rate: int = 0
    max_connections: int = 200
    aio_threads: int = 4
    hashing_threads: int = 2
    send_buffer_watermark: int = 8 << 20
    max_queued_disk_bytes: int = 64 << 20
    max_out_request_queue: int = 1500
    max_segment_length: int = DEFAULT_MAX_LENGTH


@dataclass(eq=False)
class _Torrent:
    info_hash: str
    handle: Any  # lt.torrent_handle
    path: Path  # where the complete segment lives (or will, once fetched)
    fetching: bool
    done: asyncio.Future[None]
    last_progress: float = 0.0
    bad_peers: list[Peer] = field(default_factory=list)
    on_bad_peer: BadPeerCallback | None = None
    hash_failures: int = 0
    early_peers: list[Peer] = field(default_factory=list)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hash_of(alert: Any) -> str:
    return str(alert.handle.info_hashes().v1)


class LibtorrentEngine:
    """The PeerEngine protocol (see agent.p2p.engine) on one libtorrent session."""

    def __init__(self, options: EngineOptions | None = None, *, tls: FleetTLS | None = None):
        self._opts = options or EngineOptions()
        self._tls = tls
        self._ses: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: tuple[int, int] | None = None
        self._torrents: dict[str, _Torrent] = {}
        # Futures resolved by alerts that outlive a torrent handle, keyed by info-hash.
        self._removed: dict[str, asyncio.Future[None]] = {}
        self._renamed: dict[str, asyncio.Future[None]] = {}
        self._deleting: set[str] = set()  # removals that also delete the file
        self._stats_waiters: list[asyncio.Future[dict[str, int]]] = []
        self._listen_waiter: asyncio.Future[None] | None = None
        self._ports: dict[str, int] = {}
        self._ca_norm = tls.ca_pem.strip() if tls else None
        self._handlers = self._alert_handlers()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        self._running()
        return self._ports["tcp"]

    @property
    def ssl_listen_port(self) -> int | None:
        self._running()
        return self._ports.get("tcp_ssl")

    @property
    def peer_port(self) -> int:
        ssl_port = self.ssl_listen_port
        return ssl_port if ssl_port is not None else self.listen_port

    async def start(self) -> None:
        if self._ses is not None:
            raise PeerTransferError("engine already started")
        self._loop = asyncio.get_running_loop()
        host, port = self._opts.listen
        interfaces = _host_port(host, port)
        if self._tls is not None:
            interfaces += "," + _host_port(host, self._opts.ssl_listen_port) + "s"
        settings = self._settings(interfaces)
        self._listen_waiter = self._loop.create_future()
        # The bindings accept a plain settings dict; their stubs only list settings_pack.
        self._ses = await asyncio.to_thread(lambda: lt.session(settings))  # type: ignore[call-overload]
        self._apply_rate_limits_to_all_peers()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._ses.set_alert_fd(write_fd)
        self._loop.add_reader(read_fd, self._on_alerts)
        # Alerts queued before the fd was set never wrote to it.
        self._on_alerts()
        try:
            await asyncio.wait_for(self._listen_waiter, _START_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        log.info(
            "peer engine listening host=%s port=%d ssl_port=%s",
            host,
            self._ports["tcp"],
            self._ports.get("tcp_ssl"),
        )

    def _settings(self, interfaces: str) -> dict[str, Any]:
        o = self._opts
        cat = lt.alert_category
        return {
            "listen_interfaces": interfaces,
            # A configured port that is taken must fail start-up, not silently become another
            # port the operator's firewall does not open.
            "max_retry_port_bind": 0,
            "listen_system_port_fallback": False,
            # Peers come only from our tracker: no public discovery, no port mapping.
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            # TCP only: tc shaping, firewalls and TLS (SSL over uTP is rarely exercised)
            # all behave predictably with it, and LEDBAT would yield to every other flow.
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            # Agents behind one NAT, or several on one host, share an address.
            "allow_multiple_connections_per_ip": True,
            # No RC4 obfuscation: it is unauthenticated and broken, so it would only look like
            # security; fleet swarms get real mutual TLS instead, and plain mode is for one node
            # or a network the operator already trusts. It would also cost CPU on every byte.
            "in_enc_policy": int(lt.enc_policy.pe_disabled),
            "out_enc_policy": int(lt.enc_policy.pe_disabled),
            "upload_rate_limit": o.upload_rate,
            "download_rate_limit": o.download_rate,
            "connections_limit": o.max_connections,
            "send_buffer_watermark": o.send_buffer_watermark,
            "max_queued_disk_bytes": o.max_queued_disk_bytes,
            "max_out_request_queue": o.max_out_request_queue,
            "aio_threads": o.aio_threads,
            "hashing_threads": o.hashing_threads,
            # Fleet peers are on a LAN: retry a refused peer (it may not have the torrent
            # yet) within seconds, not libtorrent's internet-scale minute.
            "min_reconnect_time": 2,
            # Unchoke everyone: fleet peers cooperate, so tit-for-tat buys nothing, and the
            # default 8 slots are shared by all torrents of the session (one per segment).
            # Measured: 1 seed, 3 receivers, 24 segments: 1.9-2.2 s vs 2.2-3.0 s with 8 slots.
            # Upload stays bounded by upload_rate_limit and connections_limit.
            "unchoke_slots_limit": -1,
            "peer_connect_timeout": 7,
            "alert_queue_size": 10000,
            "alert_mask": int(cat.error | cat.peer | cat.status | cat.storage | cat.piece_progress),
            "user_agent": "layerswarm",
        }

    def _apply_rate_limits_to_all_peers(self) -> None:
        # libtorrent exempts "local" peers (loopback and private ranges) from rate limits by
        # putting them in a separate peer class. A fleet's peers are all on private
        # networks, so the limits would never apply: put every address in the global class.
        flt = lt.ip_filter()
        everyone = 1 << int(lt.session.global_peer_class_id)
        flt.add_rule("0.0.0.0", "255.255.255.255", everyone)
        flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
        self._ses.set_peer_class_filter(flt)

    async def close(self) -> None:
        ses, self._ses = self._ses, None
        if self._loop is not None and self._pipe is not None:
            self._loop.remove_reader(self._pipe[0])
        failure = EngineClosed("peer engine closed")
        for t in self._torrents.values():
            if not t.done.done():
                t.done.set_exception(failure)
                # Mark retrieved: nobody may be awaiting a fetch that was never awaited.
                t.done.exception()
        pending: list[asyncio.Future[Any]] = [
            *self._removed.values(),
            *self._renamed.values(),
            *self._stats_waiters,
        ]
        for fut in pending:
            if not fut.done():
                fut.set_exception(failure)
                fut.exception()
        self._torrents.clear()
        self._removed.clear()
        self._renamed.clear()
        self._stats_waiters.clear()
        if ses is not None:
            holder = [ses]
            del ses
            # The session's destructor joins libtorrent's threads: never on the loop.
            await asyncio.to_thread(holder.clear)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _running(self) -> Any:
        if self._ses is None:
            raise EngineClosed("peer engine is not running")
        return self._ses

    # -- making and seeding -----------------------------------------------------------

    async def make_segment(
        self, path: Path, *, name: str, piece_length: int | None = None
    ) -> SegmentTorrent:
        check_name(name)
        ca = self._tls.ca_pem if self._tls else None

        def build() -> SegmentTorrent:
            size = path.stat().st_size
            plen = piece_length or default_piece_length(size)
            length, pieces = hash_pieces(path, plen)
            info_hash, meta = build_metainfo(
                name=name, length=length, piece_length=plen, pieces=pieces, ssl_cert=ca
            )
            return SegmentTorrent(info_hash=info_hash, metainfo=meta, length=length)

        return await asyncio.to_thread(build)

    async def seed(self, metainfo: bytes, path: Path) -> None:
        self._running()
        info = self._validate(metainfo)
        existing = self._torrents.get(info.info_hash)
        if existing is not None:
            if existing.path != path:
                raise PeerTransferError(
                    f"segment {info.info_hash} is already served from another path"
                )
            return
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise PeerTransferError(f"cannot seed {path}: {exc.strerror}") from exc
        if size != info.length:
            raise InvalidMetainfo(f"{path} has {size} bytes, the torrent says {info.length}")
        # seed_mode: the caller verified the data; pieces are hashed lazily only if a peer
        # asks, instead of re-reading the whole file on add.
        handle = await self._add(metainfo, path.parent, path.name, seed_mode=True)
        done = self._loop_().create_future()
        done.set_result(None)
        self._torrents[info.info_hash] = _Torrent(
            info_hash=info.info_hash, handle=handle, path=path, fetching=False, done=done
        )
        log.debug("seeding segment info_hash=%s path=%s", info.info_hash, path)

    # -- fetching ---------------------------------------------------------------------

    async def fetch(
        self,
        metainfo: bytes,
        dest: Path,
        peers: Sequence[Peer],
        *,
        stall_timeout: float,
        on_bad_peer: BadPeerCallback | None = None,
    ) -> None:
        self._running()
        info = self._validate(metainfo)
        existing = self._torrents.get(info.info_hash)
        if existing is not None:
            if existing.path != dest:
                raise PeerTransferError(
                    f"segment {info.info_hash} is already being fetched to another path"
                )
            self.add_peers(info.info_hash, peers)
            await asyncio.shield(existing.done)
            return

        loop = self._loop_()
        part = dest.with_name(dest.name + ".part")
        t = _Torrent(
            info_hash=info.info_hash,
            handle=None,
            path=dest,
            fetching=True,
            done=loop.create_future(),
            last_progress=loop.time(),
            on_bad_peer=on_bad_peer,
        )
        # Registered before the add so alerts about the new torrent find it.
        self._torrents[info.info_hash] = t
        try:
            t.handle = await self._add(metainfo, dest.parent, part.name, seed_mode=False)
            self.add_peers(info.info_hash, [*peers, *t.early_peers])
            while not t.done.done():
                remaining = t.last_progress + stall_timeout - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait([t.done], timeout=remaining)
            if not t.done.done():
                bad = tuple(t.bad_peers)
                cls = PeerFetchCorrupt if bad or t.hash_failures else PeerFetchTimeout
                raise cls(
                    f"segment {info.info_hash}: no verified progress in {stall_timeout:g}s"
                    f" ({t.hash_failures} pieces failed hash checks)",
                    info_hash=info.info_hash,
                    bad_peers=bad,
                )
            t.done.result()
        except BaseException as exc:
            if self._torrents.get(info.info_hash) is t:
                del self._torrents[info.info_hash]
            self._renamed.pop(info.info_hash, None)
            if not t.done.done():
                # Concurrent fetches of this hash share our outcome; a cancellation here is
                # ours alone, so they see a transfer error rather than a CancelledError.
                shared = exc if isinstance(exc, Exception) else PeerTransferError("fetch cancelled")
                t.done.set_exception(shared)
                t.done.exception()  # retrieved: there may be no one else waiting
            if t.handle is not None and self._ses is not None:
                # Shielded: a cancelled fetch must still clean up its partial file.
                with contextlib.suppress(PeerTransferError, TimeoutError):
                    await asyncio.shield(self._remove(t, delete=True))
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
            raise
        log.debug("fetched segment info_hash=%s dest=%s", info.info_hash, dest)

    def add_peers(self, info_hash: str, peers: Sequence[Peer]) -> None:
        t = self._torrents.get(info_hash)
        if t is None:
            return
        if t.handle is None:
            # The tracker answered while the torrent was still being added: keep them.
            t.early_peers.extend(peers)
            return
        for ip, port in peers:
            if (ip, port) in t.bad_peers:
                continue
            try:
                t.handle.connect_peer((ip, port))
            except (RuntimeError, ValueError) as exc:
                # An unparsable address from the tracker must not fail the whole fetch.
                log.warning("cannot connect to peer %s:%s: %s", ip, port, exc)

    # -- stopping and stats -----------------------------------------------------------

    async def stop(self, info_hash: str, *, delete_file: bool = False) -> None:
        self._running()
        t = self._torrents.pop(info_hash, None)
        if t is None:
            return
        if not t.done.done():
            t.done.set_exception(PeerTransferError(f"segment {info_hash} was stopped"))
            t.done.exception()
        if t.handle is not None:
            await self._remove(t, delete=delete_file)

    def has(self, info_hash: str) -> bool:
        return info_hash in self._torrents

    async def stats(self) -> EngineStats:
        ses = self._running()
        fut: asyncio.Future[dict[str, int]] = self._loop_().create_future()
        self._stats_waiters.append(fut)
        ses.post_session_stats()
        values = await asyncio.wait_for(fut, _START_TIMEOUT)
        return EngineStats(
            uploaded_bytes=values[_STAT_NAMES["uploaded"]],
            downloaded_bytes=values[_STAT_NAMES["downloaded"]],
            failed_bytes=values[_STAT_NAMES["failed"]],
            torrents=len(self._torrents),
            seeding=values[_STAT_NAMES["seeding"]],
            peers=values[_STAT_NAMES["peers"]],
        )

    # -- internals --------------------------------------------------------------------

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _validate(self, metainfo: bytes) -> TorrentInfo:
        info = parse_metainfo(metainfo, max_length=self._opts.max_segment_length)
        if self._ca_norm is not None and (
            info.ssl_cert is None or info.ssl_cert.strip() != self._ca_norm
        ):
            # A plain (or foreign-CA) torrent would let anyone serve or read this segment.
            raise InvalidMetainfo(f"segment {info.info_hash} is not a swarm of this fleet")
        if self._ca_norm is None and info.ssl_cert is not None:
            raise InvalidMetainfo(f"segment {info.info_hash} needs fleet TLS, none configured")
        return info

    async def _add(
        self, metainfo: bytes, save_dir: Path, file_name: str, *, seed_mode: bool
    ) -> Any:
        ses = self._running()
        try:
            ti = lt.torrent_info(metainfo)
        except RuntimeError as exc:
            raise InvalidMetainfo(f"libtorrent rejected the metainfo: {exc}") from exc
        p = lt.add_torrent_params()
        p.ti = ti
        p.save_path = str(save_dir)
        # The file is always the caller's path; the torrent's own name is never used on disk.
        p.renamed_files = {0: file_name}
        # Not auto-managed: libtorrent would otherwise run only a few torrents at once and
        # park the rest for tens of seconds (we have many small torrents per layer).
        p.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        if seed_mode:
            p.flags |= lt.torrent_flags.seed_mode
        try:
            handle = await asyncio.to_thread(ses.add_torrent, p)
        except RuntimeError as exc:
            raise PeerTransferError(f"libtorrent could not add the torrent: {exc}") from exc
        if self._tls is not None:
            # In memory, so the agent key is never written anywhere by the engine.
            handle.set_ssl_certificate_buffer(
                self._tls.cert_pem.decode(), self._tls.key_pem.decode(), ffdhe2048_pem().decode()
            )
        return handle

    async def _remove(self, t: _Torrent, *, delete: bool) -> None:
        ses = self._running()
        fut = self._loop_().create_future()
        self._removed[t.info_hash] = fut
        if delete:
            self._deleting.add(t.info_hash)
        ses.remove_torrent(t.handle, int(lt.session.delete_files) if delete else 0)
        try:
            await asyncio.wait_for(fut, _REMOVE_TIMEOUT)
        except TimeoutError:
            raise PeerTransferError(f"libtorrent did not remove {t.info_hash}") from None
        finally:
            self._deleting.discard(t.info_hash)
            if self._removed.get(t.info_hash) is fut:
                del self._removed[t.info_hash]

    def _on_alerts(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._pipe[0], 4096):
                    pass
        if self._ses is None:
            return
        for alert in self._ses.pop_alerts():
            try:
                self._dispatch(alert)
            except Exception:
                log.exception("error handling libtorrent alert %s", type(alert).__name__)

    def _dispatch(self, a: Any) -> None:
        for kinds, handle in self._handlers:
            if isinstance(a, kinds):
                handle(a)
                return

    def _alert_handlers(self) -> tuple[tuple[Any, Callable[[Any], None]], ...]:
        """What each alert the engine cares about does; any other alert is ignored."""
        return (
            (lt.listen_succeeded_alert, self._on_listening),
            (lt.listen_failed_alert, self._on_listen_failed),
            (lt.session_stats_alert, self._on_stats),
            (lt.torrent_removed_alert | lt.torrent_deleted_alert, self._on_removed),
            (lt.torrent_delete_failed_alert, self._on_delete_failed),
            (lt.piece_finished_alert, self._on_piece),
            (lt.hash_failed_alert, self._on_hash_failed),
            (lt.peer_ban_alert, self._on_ban),
            (lt.torrent_finished_alert, self._on_finished),
            (lt.file_renamed_alert, self._on_renamed),
            (lt.file_rename_failed_alert, self._on_rename_failed),
            (lt.torrent_error_alert, self._on_torrent_error),
            # Posted on every add, before _add installs the cert; only worth a debug line.
            (
                lt.torrent_need_cert_alert,
                lambda a: log.debug("TLS cert asked for %s", a.torrent_name),
            ),
            (lt.peer_error_alert | lt.file_error_alert, lambda a: log.debug("%s", a.message())),
        )

    def _on_listening(self, a: Any) -> None:
        # socket_type is an lt.socket_type_t (not the alert's own legacy enum).
        kind = {lt.socket_type_t.tcp: "tcp", lt.socket_type_t.tcp_ssl: "tcp_ssl"}.get(a.socket_type)
        if kind:
            self._ports[kind] = a.port
        want = {"tcp", "tcp_ssl"} if self._tls else {"tcp"}
        if want <= self._ports.keys() and self._listen_waiter and not self._listen_waiter.done():
            self._listen_waiter.set_result(None)

    def _on_listen_failed(self, a: Any) -> None:
        log.error("peer engine cannot listen: %s", a.message())
        # Only the TCP sockets matter: uTP is off, its UDP socket is incidental.
        tcp = a.socket_type in (lt.socket_type_t.tcp, lt.socket_type_t.tcp_ssl)
        if tcp and self._listen_waiter and not self._listen_waiter.done():
            self._listen_waiter.set_exception(
                PeerTransferError(f"cannot listen for peers: {a.message()}")
            )

    def _on_stats(self, a: Any) -> None:
        waiters, self._stats_waiters = self._stats_waiters, []
        values = {name: int(a.values[name]) for name in _STAT_NAMES.values()}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(values)

    def _on_removed(self, a: Any) -> None:
        ih = str(a.info_hashes.v1)
        removed = self._removed.get(ih)
        # Without delete_files only torrent_removed_alert comes; with it, wait until the
        # file is gone (deleted) so a retry can start from scratch.
        if removed is not None and not removed.done():
            deleting = isinstance(a, lt.torrent_deleted_alert)
            if deleting or not self._awaits_delete(ih):
                removed.set_result(None)

    def _on_delete_failed(self, a: Any) -> None:
        removed = self._removed.get(str(a.info_hashes.v1))
        if removed is not None and not removed.done():
            log.warning("could not delete partial segment: %s", a.message())
            removed.set_result(None)

    def _on_piece(self, a: Any) -> None:
        t = self._torrents.get(_hash_of(a))
        if t is not None:
            t.last_progress = self._loop_().time()

    def _on_hash_failed(self, a: Any) -> None:
        t = self._torrents.get(_hash_of(a))
        if t is not None:
            t.hash_failures += 1
        log.warning("piece failed hash check info_hash=%s piece=%d", _hash_of(a), a.piece_index)

    def _on_finished(self, a: Any) -> None:
        t = self._torrents.get(_hash_of(a))
        if t is not None and t.fetching and t.handle is not None:
            t.fetching = False
            self._renamed[t.info_hash] = t.done
            # Only now does the file get its final name: a file at dest is complete.
            t.handle.rename_file(0, t.path.name)

    def _on_renamed(self, a: Any) -> None:
        renamed = self._renamed.pop(_hash_of(a), None)
        if renamed is not None and not renamed.done():
            renamed.set_result(None)

    def _on_rename_failed(self, a: Any) -> None:
        renamed = self._renamed.pop(_hash_of(a), None)
        if renamed is not None and not renamed.done():
            renamed.set_exception(
                PeerTransferError(f"cannot rename fetched segment: {a.message()}")
            )

    def _on_torrent_error(self, a: Any) -> None:
        t = self._torrents.get(_hash_of(a))
        log.error("torrent error: %s", a.message())
        if t is not None and not t.done.done():
            t.done.set_exception(PeerTransferError(a.message()))

    def _awaits_delete(self, info_hash: str) -> bool:
        return info_hash in self._deleting

    def _on_ban(self, a: Any) -> None:
        ip, port = str(a.endpoint[0]), int(a.endpoint[1])
        ih = _hash_of(a)
        log.warning("banned peer for bad data peer=%s:%d info_hash=%s", ip, port, ih)
        t = self._torrents.get(ih)
        if t is None:
            return
        if (ip, port) not in t.bad_peers:
            t.bad_peers.append((ip, port))
            if t.on_bad_peer is not None:
                try:
                    t.on_bad_peer(ip, port)
                except Exception:
                    log.exception("on_bad_peer callback failed")
