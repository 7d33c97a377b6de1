"""Manifests by digest (immutable, kept) and the last digest seen for each tag.

Layout under the data directory::

    manifests/<algo>/<hex>        the manifest bytes, verified against the digest
    manifests/<algo>/<hex>.type   its media type
    tags/<sha256 of upstream, repo, tag>.json   {"digest", "media_type", "fetched_at"}

Tag files let a restarted agent still answer a tag while the upstream is down. Their names
are hashes, so no client-supplied string ever becomes a path.

Freshness (``--tag-ttl``) is measured on the monotonic clock, so a wall-clock jump on the node
can neither keep a moved tag fresh for a day nor expire every tag at once. A record read back
from disk after a restart has no monotonic time: it counts as stale and is revalidated first
(its wall-clock ``fetched_at`` is only informational).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.oci import Digest, parse_digest
from core import durable

log = logging.getLogger(__name__)

_RECENT_MANIFESTS = 1024


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes
    fetched: bool = False  # True when this answer came from the upstream just now


@dataclass(frozen=True)
class TagEntry:
    digest: Digest
    media_type: str
    # On the store's monotonic clock; -inf for a record read back from disk.
    fetched_at: float


class ManifestStore:
    def __init__(
        self,
        root: Path,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._mdir = root / "manifests"
        self._tdir = root / "tags"
        self._tmp = root / "tmp"
        self._clock = clock
        self._wall = wall_clock
        self._tags: dict[str, TagEntry] = {}
        # Recently served manifests, so a busy tag is not two file reads per request.
        self._recent: OrderedDict[Digest, StoredManifest] = OrderedDict()

    def open(self) -> None:
        for d in (self._mdir, self._tdir, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: Digest) -> Path:
        return self._mdir / digest.algorithm / digest.hex

    def get(self, digest: Digest) -> StoredManifest | None:
        hit = self._recent.get(digest)
        if hit is not None:
            self._recent.move_to_end(digest)
            return hit
        path = self._path(digest)
        try:
            body = path.read_bytes()
            media_type = path.with_name(path.name + ".type").read_text().strip()
        except FileNotFoundError:
            return None
        stored = StoredManifest(digest, media_type, body)
        self._remember(stored)
        return stored

    def _remember(self, stored: StoredManifest) -> None:
        self._recent[stored.digest] = stored
        self._recent.move_to_end(stored.digest)
        while len(self._recent) > _RECENT_MANIFESTS:
            self._recent.popitem(last=False)

    def put(self, digest: Digest, media_type: str, body: bytes) -> bool:
        """Store bytes already verified to hash to ``digest``; False when the disk refused
        them (full, read-only): the manifest is then kept in memory only and still served."""
        self._remember(StoredManifest(digest, media_type, body))
        path = self._path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The type file goes first: a manifest file without its type is never read as
            # present.
            self._atomic_write(path.with_name(path.name + ".type"), media_type.encode())
            self._atomic_write(path, body)
        except OSError as exc:
            log.warning("manifest digest=%s kept in memory only: %s", digest, exc.strerror)
            return False
        return True

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = self._tmp / f"{path.name}.{os.getpid()}.{time.monotonic_ns()}"
        durable.write(path, data, tmp=tmp)

    @staticmethod
    def _tag_key(upstream: str, repo: str, tag: str) -> str:
        return hashlib.sha256(f"{upstream}\0{repo}\0{tag}".encode()).hexdigest()

    def get_tag(self, upstream: str, repo: str, tag: str) -> TagEntry | None:
        key = self._tag_key(upstream, repo, tag)
        entry = self._tags.get(key)
        if entry is not None:
            return entry
        try:
            data = json.loads((self._tdir / f"{key}.json").read_text())
            entry = TagEntry(parse_digest(data["digest"]), str(data["media_type"]), -math.inf)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable tag record %s", key)
            return None
        self._tags[key] = entry
        return entry

    def set_tag(self, upstream: str, repo: str, tag: str, digest: Digest, media_type: str) -> bool:
        """Record the tag's digest; False when only memory has it (the disk refused it)."""
        key = self._tag_key(upstream, repo, tag)
        old = self._tags.get(key)
        entry = TagEntry(digest, media_type, self._clock())
        self._tags[key] = entry
        if old is not None and (old.digest, old.media_type) == (digest, media_type):
            # Only the freshness moved: that lives in memory. On disk the record keeps its
            # older time, so after a restart the tag is simply revalidated first.
            return True
        doc = {"digest": str(digest), "media_type": media_type, "fetched_at": self._wall()}
        try:
            self._atomic_write(self._tdir / f"{key}.json", json.dumps(doc).encode())
        except OSError as exc:
            # The tag still answers from memory; only a restart would need the record.
            log.warning("tag record %s kept in memory only: %s", key, exc.strerror)
            return False
        return True

    def expire_tag(self, upstream: str, repo: str, tag: str) -> bool:
        """Make the tag's next request ask the upstream (a fleet-wide invalidation).

        The record stays, as stale, so an upstream that is down meanwhile still gets the
        last known digest served; False when there was no record.
        """
        key = self._tag_key(upstream, repo, tag)
        entry = self._tags.get(key)
        if entry is not None:
            self._tags[key] = TagEntry(entry.digest, entry.media_type, -math.inf)
            return True
        # A record only on disk is read back as stale already.
        return (self._tdir / f"{key}.json").exists()

    def is_fresh(self, entry: TagEntry, ttl: float) -> bool:
        return self._clock() - entry.fetched_at <= ttl
