"""Content-addressed blob cache on disk, bounded by size, least recently used out first.

Layout under the data directory (every path derives from a validated digest, never from a
client-supplied string)::

    blobs/<algo>/<hex>          complete, verified blobs; mtime records last use
    partial/<algo>-<hex>        a download in progress or interrupted: resumable with Range
    tmp/                        scratch for small atomic writes; emptied at start-up

A blob appears under blobs/ only by ``os.replace`` of a file whose hash was checked, so a
reader can never see a half-written or wrong blob there. Eviction skips pinned blobs (those
being read) so a client's response is never cut short by the cache making room.
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

from agent.oci import ALGORITHMS, Digest

log = logging.getLogger(__name__)

# Persisting last-use times costs a syscall; once a minute per blob is plenty for LRU order
# that survives a restart.
_TOUCH_INTERVAL = 60.0


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
class BlobStore:
    root: Path
    max_bytes: int
    on_evict: list[EvictHook] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._index: OrderedDict[Digest, _Entry] = OrderedDict()
        self._total = 0
        self.evictions = 0

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
        for p in self.partial_dir.iterdir():
            algo, _, hexpart = p.name.partition("-")
            if algo not in ALGORITHMS or len(hexpart) != ALGORITHMS[algo] or not p.is_file():
                _remove(p)
        found.sort()
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
        os.replace(verified_file, dest)
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

    def _evict(self, keep: Digest | None = None) -> None:
        if self._total <= self.max_bytes:
            return
        for digest in list(self._index):
            if self._total <= self.max_bytes:
                break
            entry = self._index[digest]
            if entry.pins > 0 or digest == keep:
                continue
            del self._index[digest]
            self._total -= entry.size
            self.path_for(digest).unlink(missing_ok=True)
            self.evictions += 1
            log.info("evicted digest=%s bytes=%d", digest, entry.size)
            for hook in self.on_evict:
                try:
                    hook(digest)
                except Exception:
                    log.exception("eviction hook failed for %s", digest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
