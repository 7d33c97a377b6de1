"""Fetching a blob from one parent at a time, as the tracker's plan says.

The plan comes from one tracker lookup: ``fetch`` (this agent holds the region's lease: the
upstream source runs next and this agent becomes the root of the blob's chains) or follow
peers. A follower announces itself as fetching (so later followers can attach below it),
then asks a few candidates at once and streams from the first that admits it. When the
parent's stream breaks or stalls, it reports the parent and attaches elsewhere, resuming at
its offset; when nobody admits it for ``peer_wait`` seconds, or the lease comes back to it,
the upstream continues from the same offset.

With ``tracker_parents`` (``--parent-choice tracker``) the lookup also asks the tracker to
choose the parent: it claims a free child slot in the layer's tree (for chains, the current
end) and this agent asks that parent alone, waiting while it is still attaching to its own.
A parent that cannot be reached is reported (the tracker takes it out of the tree) and the
next lookup names another; one that is busy after all sends us walking, as below.

Tracker requests per blob: one announce, one lookup, one holding announce, plus at most
``_MAX_LOOKUPS - 1`` more lookups while no candidate admits this agent. There is no
polling: the parent's open stream is the notification that bytes arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from agent.fetch import Download, FetchJob, SourceUnavailable
from agent.metrics import AgentMetrics
from agent.oci import Digest
from agent.relay.server import (
    AGENT_HEADER,
    CHILDREN_HEADER,
    LINEAGE_HEADER,
    SIZE_HEADER,
    SMALL_BLOB,
)
from agent.relay.state import RelayState
from agent.trackerlink import Coordinator, CoordinatorUnavailable, Lookup
from core.tasks import Supervisor
from core.wire import Peer

log = logging.getLogger(__name__)

# Candidates asked at once: a black-holed peer costs one header timeout, not one per peer.
_PARALLEL_ASKS = 3
_HEADER_TIMEOUT = 1.5
# A peer that did not answer (or refused the connection) is skipped for every blob for this
# long: the layers of one image are asked for together, and each must not wait it out again.
_DEAD_FOR = 30.0
# Lookups per blob while no candidate admits us (the first one included).
_MAX_LOOKUPS = 4
_RELOOKUP_AFTER = 1.0
_MAX_HINTS = 8
_BATCH = 256 << 10
_BATCH_WAIT = 0.01
# Downloads whose parents are remembered until verified, and digests distrusted after a
# wrong blob from peers (oldest forgotten first in both).
_MAX_BLAME = 1000


# A tracker-chosen parent still attaching to its own parent answers 409 (after waiting a
# moment itself): asked again after this pause, until --peer-wait runs out.
_NOT_YET_PAUSE = 0.05


@dataclass
class _Attached:
    peer: Peer
    resp: aiohttp.ClientResponse
    lineage: tuple[str, ...]


@dataclass
class _Refused:
    """A candidate that did not admit us: its status (0: unreachable; 508: it is below us)
    and the children it named when busy."""

    status: int
    hints: list[str]


class RelaySource:
    """The ``BlobSource`` of the relay transport (see agent.relay)."""

    name = "peer"

    def __init__(
        self,
        state: RelayState,
        coordinator: Coordinator,
        metrics: AgentMetrics,
        tasks: Supervisor,
        *,
        peer_wait: float,
        ssl_context: ssl.SSLContext | None,
        tracker_parents: bool = False,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._state = state
        self._tracker_parents = tracker_parents
        self._coordinator = coordinator
        self._metrics = metrics
        self._tasks = tasks
        self._peer_wait = peer_wait
        self._ssl = ssl_context
        self._scheme = "https" if ssl_context is not None else "http"
        self._clock = clock
        # Spreads simultaneous followers over candidates; no cryptographic need.
        self._rng = rng or random.Random()  # noqa: S311
        self._session: aiohttp.ClientSession | None = None
        # Digests whose peer copy failed verification: fetched from upstream for a while.
        self._distrust: dict[Digest, float] = {}
        self.distrust_seconds = 600.0
        # Parents that sent bytes of a download still in flight, to blame if it fails.
        self._parents: dict[Digest, set[str]] = {}
        self._dead: dict[str, float] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl or False),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- trust ----------------------------------------------------------------------

    def on_corrupt(self, digest: Digest, source: str) -> None:
        """A blob from peers failed its digest check: take it from the upstream for a while."""
        if source != self.name:
            return
        log.error("peers delivered wrong bytes for %s; using the upstream", digest)
        self._distrust[digest] = self._clock() + self.distrust_seconds
        while len(self._distrust) > _MAX_BLAME:
            del self._distrust[next(iter(self._distrust))]
        # Which of them lied is not known: every parent that sent bytes of it is reported.
        for parent in self._parents.pop(digest, set()):
            self._spawn_report(digest, parent)

    def forget(self, digest: Digest) -> None:
        """``digest`` verified: nobody is to blame."""
        self._parents.pop(digest, None)

    def _distrusted(self, digest: Digest) -> bool:
        until = self._distrust.get(digest)
        if until is None:
            return False
        if until < self._clock():
            del self._distrust[digest]
            return False
        return True

    # -- BlobSource -------------------------------------------------------------------

    async def fetch(self, job: FetchJob, download: Download) -> None:
        digest = str(job.digest)
        if self._distrusted(job.digest):
            raise SourceUnavailable("peers served this blob wrongly before")
        size = job.size
        # Chains pay off for large blobs only: a small one is served to everyone at once.
        assign = self._tracker_parents and (size is None or size > SMALL_BLOB)
        # Announce first: a follower that looks up after us finds us as a possible parent.
        try:
            await self._coordinator.announce(digest, "fetching", download.written, size)
            lookup = await self._coordinator.lookup(digest, assign=assign)
        except CoordinatorUnavailable as exc:
            raise SourceUnavailable("tracker unavailable") from exc
        if lookup.action == "fetch":
            raise SourceUnavailable("this agent holds the lease: upstream, then peers from us")
        try:
            await self._follow(job, download, lookup, assign)
        finally:
            self._state.detach(job.digest)

    async def _follow(
        self, job: FetchJob, download: Download, lookup: Lookup, assign: bool
    ) -> None:
        digest = job.digest
        asked: set[str] = set()
        lookups = 1
        now = last_lookup = self._clock()
        failed = {peer for peer, until in self._dead.items() if until > now}
        reported: set[str] = set()
        deadline = self._clock() + self._peer_wait
        while True:
            if job.size is not None and download.written >= job.size:
                # Whole already: a partial the agent left when it stopped between its last
                # write and the commit. Nothing to stream, but the clients waiting on this
                # download still hear that it can be had (they wait on ``started``).
                download.set_started(job.size)
                return
            unknown: set[str] = set()
            attached, gone = await self._find_parent(
                digest, download.written, lookup, failed, unknown, asked, deadline
            )
            if gone is not None:
                # The tracker's choice is unreachable or does not hold it: reported before
                # the next lookup, so that lookup already names someone else.
                reported.add(gone)
                lookups += 1
                last_lookup = self._clock()
                lookup = await self._relookup(digest, gone, assign)
                continue
            if attached is None:
                # Candidates that answered "busy" or "no source yet" are alive and worth
                # waiting for; when every one failed (silent, unreachable, not holding it)
                # waiting buys nothing: one more lookup, then the upstream.
                all_failed = not self._candidates(lookup, failed)
                if self._clock() >= deadline or (all_failed and lookups >= _MAX_LOOKUPS):
                    log.info(
                        "no parent for digest=%s after %d lookups: %d candidates failed (%s)",
                        digest,
                        lookups,
                        len(failed),
                        ",".join(sorted(failed)[:8]),
                    )
                    raise SourceUnavailable(
                        f"no peer could serve this agent ({len(failed)} failed)"
                    )
                if not all_failed:
                    # Alive but busy: chains free up as they form, so ask again soon.
                    await asyncio.sleep(0.02 + 0.03 * self._rng.random())
                named = sorted(unknown)[:_MAX_HINTS]
                dead = failed - reported
                since = self._clock() - last_lookup
                # Past the first few, lookups go at most once a second (new followers and the
                # chain's end are worth learning of while waiting; a flood is not).
                if (lookups < _MAX_LOOKUPS and (all_failed or named or dead)) or (
                    since >= _RELOOKUP_AFTER
                ):
                    # Peers that claimed the blob and could not serve it are reported first:
                    # a region "held" only by such claims would otherwise never hand anyone
                    # the lease. Busy parents' children we do not know are named, so the
                    # tracker can vouch for them and we can walk on to the end of their chain.
                    for peer_id in sorted(dead):
                        with contextlib.suppress(CoordinatorUnavailable):
                            await self._coordinator.report_unresponsive(str(digest), peer_id)
                    reported |= dead
                    lookups += 1
                    last_lookup = self._clock()
                    lookup = await self._lookup(str(digest), named, assign=assign)
                    if lookup.action == "fetch":
                        raise SourceUnavailable("the lease passed to this agent")
                continue
            outcome = await self._stream(job, download, attached)
            if outcome is None:
                return
            failed.add(attached.peer.agent_id)
            reported.add(attached.peer.agent_id)
            log.info(
                "parent %s of %s failed at offset %d: %s",
                attached.peer.agent_id,
                digest,
                download.written,
                outcome,
            )
            if attached.peer.agent_id == lookup.lease_holder or assign:
                # The root of every chain stopped (its lease is voided and we ask who fetches
                # now), or a parent the tracker chose did (it leaves the tree, and the lookup
                # after the report claims another slot; our own children stay below us).
                lookups += 1
                last_lookup = self._clock()
                lookup = await self._relookup(digest, attached.peer.agent_id, assign)
            else:
                self._spawn_report(digest, attached.peer.agent_id)
            deadline = self._clock() + self._peer_wait

    async def _relookup(self, digest: Digest, failed_peer: str, assign: bool) -> Lookup:
        """Report ``failed_peer`` (its lease or tree slot is voided), then look up again."""
        await self._report(digest, failed_peer)
        lookup = await self._lookup(str(digest), assign=assign)
        if lookup.action == "fetch":
            raise SourceUnavailable(f"the lease passed to this agent ({failed_peer} failed)")
        return lookup

    async def _lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> Lookup:
        try:
            return await self._coordinator.lookup(digest, named, assign=assign)
        except CoordinatorUnavailable as exc:
            raise SourceUnavailable("tracker unavailable") from exc

    # -- choosing a parent ----------------------------------------------------------------

    def _candidates(self, lookup: Lookup, failed: set[str]) -> list[Peer]:
        return order_candidates(lookup, failed, self._state.agent_id, self._rng)

    async def _find_parent(
        self,
        digest: Digest,
        offset: int,
        lookup: Lookup,
        failed: set[str],
        unknown: set[str],
        asked: set[str],
        deadline: float,
    ) -> tuple[_Attached | None, str | None]:
        """Our parent, asking the tracker's choice first when it made one, else walking the
        candidates; or, second, the tracker's choice when it turned out dead."""
        chosen = lookup.parent
        if chosen is not None and chosen not in failed:
            attached = await self._attach_chosen(
                digest, offset, lookup, chosen, failed, asked, deadline
            )
            if attached is not None:
                return attached, None
            if chosen in failed:
                return None, chosen
        return await self._attach(digest, offset, lookup, failed, unknown, asked), None

    async def _attach_chosen(
        self,
        digest: Digest,
        offset: int,
        lookup: Lookup,
        chosen: str,
        failed: set[str],
        asked: set[str],
        deadline: float,
    ) -> _Attached | None:
        """Ask the parent the tracker chose, alone (asking others too could take their
        slots); while it answers "no source yet" it is alive and attaching to its own parent
        (newcomers of one moment form their chain top down), so it is asked again."""
        peer = next((p for p in lookup.peers if p.agent_id == chosen), None)
        if peer is None:
            return None
        while True:
            got = await self._ask(peer, digest, offset, failed, asked, chosen_by="tracker")
            if isinstance(got, _Attached):
                return got
            if got.status != 409 or self._clock() >= deadline:
                log.info(
                    "parent chosen by the tracker refused digest=%s parent=%s status=%d",
                    digest,
                    chosen,
                    got.status,
                )
                return None
            await asyncio.sleep(_NOT_YET_PAUSE)

    async def _attach(
        self,
        digest: Digest,
        offset: int,
        lookup: Lookup,
        failed: set[str],
        unknown: set[str],
        asked: set[str],
    ) -> _Attached | None:
        """Ask candidates, a few at a time; the first that streams to us is our parent.

        A busy candidate names its children: they are asked next, so a newcomer walks down
        a chain to its free end in a few round trips. Only agents the tracker handed out are
        ever dialled; a name that is not among them is ignored.
        """
        known = {p.agent_id: p for p in lookup.peers}
        queue = self._candidates(lookup, failed)
        tried: set[str] = set()
        while queue:
            batch: list[Peer] = []
            while queue and len(batch) < _PARALLEL_ASKS:
                peer = queue.pop(0)
                if peer.agent_id not in tried and peer.agent_id not in failed:
                    tried.add(peer.agent_id)
                    batch.append(peer)
            if not batch:
                return None
            winner, hints = await self._ask_batch(batch, digest, offset, failed, asked)
            if winner is not None:
                return winner
            below = [known[h] for h in hints if h in known and h not in tried]
            unknown.update(h for h in hints if h not in known and h not in tried)
            queue = below + queue
        return None

    async def _ask_batch(
        self, batch: list[Peer], digest: Digest, offset: int, failed: set[str], asked: set[str]
    ) -> tuple[_Attached | None, list[str]]:
        asks = [asyncio.create_task(self._ask(p, digest, offset, failed, asked)) for p in batch]
        winner: _Attached | None = None
        hints: list[str] = []
        try:
            for fut in asyncio.as_completed(asks):
                got = await fut
                if isinstance(got, _Attached):
                    winner = got
                    break
                hints.extend(got.hints)
        finally:
            for t in asks:
                t.cancel()
            await asyncio.wait(asks)
            # An ask that attached after the winner (or failed: nothing to close) lets go.
            for t in asks:
                other = None if t.cancelled() or t.exception() else t.result()
                if isinstance(other, _Attached) and other is not winner:
                    other.resp.close()
        return winner, hints

    async def _ask(
        self,
        peer: Peer,
        digest: Digest,
        offset: int,
        failed: set[str],
        asked: set[str],
        *,
        chosen_by: str = "walk",
    ) -> _Attached | _Refused:
        """The parent's stream, or why not (with the children it named when busy)."""
        asked.add(peer.agent_id)
        url = f"{self._scheme}://{_host(peer.address)}:{peer.port}/v1/blobs/{digest}"
        headers = {AGENT_HEADER: self._state.agent_id}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with asyncio.timeout(_HEADER_TIMEOUT):
                resp = await self._http().get(url, headers=headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("peer %s for %s unreachable: %s", peer.agent_id, digest, exc)
            failed.add(peer.agent_id)
            self._dead[peer.agent_id] = self._clock() + _DEAD_FOR
            while len(self._dead) > _MAX_BLAME:
                del self._dead[next(iter(self._dead))]
            return _Refused(0, [])
        if resp.status not in (200, 206):
            log.debug("peer %s refused %s: %d", peer.agent_id, digest, resp.status)
            if resp.status == 404:
                failed.add(peer.agent_id)
            names = resp.headers.get(CHILDREN_HEADER, "") if resp.status == 503 else ""
            resp.close()
            return _Refused(resp.status, [n for n in names.split(",")[:_MAX_HINTS] if n])
        lineage = tuple(x for x in resp.headers.get(LINEAGE_HEADER, "").split(",") if x)
        if self._state.agent_id in lineage:
            resp.close()
            return _Refused(508, [])  # Loop Detected: it streams from below us
        # chosen_by and asked (peers asked for this blob so far) show from outside whether
        # the follower walked: the fleet test and the benchmark read them.
        log.info(
            "following parent=%s digest=%s offset=%d depth=%d chosen_by=%s asked=%d",
            peer.agent_id,
            digest,
            offset,
            len(lineage),
            chosen_by,
            len(asked),
        )
        return _Attached(peer, resp, lineage or (peer.agent_id,))

    # -- streaming ------------------------------------------------------------------------

    async def _stream(self, job: FetchJob, download: Download, parent: _Attached) -> str | None:
        """Copy the parent's stream into the download; None when the blob is complete,
        else why the parent failed us."""
        resp = parent.resp
        digest = job.digest
        size = job.size
        if size is None:
            # The upstream gave no size (it was unreachable at the access check): the
            # parent's says when to stop; the digest check still decides what is kept.
            claimed = resp.headers.get(SIZE_HEADER, "")
            size = int(claimed) if claimed.isdigit() else None
        self._state.attach(digest, parent.peer.agent_id, parent.lineage)
        self._parents.setdefault(digest, set()).add(parent.peer.agent_id)
        while len(self._parents) > _MAX_BLAME:
            del self._parents[next(iter(self._parents))]
        download.set_started(job.size)
        # A parent deep in a chain may wait on its own parent: give it longer before we
        # call it stalled, so the agent nearest a stall reacts first.
        stall = self._peer_wait + 2.0 * max(0, len(parent.lineage) - 1)
        try:
            while True:
                try:
                    async with asyncio.timeout(stall):
                        chunk = await _read_batch(resp.content)
                except TimeoutError:
                    return f"no bytes for {stall:g}s"
                except (aiohttp.ClientError, OSError) as exc:
                    return f"stream broke: {exc}"
                if not chunk:
                    break
                if size is not None and download.written + len(chunk) > size:
                    return "parent sent more bytes than the blob has"
                await download.append(chunk)
                self._metrics.count_peer_received(len(chunk))
            if size is not None and download.written >= size:
                return None
            if size is None and download.written:
                return None
            return f"stream ended at {download.written} bytes"
        finally:
            resp.close()
            self._state.detach(digest)

    def _spawn_report(self, digest: Digest, agent_id: str) -> None:
        self._tasks.spawn(self._report(digest, agent_id), name=f"report {agent_id}")

    async def _report(self, digest: Digest, agent_id: str) -> None:
        with contextlib.suppress(CoordinatorUnavailable):
            await self._coordinator.report_unresponsive(str(digest), agent_id)


async def _read_batch(content: aiohttp.StreamReader) -> bytes:
    """The next bytes of a stream, gathered for a moment when they come in small pieces.

    Through a shaped link TCP delivers a few KiB at a time; appending each piece on its own
    (write, hash, wake every reader) cost more CPU than the transfer itself. Waiting a few
    milliseconds for more adds that much latency per hop and cuts the work tenfold.
    """
    chunk = await content.readany()
    if not chunk or len(chunk) >= _BATCH:
        return chunk
    await asyncio.sleep(_BATCH_WAIT)
    parts = [chunk]
    size = len(chunk)
    while size < _BATCH:
        more = content.read_nowait(_BATCH - size)
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts)


def order_candidates(lookup: Lookup, failed: set[str], me: str, rng: random.Random) -> list[Peer]:
    """The peers of a lookup in the order a follower asks them (bench.fleet_sim models the
    relay with this same function).

    Holders first (complete, never wait on anyone), then the lease holder (fed by the
    upstream), then followers furthest along: the likeliest to have a free slot and a source
    of their own are asked first. Ties are shuffled so simultaneous followers spread out.
    """
    usable = [
        p
        for p in lookup.peers
        if p.agent_id not in failed and p.agent_id != me and 0 < p.port < 65536
    ]
    holders = [p for p in usable if p.state != "fetching"]
    fetching = [p for p in usable if p.state == "fetching"]
    rng.shuffle(holders)
    rng.shuffle(fetching)
    fetching.sort(key=lambda p: (p.agent_id != lookup.lease_holder, -p.progress_bytes))
    return holders + fetching


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
