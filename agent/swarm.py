"""The agent's peer-to-peer side: segments, publishing, fetching from peers, seeding.

A blob moves between agents as SEGMENTS (``segment_size`` bytes, the last one shorter), each
its own torrent. The agent that fetches a blob from upstream cuts it into segments as bytes
arrive and publishes each one (seeded here, metainfo to the tracker) as soon as it is
complete, so other agents start on the first segments while the rest is still arriving.
An agent fetching from peers takes segments in order, a few at a time, appends each to its
download (clients stream it as it grows) and seeds it at once.

Trust: libtorrent checks every piece against the segment's metainfo; the whole blob is then
checked against its digest by the fetcher before it is cached. Metainfo that leads to the
wrong digest is dropped here and the blob comes from the upstream instead.

Layout under the data directory::

    segments/<algo>-<hex>/<index>       segment files (seeded until the blob is evicted)
    segments/<algo>-<hex>/meta.json     the segments' metainfo, to seed again after restart
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.fetch import Download, FetchJob, SourceUnavailable
from agent.metrics import AgentMetrics
from agent.oci import Digest
from agent.p2p.engine import PeerEngine, PeerTransferError
from agent.trackerlink import Coordinator, CoordinatorUnavailable, Lookup
from core import durable
from core.digest import ALGORITHMS
from core.tasks import Supervisor
from core.trackererrors import InvalidRequest
from core.wire import SegmentMeta

log = logging.getLogger(__name__)

# Segments fetched from peers at once: enough to keep several peers busy, few enough that
# the download stays roughly in order for the client streaming it.
FETCH_WINDOW = 3
# Segment transfers one agent runs at once, over all blobs: more would split a seed's upload
# among so many transfers that none finishes soon enough to be passed on.
MAX_SEGMENT_FETCHES = 6
_POLL = 0.2
# Seconds between tracker lookups while waiting for segments, and once all are known.
_LOOKUP_WAITING = 0.5
_LOOKUP_PEERS = 5.0


class SegmentFiles:
    def __init__(self, root: Path) -> None:
        self.root = root / "segments"

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for p in self.root.iterdir():
            algo, _, hexpart = p.name.partition("-")
            if algo not in ALGORITHMS or len(hexpart) != ALGORITHMS[algo] or not p.is_dir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            else:
                for leftover in p.glob("*.tmp"):
                    leftover.unlink(missing_ok=True)

    def dir_for(self, digest: Digest) -> Path:
        return self.root / f"{digest.algorithm}-{digest.hex}"

    def path(self, digest: Digest, index: int) -> Path:
        return self.dir_for(digest) / f"{index:06d}"

    def save_meta(self, digest: Digest, segments: list[SegmentMeta], total: int) -> None:
        d = self.dir_for(digest)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"total": total, "segments": [s.to_json() for s in segments]}
        durable.write(d / "meta.json", json.dumps(meta).encode())

    def load_meta(self, digest: Digest) -> tuple[list[SegmentMeta], int] | None:
        try:
            doc = json.loads((self.dir_for(digest) / "meta.json").read_text())
            return [SegmentMeta.from_json(s) for s in doc["segments"]], int(doc["total"])
        except (OSError, ValueError, KeyError, TypeError, InvalidRequest):
            return None

    def remove(self, digest: Digest) -> None:
        shutil.rmtree(self.dir_for(digest), ignore_errors=True)

    def digests(self) -> list[Digest]:
        out = []
        for p in self.root.iterdir():
            algo, _, hexpart = p.name.partition("-")
            if algo in ALGORITHMS:
                out.append(Digest(algo, hexpart))
        return out


@dataclass
class Swarm:
    engine: PeerEngine
    coordinator: Coordinator
    files: SegmentFiles
    metrics: AgentMetrics
    segment_size: int
    peer_wait: float
    # The agent's background tasks: re-seeding, completing and announcing cached blobs.
    tasks: Supervisor
    clock: Callable[[], float] = time.monotonic
    _published: dict[Digest, list[SegmentMeta]] = field(default_factory=dict)
    _publishers: dict[Digest, _Publisher] = field(default_factory=dict)
    # Digests whose peer copy failed verification: fetched from upstream for a while.
    _distrust: dict[Digest, float] = field(default_factory=dict)
    distrust_seconds: float = 600.0
    fetch_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_SEGMENT_FETCHES)
    )

    def seeded(self) -> list[Digest]:
        return list(self._published)

    def on_corrupt(self, digest: Digest, source: str) -> None:
        """A blob failed its digest check; if it came from peers, their metainfo is bad."""
        if source != "peer":
            return
        log.error("metainfo from the fleet led to wrong bytes for %s; using upstream", digest)
        self._distrust[digest] = self.clock() + self.distrust_seconds
        self.on_evict(digest)

    def distrusted(self, digest: Digest) -> bool:
        until = self._distrust.get(digest)
        if until is None:
            return False
        if until < self.clock():
            del self._distrust[digest]
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, cached: Callable[[Digest], bool]) -> None:
        self.files.open()
        await self.engine.start()
        for digest in self.files.digests():
            meta = self.files.load_meta(digest)
            if not cached(digest) or meta is None:
                # Segments of a blob that is not (or no longer) cached are not ours to seed.
                self.files.remove(digest)
                continue
            self.tasks.spawn(self._reseed(digest, *meta), name=f"reseed {digest}")

    async def _reseed(self, digest: Digest, segments: list[SegmentMeta], total: int) -> None:
        try:
            for seg in segments:
                await self.engine.seed(seg.torrent, self.files.path(digest, seg.index))
            self._published[digest] = segments
            await self.coordinator.announce(str(digest), "holding", total, total)
        except (PeerTransferError, OSError) as exc:
            log.warning("could not seed digest=%s again: %s", digest, exc)
            self.files.remove(digest)
        except CoordinatorUnavailable:
            log.warning("tracker unavailable; digest=%s seeded but not announced", digest)

    async def close(self) -> None:
        """Stop the engine; the tasks that use it were ended by the owner of ``tasks``."""
        await self.engine.close()

    # -- cache events ---------------------------------------------------------------

    def on_cached(self, digest: Digest, path: Path, size: int) -> None:
        """A verified blob entered the cache: make sure it is fully seeded and announced."""
        self.tasks.spawn(self._complete(digest, path, size), name=f"seed {digest}")

    async def _complete(self, digest: Digest, path: Path, size: int) -> None:
        pub = self._publishers.get(digest)
        if pub is not None:
            # Let the publisher finish its segments first, so nothing is published twice
            # and its last "fetching" announcement can't land after our "holding".
            await pub.finished.wait()
        try:
            have = {s.index: s for s in self._published.get(digest, [])}
            wanted = _segment_count(size, self.segment_size)
            segments = []
            for index in range(wanted):
                seg = have.get(index)
                if seg is None:
                    seg = await self._publish_from(digest, path, index, size)
                segments.append(seg)
            self._published[digest] = segments
            self.files.save_meta(digest, segments, size)
            await self.coordinator.announce(str(digest), "holding", size, size)
        except CoordinatorUnavailable:
            log.info("tracker unavailable; digest=%s will be announced on the next start", digest)
        except (PeerTransferError, OSError) as exc:
            log.warning("could not publish digest=%s to peers: %s", digest, exc)

    def on_evict(self, digest: Digest) -> None:
        segments = self._published.pop(digest, [])
        self.tasks.spawn(self._withdraw(digest, segments), name=f"withdraw {digest}")

    async def _withdraw(self, digest: Digest, segments: list[SegmentMeta]) -> None:
        for seg in segments:
            with contextlib.suppress(PeerTransferError):
                await self.engine.stop(seg.info_hash)
        self.files.remove(digest)
        with contextlib.suppress(CoordinatorUnavailable):
            await self.coordinator.withdraw(str(digest))

    # -- publishing while fetching from upstream -------------------------------------------

    async def _publish_from(
        self, digest: Digest, src: Path, index: int, total: int | None
    ) -> SegmentMeta:
        offset = index * self.segment_size
        dest = self.files.path(digest, index)
        dest.parent.mkdir(parents=True, exist_ok=True)
        length = await asyncio.to_thread(_copy_range, src, dest, offset, self.segment_size)
        # A deterministic name: agents that cut the same blob (one per region) make the same
        # info-hashes, so their swarms are one.
        st = await self.engine.make_segment(dest, name=f"{digest.hex}.{index}")
        await self.engine.seed(st.metainfo, dest)
        seg = SegmentMeta(index, offset, length, st.info_hash, st.metainfo)
        await self.coordinator.publish_segment(str(digest), seg, total)
        return seg

    def attach_publisher(self, download: Download) -> None:
        """Publish ``download``'s segments as they complete (this agent fetches upstream)."""
        pub = _Publisher(self, download)
        self._publishers[download.digest] = pub
        download.listeners.append(pub.on_change)
        pub.on_change(download)

    # -- fetching from peers ----------------------------------------------------------

    def source(self) -> PeerSource:
        return PeerSource(self)


class _Publisher:
    def __init__(self, swarm: Swarm, download: Download) -> None:
        self._swarm = swarm
        self._dl = download
        self._next = download.written // swarm.segment_size
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._done = False
        self._failed = False
        self.finished = asyncio.Event()
        # Keep the partial file open: it is renamed into the cache when complete.
        self._fd_path = download.path
        swarm.tasks.spawn(self._run(), name=f"publish {download.digest}")

    def on_change(self, dl: Download) -> None:
        if self._done:
            return
        size = self._swarm.segment_size
        while dl.written >= (self._next + 1) * size:
            self._queue.put_nowait(self._next)
            self._next += 1
        if dl.finished:
            self._done = True
            if dl.error is None and dl.written > self._next * size:
                self._queue.put_nowait(self._next)
            elif dl.error is not None:
                self._failed = True
            self._queue.put_nowait(None)

    async def _run(self) -> None:
        try:
            await self._publish_all()
        finally:
            self.finished.set()
            if self._swarm._publishers.get(self._dl.digest) is self:
                del self._swarm._publishers[self._dl.digest]

    async def _publish_all(self) -> None:
        digest = self._dl.digest
        published: list[SegmentMeta] = list(self._swarm._published.get(digest, []))
        src = self._fd_path
        while True:
            index = await self._queue.get()
            if index is None:
                break
            if self._failed:
                continue
            path = src if src.exists() else (self._dl.final_path or src)
            try:
                seg = await self._swarm._publish_from(digest, path, index, self._dl.size)
                published.append(seg)
                self._swarm._published[digest] = list(published)
                if not self._dl.finished:
                    await self._swarm.coordinator.announce(
                        str(digest), "fetching", self._dl.written, self._dl.size
                    )
            except CoordinatorUnavailable:
                log.info("tracker unavailable; not publishing digest=%s", digest)
                return
            except (PeerTransferError, OSError) as exc:
                log.warning("could not publish segment %d of %s: %s", index, digest, exc)
                return
        if self._failed:
            # The upstream's bytes did not match the digest: take back what was published.
            self._swarm.on_evict(digest)


class PeerSource:
    """Fetches a blob's segments from peers, in order, as the tracker directs."""

    name = "peer"

    def __init__(self, swarm: Swarm) -> None:
        self._swarm = swarm

    async def fetch(self, job: FetchJob, download: Download) -> None:
        sw = self._swarm
        digest = str(job.digest)
        if sw.distrusted(job.digest):
            raise SourceUnavailable("peers served this blob wrongly before")
        if download.written % sw.segment_size:
            # Resumed from an odd offset (an interrupted upstream fetch): upstream finishes it.
            raise SourceUnavailable("partial download not on a segment boundary")
        try:
            lookup = await sw.coordinator.lookup(digest)
        except CoordinatorUnavailable as exc:
            raise SourceUnavailable("tracker unavailable") from exc
        if lookup.action == "fetch":
            # This agent holds the region's lease: it fetches upstream and shares as it goes.
            sw.attach_publisher(download)
            raise SourceUnavailable("lease holder fetches from upstream")
        # Say at once that we are fetching: the tracker then hands us out as a partner to
        # the other agents fetching the same blob, so they trade pieces with us, not only
        # with whoever holds it.
        with contextlib.suppress(CoordinatorUnavailable):
            await sw.coordinator.announce(digest, "fetching", download.written, lookup.total_size)
        try:
            await self._fetch_segments(job, download, lookup)
        except SourceUnavailable:
            # Whatever arrived stays; the upstream continues from here and we publish the rest.
            sw.attach_publisher(download)
            raise

    async def _fetch_segments(self, job: FetchJob, download: Download, lookup: Lookup) -> None:
        await _SegmentFollower(self._swarm, self, job, download, lookup).run()

    async def _fetch_one(
        self, digest: Digest, seg: SegmentMeta, peers: list[tuple[str, int]]
    ) -> Path:
        sw = self._swarm
        dest = sw.files.path(digest, seg.index)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def bad_peer(host: str, port: int) -> None:
            log.warning("peer %s:%d sent bad data for %s segment %d", host, port, digest, seg.index)
            sw.tasks.spawn(
                _report(sw.coordinator, str(digest), host, port), name=f"report {host}:{port}"
            )

        try:
            async with sw.fetch_slots:
                await sw.engine.fetch(
                    seg.torrent, dest, peers, stall_timeout=sw.peer_wait, on_bad_peer=bad_peer
                )
        except PeerTransferError as exc:
            raise SourceUnavailable(f"segment {seg.index}: {exc}") from exc
        if dest.stat().st_size != seg.length:
            raise SourceUnavailable(f"segment {seg.index} has the wrong length")
        return dest


class _SegmentFollower:
    """One blob's segments fetched from peers in order, a window of them running ahead of
    the one appended next, as the tracker's lookups say; the agent fetching the blob
    upstream (the lease holder) is given up on, once, when nothing arrives in time."""

    def __init__(
        self, swarm: Swarm, source: PeerSource, job: FetchJob, download: Download, lookup: Lookup
    ) -> None:
        self._sw = swarm
        self._source = source
        self._job = job
        self._dl = download
        self._digest = str(job.digest)
        self._lookup = lookup
        self._next = download.written // swarm.segment_size
        self._pending: dict[int, asyncio.Task[Path]] = {}
        self._last_progress = self._last_lookup = swarm.clock()
        self._known = len(lookup.segments)
        self._holder_bytes = _fetched_bytes(lookup)
        self._took_over = False
        # Who holds the lease, and since when: a new holder gets a full peer_wait before
        # anyone may call it stalled (two followers must not void each other's takeover).
        self._holder, self._holder_since = lookup.lease_holder, swarm.clock()

    async def run(self) -> None:
        sw = self._sw
        try:
            while True:
                if self._lookup.lease_holder != self._holder:
                    self._holder, self._holder_since = self._lookup.lease_holder, sw.clock()
                    self._last_progress = self._holder_since
                total = self._lookup.total_size
                if total is not None:
                    self._dl.set_started(total)
                    if self._dl.written >= total:
                        return
                by_index = {s.index: s for s in self._lookup.segments}
                self._fill_window(by_index)
                head = self._pending.get(self._next)
                if head is not None and head.done():
                    del self._pending[self._next]
                    await self._take(head, by_index, total)
                    continue
                # Running segment fetches guard themselves (the engine's stall timeout); this
                # deadline is for waiting on segments nobody has published yet.
                if not self._pending and sw.clock() - self._last_progress > sw.peer_wait:
                    await self._take_over(f"no progress from peers in {sw.peer_wait}s")
                    continue
                if head is not None:
                    await asyncio.wait({head}, timeout=_POLL)
                else:
                    await asyncio.sleep(_POLL)
                await self._ask_again()
        finally:
            for t in self._pending.values():
                t.cancel()
            # Their outcome no longer matters: only that none outlives this fetch.
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    def _fill_window(self, by_index: dict[int, SegmentMeta]) -> None:
        peers = [(p.address, p.port) for p in self._lookup.peers]
        for index in range(self._next, self._next + FETCH_WINDOW):
            if index in self._pending or index not in by_index:
                continue
            seg = by_index[index]
            if seg.offset != index * self._sw.segment_size:
                raise SourceUnavailable("segment layout does not match ours")
            self._pending[index] = asyncio.create_task(
                self._source._fetch_one(self._job.digest, seg, peers),
                name=f"segment {index} of {self._digest}",
            )

    async def _take(
        self, head: asyncio.Task[Path], by_index: dict[int, SegmentMeta], total: int | None
    ) -> None:
        """Append the segment fetched next, or deal with its failure."""
        sw = self._sw
        try:
            path = head.result()
        except SourceUnavailable as exc:
            if sw.clock() - self._holder_since < sw.peer_wait:
                return  # the lease just changed hands: ask the new holder
            # Nobody delivered this segment: claim the lease, or keep waiting on whoever the
            # tracker hands it to instead.
            await self._take_over(str(exc), exc)
            return
        seg = by_index[self._next]
        await _append_file(self._dl, path)
        sw.metrics.count_peer_received(seg.length)
        sw._published.setdefault(self._job.digest, []).append(seg)
        self._next += 1
        self._last_progress = sw.clock()
        with contextlib.suppress(CoordinatorUnavailable):
            await sw.coordinator.announce(self._digest, "fetching", self._dl.written, total)

    async def _take_over(self, reason: str, failure: SourceUnavailable | None = None) -> None:
        """The lease holder stopped delivering: report it and ask for its lease, once; the
        second time, give up on peers (the upstream continues from here)."""
        if self._took_over:
            raise failure if failure is not None else SourceUnavailable(reason)
        self._took_over = True
        self._lookup = await self._claim_lease(reason)
        self._last_progress = self._sw.clock()

    async def _claim_lease(self, reason: str) -> Lookup:
        """The agent fetching this blob upstream stopped delivering: report it (the tracker
        voids its lease) and ask again. One follower gets the lease and fetches upstream;
        the others follow that one, so a region still fetches the blob about once."""
        sw = self._sw
        holder = self._lookup.lease_holder
        if not holder:
            raise SourceUnavailable(reason)
        log.warning(
            "lease holder %s stalled on %s (%s); asking for its lease", holder, self._digest, reason
        )
        try:
            await sw.coordinator.report_unresponsive(self._digest, holder)
            fresh = await sw.coordinator.lookup(self._digest)
        except CoordinatorUnavailable as exc:
            raise SourceUnavailable("tracker unavailable") from exc
        if fresh.action == "fetch":
            raise SourceUnavailable(f"took over the lease of {holder}")
        return fresh

    async def _ask_again(self) -> None:
        """Ask the tracker again only for something new: more segments while the metainfo
        is incomplete, or now and then for more peers to trade with."""
        sw = self._sw
        since = sw.clock() - self._last_lookup
        if since < (_LOOKUP_WAITING if not self._lookup.complete else _LOOKUP_PEERS):
            return
        self._last_lookup = sw.clock()
        try:
            self._lookup = await sw.coordinator.lookup(self._digest)
        except CoordinatorUnavailable as exc:
            if not self._pending:
                raise SourceUnavailable("tracker unavailable") from exc
            return
        lookup = self._lookup
        if lookup.action == "fetch" and not self._pending:
            # The lease came back to us (its holder died): fetch the rest upstream.
            raise SourceUnavailable("lease handed to this agent")
        fetched = _fetched_bytes(lookup)
        if len(lookup.segments) > self._known or fetched > self._holder_bytes:
            # The agent fetching upstream is still making progress: keep waiting.
            self._last_progress = sw.clock()
        self._known, self._holder_bytes = len(lookup.segments), max(self._holder_bytes, fetched)
        new_peers = [(p.address, p.port) for p in lookup.peers]
        for seg in lookup.segments:
            if seg.index >= self._next:
                sw.engine.add_peers(seg.info_hash, new_peers)


def _fetched_bytes(lookup: Lookup) -> int:
    """How far the agents still fetching this blob have got, together."""
    return sum(p.progress_bytes for p in lookup.peers if p.state == "fetching")


async def _report(coordinator: Coordinator, digest: str, host: str, port: int) -> None:
    with contextlib.suppress(CoordinatorUnavailable):
        await coordinator.report_bad_peer(digest, host, port)


async def _append_file(download: Download, path: Path) -> None:
    with path.open("rb") as f:
        while True:
            chunk = await asyncio.to_thread(f.read, 1 << 20)
            if not chunk:
                return
            await download.append(chunk)


def _copy_range(src: Path, dest: Path, offset: int, length: int) -> int:
    tmp = dest.with_name(dest.name + ".tmp")
    copied = 0
    with src.open("rb") as fin, tmp.open("wb") as fout:
        fin.seek(offset)
        while copied < length:
            block = fin.read(min(1 << 20, length - copied))
            if not block:
                break
            fout.write(block)
            copied += len(block)
    durable.replace(tmp, dest)
    return copied


def _segment_count(size: int, segment_size: int) -> int:
    return max(1, -(-size // segment_size))
