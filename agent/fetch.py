"""Getting a missing blob into the cache once, while every waiting client streams it.

One ``Download`` per digest at a time. It writes into ``partial/`` and hashes as bytes
arrive; readers follow the file as it grows. The last byte is held back from readers until
the whole blob has been verified, so a client can never receive a complete, wrong blob: a
download that fails verification ends every reader's response short instead.

The download runs in its own task, not in a client's handler: a client that disconnects
does not stop the download the others wait on (as distribution's proxy blob store keeps
writing after its client leaves).

Sources are tried in order (peers first when peer-to-peer is on, then the upstream); a
source that fails mid-blob hands over to the next at the current offset.

Disk space: once a source knows the blob's size (``set_started``), the download claims room
for it in the store, evicting if needed; a blob that cannot fit is refused before the client
gets any header (``NoSpace``, 503). A write that still hits ENOSPC (another writer filled the
disk) makes room and retries once, then gives up and discards the partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import logging
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import aiohttp

from agent.blobstore import BlobStore, SpaceClaim
from agent.config import Upstream
from agent.errors import BlobIntegrityError, NoSpace, RegistryError, UpstreamError
from agent.metrics import AgentMetrics
from agent.oci import Digest
from agent.upstream import UpstreamClient, connection_failure, ensure_ok, relay_error
from core import durable
from core.failures import classify
from core.tasks import Supervisor

log = logging.getLogger(__name__)

_T = TypeVar("_T")

READ_CHUNK = 1 << 20
# Chunks at least this big are written and hashed in a thread (hashlib drops the GIL), so
# the event loop keeps serving other clients during a fast download.
_THREAD_CHUNK = 256 << 10


@dataclass(frozen=True)
class FetchJob:
    """What a download needs: never more credentials than the request that started it."""

    upstream: Upstream
    repo: str
    digest: Digest
    auth: str | None
    # Started by the agent itself (preheat, resume): it may run its own token flow.
    internal: bool = False
    # The blob's size as the upstream states it (its HEAD answer or a manifest descriptor).
    # Peers and the tracker never decide a blob's size: it is the length clients are told
    # and the point where a download from peers stops.
    size: int | None = None


class Download:
    """A blob on its way into the cache; readers follow it as it grows."""

    def __init__(
        self,
        digest: Digest,
        path: Path,
        store: BlobStore | None = None,
        expected_size: int | None = None,
    ) -> None:
        self.digest = digest
        self.path = path
        self._store = store
        self._claim: SpaceClaim | None = store.start_partial(digest) if store else None
        self.expected_size = expected_size
        self.size: int | None = expected_size
        self.written = 0
        self.source = "upstream"
        self.finished = False
        self.error: BaseException | None = None
        self.final_path: Path | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        self._hasher = digest.hasher()
        self._fd: int | None = None
        self._read_fd: int | None = None
        # Every source that wrote bytes into this download: the upstream alone is trusted
        # to be streamed to clients before the whole blob verified.
        self.sources_used: set[str] = set()
        # Bumped when the bytes so far are thrown away (peers sent a wrong blob); readers
        # of the old bytes are cut off.
        self.generation = 0
        # Called (on the loop) after every change: the peer layer publishes segments from here.
        self.listeners: list[Callable[[Download], None]] = []

    # -- writer side -------------------------------------------------------------

    def _open_for_append(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._read_fd is None:
            # One descriptor readers duplicate, opened with the file: a reader that starts
            # after the blob was committed and then evicted (both names gone) still reads it.
            # It is closed when the download object goes.
            fd = os.open(self.path, os.O_RDONLY)
            self._read_fd = fd
            weakref.finalize(self, os.close, fd)

    def discard(self) -> None:
        """Forget the bytes held (a partial that cannot be resumed) and start from zero.
        Only before any reader started: nobody has seen those bytes."""
        assert not self.started.done()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        self._hasher = self.digest.hasher()
        self.written = 0
        if self._claim is not None:
            self._claim.written = 0

    async def resume_existing(self) -> None:
        """Adopt bytes a previous run left in partial/ (re-hashing them; hash state isn't saved)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size:
            await asyncio.to_thread(self._hash_file_prefix, size)
            self.written = size
            # Whoever wrote them (maybe peers) is not known any more: not trusted to stream.
            self.sources_used.add("resumed")
            self._open_for_append()
        # Otherwise the file is created by set_started: a digest the upstream does not have
        # must leave nothing behind in partial/.

    def _hash_file_prefix(self, size: int) -> None:
        with self.path.open("rb") as f:
            remaining = size
            while remaining:
                block = f.read(min(READ_CHUNK * 4, remaining))
                if not block:
                    break
                self._hasher.update(block)
                remaining -= len(block)

    def _write(self, chunk: bytes) -> None:
        if self._fd is None:
            self._open_for_append()
        assert self._fd is not None
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # Part of the chunk may be on disk but not hashed: cut the file back to what the
            # hash covers, so a retry (or a resume after restart) appends at the right place.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.written)
            raise
        self._hasher.update(chunk)

    async def _write_any(self, chunk: bytes) -> None:
        if len(chunk) >= _THREAD_CHUNK:
            await asyncio.to_thread(self._write, chunk)
        else:
            self._write(chunk)

    async def append(self, chunk: bytes) -> None:
        if not chunk:
            return
        try:
            await self._write_any(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or self._store is None:
                raise
            # The disk filled under us (another writer, or a size we did not know): make
            # room once and retry; a second ENOSPC ends this download.
            log.warning(
                "disk full writing digest=%s at offset=%d; evicting to make room",
                self.digest,
                self.written,
            )
            if not self._store.make_room(len(chunk) * self._store.copies, exclude=self._claim):
                raise DiskFull(f"disk full while caching {self.digest}") from exc
            try:
                await self._write_any(chunk)
            except OSError as again:
                if again.errno != errno.ENOSPC:
                    raise
                raise DiskFull(f"disk full while caching {self.digest}") from again
        self.written += len(chunk)
        if self._claim is not None:
            self._claim.written = self.written
        self.sources_used.add(self.source)
        self._notify()

    def restart(self) -> None:
        """Throw away every byte so far (they failed verification) and start from zero."""
        # Truncated in place, not replaced: the readers' shared descriptor stays on this file.
        if self._fd is None:
            self._open_for_append()
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        self._hasher = self.digest.hasher()
        self.written = 0
        if self._claim is not None:
            self._claim.written = 0
        self.sources_used.clear()
        self.generation += 1
        self._notify()

    @property
    def trusted_stream(self) -> bool:
        """May clients read this download before it verified? Only while every byte came
        from the upstream: bytes from peers reach a client once the whole blob matched its
        digest, so a wrong blob from a peer is fetched again instead of failing the pull."""
        return self.source == "upstream" and self.sources_used <= {"upstream"}

    def verify(self) -> None:
        actual = self._hasher.hexdigest()
        if actual != self.digest.hex:
            raise BlobIntegrityError(
                f"content of {self.digest} hashes to {self.digest.algorithm}:{actual}"
            )

    def close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release_space(self) -> None:
        if self._store is not None and self._claim is not None:
            self._store.end_partial(self._claim)

    def set_started(self, size: int | None) -> None:
        """The source can deliver (``size`` bytes, when it says). Raises NoSpace, before any
        client has seen a header, when the blob cannot fit on this node's disk.

        With an expected size (the upstream's) a different claim is refused: the client's
        Content-Length and the end of every stream come from the upstream, not a source.
        """
        if self.expected_size is not None:
            if size is not None and size != self.expected_size:
                raise BlobIntegrityError(
                    f"{self.digest}: source says {size} bytes, the upstream {self.expected_size}"
                )
            size = self.expected_size
        if size is not None:
            if self._claim is not None and self._store is not None and self._claim.size != size:
                self._claim.written = self.written
                self._store.reserve(self._claim, size)
            self.size = size
        if self._fd is None:
            # Readers open the file once started; it must exist by then.
            self._open_for_append()
        if not self.started.done():
            self.started.set_result(None)

    def finish(self, final_path: Path) -> None:
        self.final_path = final_path
        self.finished = True
        # A verified blob has surely started, whether or not its source said so: a waiter on
        # ``started`` that is never woken holds its client until the client's read timeout.
        if not self.started.done():
            self.started.set_result(None)
        self._notify()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True
        if not self.started.done():
            self.started.set_exception(error)
            # Nobody may be waiting on `started` (everyone left); don't warn about it.
            self.started.exception()
        self._notify()

    async def wait_changed(self) -> None:
        """Return after the next progress, completion or failure."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            try:
                listener(self)
            except Exception:
                log.exception("download listener failed for %s", self.digest)

    # -- reader side -------------------------------------------------------------

    def available(self) -> int:
        """Bytes a reader may take: all once verified, else all but the last one."""
        if self.finished and self.error is None:
            return self.written
        return max(0, self.written - 1)

    async def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end] (inclusive) as they arrive; raises the download's error."""
        f = os.dup(self._read_fd) if self._read_fd is not None else self._open_reader()
        generation = self.generation
        try:
            pos = start
            while pos <= end:
                if self.generation != generation:
                    raise BlobIntegrityError(f"{self.digest} was restarted: its bytes were wrong")
                avail = self.available()
                if avail > pos:
                    n = min(avail, end + 1, pos + READ_CHUNK) - pos
                    # Small reads come from the page cache in microseconds: a thread hop per
                    # read would cost more than the read (relays read as bytes trickle in).
                    if n <= _THREAD_CHUNK:
                        data = os.pread(f, n, pos)
                    else:
                        data = await asyncio.to_thread(os.pread, f, n, pos)
                    if not data:
                        raise RuntimeError(f"cache file of {self.digest} shorter than written")
                    pos += len(data)
                    yield data
                    continue
                if self.error is not None:
                    raise self.error
                if self.finished:
                    # Finished with fewer bytes than the client asked for.
                    raise BlobIntegrityError(f"{self.digest} ended at {self.written} bytes")
                await self._changed.wait()
        finally:
            os.close(f)

    def _open_reader(self) -> int:
        # The partial file is renamed into the cache when complete; an fd opened on either
        # name keeps reading the same inode.
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if self.final_path is None:
                raise
            return os.open(self.final_path, os.O_RDONLY)


class BlobSource(Protocol):
    """Somewhere blob bytes can come from (the upstream, or peers).

    ``fetch`` writes the blob from ``download.written`` on into the download, calling
    ``download.set_started(size)`` once it knows it can deliver. It raises a RegistryError
    that the client should see (401, 404...) before starting, or SourceUnavailable to let the
    next source try; the fetcher verifies the digest, so a source need not.
    """

    name: str

    async def fetch(self, job: FetchJob, download: Download) -> None: ...


class SourceUnavailable(Exception):
    """This source cannot deliver the blob now; try the next one."""


class DiskFull(NoSpace):
    """ENOSPC mid-blob that evicting could not cure; the partial file is discarded."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long an upstream's 429/503 or a connection reset is waited out for one blob.

    ``budget`` bounds the total wait (the client is waiting too); a ``Retry-After`` longer
    than what is left of it is not waited for: the client gets the upstream's answer at once.
    """

    budget: float = 30.0
    attempts: int = 6
    first_backoff: float = 0.25
    max_backoff: float = 5.0

    def backoff(self, retry: int) -> float:
        base = min(self.max_backoff, self.first_backoff * 2.0**retry)
        # Jitter, so a fleet of agents reset at once do not come back in step.
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - not for security


class _StartOver(Exception):
    """The partial bytes were discarded: fetch again from zero, at once."""


class _Throttled(Exception):
    """The upstream said "not now" (429/503); ``error`` is what the client gets if we stop."""

    def __init__(self, error: RegistryError, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())


async def raise_if_throttled(resp: aiohttp.ClientResponse, upstream: str) -> None:
    """Raise _Throttled for the upstream's 429 or 503 (come back later); return otherwise."""
    if resp.status not in (429, 503):
        return
    error: RegistryError = await relay_error(resp)
    if resp.status == 503:
        # A 503 is the upstream's trouble, not the client's: our own body, with the
        # upstream's Retry-After so the client knows when to come back.
        error = UpstreamError(
            f"upstream {upstream} answered 503", status=503, headers=error.headers
        )
    raise _Throttled(error, parse_retry_after(resp.headers.get("Retry-After")))


async def with_retries(
    policy: RetryPolicy,
    upstream: str,
    metrics: AgentMetrics,
    what: str,
    attempt: Callable[[], Awaitable[_T]],
) -> _T:
    """Run one upstream request (``attempt``, which calls ``raise_if_throttled``) until it
    answers, waiting out 429/503 and resets before the answer within ``policy``; then raise
    what the client should see. For small answers (manifests): blobs resume by Range in
    UpstreamSource instead."""
    retries = 0
    waited = 0.0
    while True:
        try:
            return await attempt()
        except _Throttled as exc:
            final: RegistryError = exc.error
            reason = f"http_{exc.error.status}"
            delay = exc.retry_after if exc.retry_after is not None else policy.backoff(retries)
        except UpstreamError as exc:
            if not _reset_before_answer(exc):
                raise
            final, reason, delay = exc, exc.reason, policy.backoff(retries)
        metrics.upstream_errors.labels(upstream, reason).inc()
        retries += 1
        if retries >= policy.attempts or waited + delay > policy.budget:
            raise final
        log.warning(
            "retrying %s upstream=%s in %.2fs after %s (try %d of %d)",
            what,
            upstream,
            delay,
            reason,
            retries + 1,
            policy.attempts,
        )
        await asyncio.sleep(delay)
        waited += delay


def _reset_before_answer(exc: BaseException) -> bool:
    """A connection the upstream dropped before answering: worth another try, unlike a
    refused connection (upstream down: the client should hear it at once) or a timeout
    (already waited the read timeout)."""
    cause = exc.__cause__ if isinstance(exc, UpstreamError) else exc
    return isinstance(cause, aiohttp.ServerDisconnectedError | ConnectionResetError) or (
        isinstance(cause, aiohttp.ClientOSError) and cause.errno == errno.ECONNRESET
    )


class UpstreamSource:
    name = "upstream"

    def __init__(
        self, client: UpstreamClient, metrics: AgentMetrics, retry: RetryPolicy | None = None
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._retry = retry or RetryPolicy()

    async def fetch(self, job: FetchJob, download: Download) -> None:
        policy = self._retry
        retries = 0
        waited = 0.0
        while True:
            try:
                try:
                    await self._fetch_once(job, download)
                except _StartOver:
                    # From offset 0 now, so no second 416 can ask for another start-over.
                    await self._fetch_once(job, download)
                return
            except _Throttled as exc:
                final: BaseException = exc.error
                delay = exc.retry_after
                reason = f"http_{exc.error.status}"  # 429 or 503: see _fetch_once
                if delay is None:
                    delay = policy.backoff(retries)
            except (
                UpstreamError,
                aiohttp.ClientPayloadError,
                aiohttp.ClientConnectionError,
                TimeoutError,
            ) as exc:
                error = (
                    exc if isinstance(exc, UpstreamError) else connection_failure(job.upstream, exc)
                )
                reason = error.reason
                final = error
                if error is not exc:
                    final.__cause__ = exc
                # A download that started is resumed by Range; one that did not start is
                # retried only if the connection was reset (not refused, not timed out).
                if not download.started.done() and not _reset_before_answer(exc):
                    self._metrics.upstream_errors.labels(job.upstream.name, reason).inc()
                    raise final from exc
                delay = policy.backoff(retries)
            self._metrics.upstream_errors.labels(job.upstream.name, reason).inc()
            retries += 1
            if retries >= policy.attempts or waited + delay > policy.budget:
                log.warning(
                    "giving up on digest=%s upstream=%s after %d tries (%s); waited=%.1fs "
                    "next_wait=%.1fs budget=%.1fs",
                    job.digest,
                    job.upstream.name,
                    retries,
                    reason,
                    waited,
                    delay,
                    policy.budget,
                )
                raise final
            log.warning(
                "retrying digest=%s upstream=%s at offset=%d in %.2fs after %s (try %d of %d)",
                job.digest,
                job.upstream.name,
                download.written,
                delay,
                reason,
                retries + 1,
                policy.attempts,
            )
            await asyncio.sleep(delay)
            waited += delay

    async def _fetch_once(self, job: FetchJob, download: Download) -> None:
        offset = download.written
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._client.request(
            job.upstream,
            "GET",
            f"/v2/{job.repo}/blobs/{job.digest}",
            client_auth=job.auth,
            headers=headers,
            own_auth=job.internal,
        ) as resp:
            skip = 0
            await raise_if_throttled(resp, job.upstream.name)
            if resp.status == 416 and offset:
                # partial/ holds the whole blob or more: the agent stopped between the last
                # write and the commit. Exactly the size: verification decides; else the
                # bytes cannot be resumed, so start over (before any reader saw them).
                total = _range_total(resp.headers.get("Content-Range", ""))
                if total == offset:
                    download.set_started(total)
                    return
                log.warning(
                    "discarding partial digest=%s: %d bytes, upstream says the blob is %s",
                    job.digest,
                    offset,
                    total if total is not None else "shorter",
                )
                download.discard()
                raise _StartOver()
            if resp.status == 206 and offset:
                start, total = _content_range(resp.headers.get("Content-Range", ""))
                if start != offset:
                    raise UpstreamError(f"upstream {job.upstream.name} resumed at wrong offset")
                size = total
            elif resp.status == 200:
                # The upstream ignored our Range: discard what we already have.
                skip = offset
                size = resp.content_length
            else:
                await ensure_ok(resp, job.upstream.name)  # raises: not 200 here
            download.set_started(size)
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                self._metrics.count_upstream(job.upstream.name, len(chunk))
                data = chunk
                if skip:
                    take = min(skip, len(data))
                    data = data[take:]
                    skip -= take
                await download.append(data)
            if download.size is not None and download.written != download.size:
                raise aiohttp.ClientPayloadError(
                    f"upstream body ended at {download.written} of {download.size} bytes"
                )


def _range_total(value: str) -> int | None:
    # "bytes */1000" (a 416's Content-Range) or "bytes 0-99/1000"
    _, _, total = value.rpartition("/")
    return int(total) if total.strip().isdigit() else None


def _content_range(value: str) -> tuple[int, int | None]:
    # "bytes 100-199/1000" or "bytes 100-199/*"
    try:
        _unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.partition("-")[0])
        return start, (int(total) if total.strip() != "*" else None)
    except ValueError:
        return -1, None


@dataclass
class BlobFetcher:
    store: BlobStore
    sources: list[BlobSource]
    metrics: AgentMetrics
    # The agent's background tasks: a download outlives the request that started it.
    tasks: Supervisor
    on_cached: list[Callable[[Digest, Path, int], None]] = field(default_factory=list)
    # Called with (digest, source) when a download fails verification.
    on_corrupt: list[Callable[[Digest, str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._inflight: dict[Digest, Download] = {}

    def inflight_count(self) -> int:
        return len(self._inflight)

    def inflight(self, digest: Digest) -> Download | None:
        return self._inflight.get(digest)

    def downloads(self) -> list[Download]:
        return list(self._inflight.values())

    def start(self, job: FetchJob) -> tuple[Download, bool]:
        """The download for ``job.digest``: an existing one, or a new one started now.

        Returns (download, created). The caller awaits ``download.started`` to learn whether
        the blob can be had (its exception is the answer for the client).
        """
        existing = self._inflight.get(job.digest)
        if existing is not None:
            return existing, False
        dl = Download(job.digest, self.store.partial_path(job.digest), self.store, job.size)
        self._inflight[job.digest] = dl
        self.tasks.spawn(self._run(job, dl), name=f"download {job.digest}")
        return dl, True

    async def _run(self, job: FetchJob, dl: Download) -> None:
        t0 = time.monotonic()
        self.metrics.inflight.inc()
        try:
            await dl.resume_existing()
            await self._fetch_verified(job, dl)
            # The commit flushes the blob before renaming it into the cache; doing the costly
            # part here, off the event loop, leaves it nothing but metadata to write.
            await asyncio.to_thread(durable.sync_file, dl.path)
            self._commit(job, dl, t0)
        except asyncio.CancelledError:
            # Shutdown: keep partial bytes for a resume after restart.
            dl.fail(UpstreamError("agent shutting down", status=503))
            raise
        except NoSpace as exc:
            self._no_space(job, dl, exc)
        except RegistryError as exc:
            # Partial bytes stay in partial/ for a later request (maybe with other credentials).
            dl.fail(exc)
        except BlobIntegrityError as exc:
            log.error("discarded digest=%s: %s", job.digest, exc)
            dl.fail(exc)
        except Exception as exc:
            log.exception("download of %s failed", job.digest)
            dl.fail(UpstreamError(f"download of {job.digest} failed: {classify(exc).cause}"))
        finally:
            dl.close_file()
            dl.release_space()
            self.metrics.inflight.dec()
            if self._inflight.get(job.digest) is dl:
                del self._inflight[job.digest]

    async def _fetch_verified(self, job: FetchJob, dl: Download) -> None:
        """All of the blob in ``dl``'s partial file, hashed to its digest: a wrong blob from
        peers is fetched once more from the upstream; BlobIntegrityError otherwise."""
        for round_ in range(2):
            await self._try_sources(job, dl)
            dl.close_file()
            try:
                dl.verify()
                return
            except BlobIntegrityError as exc:
                tainted = dl.sources_used - {"upstream"}
                self.metrics.verify_failures.labels(dl.source).inc()
                for corrupt_hook in self.on_corrupt:
                    for source_name in tainted or {dl.source}:
                        corrupt_hook(job.digest, source_name)
                if not tainted or round_:
                    dl.path.unlink(missing_ok=True)
                    raise
                # Peers delivered a wrong blob; no client has read any of it (they wait
                # for verification). The peer source now refuses this digest, so the
                # next round comes from the upstream.
                log.error("wrong bytes from peers for %s (%s); fetching again", job.digest, exc)
                dl.restart()

    def _commit(self, job: FetchJob, dl: Download, t0: float) -> None:
        cached = self.store.commit(job.digest, dl.path)
        dl.finish(cached.path)
        self.metrics.fetch_seconds.labels(dl.source).observe(time.monotonic() - t0)
        log.info(
            "cached digest=%s repo=%s source=%s bytes=%d seconds=%.3f",
            job.digest,
            job.repo,
            dl.source,
            cached.size,
            time.monotonic() - t0,
        )
        for hook in self.on_cached:
            try:
                hook(job.digest, cached.path, cached.size)
            except Exception:
                log.exception("on_cached hook failed for %s", job.digest)

    def _no_space(self, job: FetchJob, dl: Download, exc: NoSpace) -> None:
        started = dl.started.done()
        outcome = "aborted" if started else "refused"
        self.metrics.no_space.labels(outcome).inc()
        # A blob that did not fit would not fit on resume either: its bytes only take room.
        dl.close_file()
        dl.path.unlink(missing_ok=True)
        log.error(
            "not caching digest=%s repo=%s: %s (%s %s; partial discarded at %d bytes)",
            job.digest,
            job.repo,
            exc.message,
            outcome,
            "mid-blob" if started else "before headers",
            dl.written,
        )
        dl.fail(exc)

    async def _try_sources(self, job: FetchJob, dl: Download) -> None:
        last_error: BaseException | None = None
        for source in self.sources:
            dl.source = source.name
            try:
                await source.fetch(job, dl)
                return
            except SourceUnavailable as exc:
                log.info(
                    "source=%s cannot serve digest=%s at offset=%d: %s",
                    source.name,
                    job.digest,
                    dl.written,
                    exc,
                )
                last_error = exc
        raise UpstreamError(f"no source could deliver {job.digest}", status=503) from last_error
