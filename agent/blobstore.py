"""Content-addressed blob cache on disk, bounded by size, least recently used out first.

Layout under the data directory (every path derives from a validated digest, never from a
client-supplied string)::

    blobs/<algo>/<hex>          complete, verified blobs; mtime records last use
    partial/<algo>-<hex>        a download in progress or interrupted: resumable with Range
    tmp/                        scratch for small atomic writes; emptied at start-up

A blob appears under blobs/ only by a rename of a file whose hash was checked, flushed to
disk before the rename and the directory after it (``core.durable``), so neither a reader nor
a restart after a power cut can find a half-written or wrong blob there. Eviction skips
pinned blobs (those being read) so a client's response is never cut short by the cache making
room.

Two bounds apply: ``max_bytes`` of cached blobs (``--cache-size``) and a free-space reserve on
the filesystem itself (``--disk-reserve``), since the disk may be smaller than the cache size
or shared with other writers. A download claims the room for its blob before its first byte
(``reserve``); when evicting every unpinned blob and idle partial would still not make room,
it is refused with ``NoSpace`` instead of filling the disk and failing mid-blob.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import NoSpace
from agent.oci import Digest
from core import durable
from core.digest import ALGORITHMS

log = logging.getLogger(__name__)

# Persisting last-use times costs a syscall; once a minute per blob is plenty for LRU order
# that survives a restart.
_TOUCH_INTERVAL = 60.0
# A partial download untouched this long is collected at start-up.
_PARTIAL_MAX_AGE = 24 * 3600.0


@dataclass
class _Entry:
    size: int
    last_touch: float
    pins: int = 0


@dataclass
class CachedBlob:
    digest: Digest
    path: Path
    size: int


EvictHook = Callable[[Digest], None]


@dataclass
class SpaceClaim:
    """Room on disk promised to one download: ``size`` bytes once known, ``written`` so far."""

    digest: Digest
    size: int | None = None
    written: int = 0

    def outstanding(self, copies: int) -> int:
        if self.size is None:
            return 0
        return max(0, self.size - self.written) * copies


def filesystem_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass
class BlobStore:
    root: Path
    max_bytes: int
    on_evict: list[EvictHook] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    # Bytes the filesystem must keep free after any write the cache makes.
    reserve_bytes: int = 0
    # How many bytes of disk one blob byte costs (2 with peer-to-peer: the segment copy).
    copies: int = 1
    free_space: Callable[[Path], int] = filesystem_free

    def __post_init__(self) -> None:
        self._index: OrderedDict[Digest, _Entry] = OrderedDict()
        self._total = 0
        self.evictions = 0
        # Downloads writing into partial/ now: their files are not idle leftovers.
        self._writing: dict[Digest, SpaceClaim] = {}

    # -- layout ---------------------------------------------------------------

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path_for(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex

    def partial_path(self, digest: Digest) -> Path:
        return self.partial_dir / f"{digest.algorithm}-{digest.hex}"

    # -- start-up ---------------------------------------------------------------

    def open(self) -> None:
        """Create the layout, drop scratch leftovers and rebuild the index from disk."""
        for d in (self.blobs_dir, self.partial_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, Digest, int]] = []
        for algo, hexlen in ALGORITHMS.items():
            adir = self.blobs_dir / algo
            adir.mkdir(exist_ok=True)
            for p in adir.iterdir():
                if len(p.name) != hexlen or not p.is_file():
                    # Anything else is not ours to serve: a stray file from an old version
                    # or a crash between write and rename.
                    log.warning("removing unexpected file in cache: %s", p)
                    _remove(p)
                    continue
                st = p.stat()
                found.append((st.st_mtime, Digest(algo, p.name), st.st_size))
        now = self.clock()
        for p in self.partial_dir.iterdir():
            algo, _, hexpart = p.name.partition("-")
            if algo not in ALGORITHMS or len(hexpart) != ALGORITHMS[algo] or not p.is_file():
                _remove(p)
                continue
            st = p.stat()
            # An empty partial holds nothing to resume; one untouched for a day is a blob
            # nobody asked for again. Neither may pile up across restarts.
            if st.st_size == 0 or now - st.st_mtime > _PARTIAL_MAX_AGE:
                log.info("collecting stale partial download %s", p.name)
                _remove(p)
        # By last use only: two blobs touched in the same instant must not be compared by
        # digest (Digest has no order, and a TypeError here kept the agent from starting).
        found.sort(key=lambda item: item[0])
        for mtime, digest, size in found:
            self._index[digest] = _Entry(size=size, last_touch=mtime)
            self._total += size
        log.info("cache opened: %d blobs, %d bytes", len(self._index), self._total)
        self._evict()

    # -- reads ----------------------------------------------------------------

    def get(self, digest: Digest) -> CachedBlob | None:
        entry = self._index.get(digest)
        if entry is None:
            return None
        self._index.move_to_end(digest)
        now = self.clock()
        path = self.path_for(digest)
        if now - entry.last_touch > _TOUCH_INTERVAL:
            entry.last_touch = now
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
        return CachedBlob(digest=digest, path=path, size=entry.size)

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._index

    def digests(self) -> list[Digest]:
        return list(self._index)

    @contextlib.contextmanager
    def pin(self, digest: Digest) -> Iterator[None]:
        """Keep ``digest`` from being evicted while the block runs (a response being sent)."""
        entry = self._index.get(digest)
        if entry is not None:
            entry.pins += 1
        try:
            yield
        finally:
            if entry is not None:
                entry.pins -= 1

    @property
    def total_bytes(self) -> int:
        return self._total

    # -- writes ---------------------------------------------------------------

    def commit(self, digest: Digest, verified_file: Path) -> CachedBlob:
        """Move a file whose content was verified to hash to ``digest`` into the cache."""
        dest = self.path_for(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = verified_file.stat().st_size
        durable.replace(verified_file, dest)
        now = self.clock()
        old = self._index.pop(digest, None)
        if old is not None:
            self._total -= old.size
        self._index[digest] = _Entry(size=size, last_touch=now)
        self._total += size
        self._evict(keep=digest)
        return CachedBlob(digest=digest, path=dest, size=size)

    def new_tmp_path(self, hint: str) -> Path:
        return self.tmp_dir / f"{hint}.{os.getpid()}.{time.monotonic_ns()}"

    def remove(self, digest: Digest) -> None:
        entry = self._index.pop(digest, None)
        if entry is not None:
            self._total -= entry.size
        self.path_for(digest).unlink(missing_ok=True)

    # -- room on disk ---------------------------------------------------------------

    def start_partial(self, digest: Digest) -> SpaceClaim:
        """Mark ``partial/`` of ``digest`` as being written (not an idle leftover to collect)."""
        claim = SpaceClaim(digest)
        self._writing[digest] = claim
        return claim

    def end_partial(self, claim: SpaceClaim) -> None:
        if self._writing.get(claim.digest) is claim:
            del self._writing[claim.digest]

    def reserve(self, claim: SpaceClaim, size: int) -> None:
        """Promise room for the rest of a ``size``-byte blob, evicting to make it.

        Raises NoSpace when even an empty cache would leave less than the reserve free.
        """
        claim.size = size
        need = max(0, size - claim.written) * self.copies
        if not self.make_room(need, exclude=claim):
            claim.size = None
            raise NoSpace(
                f"no room to cache {claim.digest} ({size} bytes): "
                f"{self.free_space(self.root)} bytes free, reserve {self.reserve_bytes}"
            )

    def room_left(self, exclude: SpaceClaim | None = None) -> int:
        """Free bytes beyond the reserve, minus what running downloads have yet to write."""
        promised = sum(
            c.outstanding(self.copies) for c in self._writing.values() if c is not exclude
        )
        return self.free_space(self.root) - promised - self.reserve_bytes

    def make_room(self, need: int, exclude: SpaceClaim | None = None) -> bool:
        """Collect idle partials, then evict least recently used blobs, until ``need`` bytes
        fit above the reserve; False when nothing more can go."""
        room = self.room_left(exclude)
        if room >= need:
            return True
        idle = self._idle_partials()
        freeable = sum(_size(p) for p in idle) + self.copies * sum(
            e.size for e in self._index.values() if e.pins == 0
        )
        if room + freeable < need:
            # Emptying the cache would not be enough: keep it, and refuse.
            return False
        for partial in idle:
            log.info("collecting idle partial download %s to make room", partial.name)
            _remove(partial)
            if self.room_left(exclude) >= need:
                return True
        for digest in list(self._index):
            if self.room_left(exclude) >= need:
                return True
            self._evict_one(digest, why="disk reserve")
        return self.room_left(exclude) >= need

    def _idle_partials(self) -> list[Path]:
        busy = {self.partial_path(d).name for d in self._writing}
        try:
            found = [p for p in self.partial_dir.iterdir() if p.name not in busy]
        except OSError:
            return []

        def age(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        return sorted(found, key=age)

    def _evict(self, keep: Digest | None = None) -> None:
        if self._total > self.max_bytes:
            for digest in list(self._index):
                if self._total <= self.max_bytes:
                    break
                if digest != keep:
                    self._evict_one(digest, why="cache size")
        if self.reserve_bytes and self.room_left() < 0:
            for digest in list(self._index):
                if self.room_left() >= 0:
                    break
                if digest != keep:
                    self._evict_one(digest, why="disk reserve")

    def _evict_one(self, digest: Digest, *, why: str) -> None:
        entry = self._index.get(digest)
        if entry is None or entry.pins > 0:
            return
        del self._index[digest]
        self._total -= entry.size
        self.path_for(digest).unlink(missing_ok=True)
        self.evictions += 1
        log.info("evicted digest=%s bytes=%d reason=%s", digest, entry.size, why)
        for hook in self.on_evict:
            try:
                hook(digest)
            except Exception:
                log.exception("eviction hook failed for %s", digest)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
