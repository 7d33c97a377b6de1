"""The cache keeps what fits, evicts least recently used first, never what is being read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.blobstore import BlobStore
from agent.errors import NoSpace
from agent.fetch import Download
from agent.oci import Digest


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def put(store: BlobStore, data: bytes) -> Digest:
    d = Digest("sha256", hashlib.sha256(data).hexdigest())
    tmp = store.new_tmp_path("t")
    tmp.write_bytes(data)
    store.commit(d, tmp)
    return d


def test_lru_eviction_and_hooks(tmp_path: Path) -> None:
    clock = Clock()
    evicted: list[Digest] = []
    store = BlobStore(tmp_path, max_bytes=3000, on_evict=[evicted.append], clock=clock)
    store.open()
    a = put(store, b"a" * 1000)
    b = put(store, b"b" * 1000)
    c = put(store, b"c" * 1000)
    assert store.get(a) is not None  # a is now the most recently used
    d = put(store, b"d" * 1000)
    assert evicted == [b]
    assert b not in store and not store.path_for(b).exists()
    assert {a, c, d} <= set(store.digests())
    assert store.total_bytes == 3000
    assert store.evictions == 1


def test_pinned_blob_is_not_evicted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=2000, clock=Clock())
    store.open()
    a = put(store, b"a" * 1000)
    b = put(store, b"b" * 1000)
    with store.pin(a):
        c = put(store, b"c" * 1000)
        assert a in store and store.path_for(a).read_bytes() == b"a" * 1000
        assert b not in store
    assert c in store


def test_restart_rebuilds_index_and_cleans_leftovers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=10_000, clock=Clock())
    store.open()
    a = put(store, b"a" * 100)
    (tmp_path / "tmp" / "half-written").write_bytes(b"xx")
    (tmp_path / "blobs" / "sha256" / "not-a-digest").write_bytes(b"junk")
    (tmp_path / "partial" / "sha256-").mkdir()
    (tmp_path / "partial" / "garbage").write_bytes(b"zz")
    keep_partial = tmp_path / "partial" / f"sha256-{'b' * 64}"
    keep_partial.write_bytes(b"resumable")

    again = BlobStore(tmp_path, max_bytes=10_000, clock=Clock())
    again.open()
    assert again.digests() == [a] and again.total_bytes == 100
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "blobs" / "sha256" / "not-a-digest").exists()
    assert not (tmp_path / "partial" / "garbage").exists()
    assert not (tmp_path / "partial" / "sha256-").exists()
    assert keep_partial.read_bytes() == b"resumable"


def test_restart_with_smaller_limit_evicts_oldest(tmp_path: Path) -> None:
    clock = Clock()
    store = BlobStore(tmp_path, max_bytes=10_000, clock=clock)
    store.open()
    old = put(store, b"o" * 1000)
    os.utime(store.path_for(old), (1, 1))
    new = put(store, b"n" * 1000)
    smaller = BlobStore(tmp_path, max_bytes=1500, clock=clock)
    smaller.open()
    assert smaller.digests() == [new]


def _virtual_disk(capacity: int) -> Callable[[Path], int]:
    """Free bytes of a disk of ``capacity`` holding exactly the files under the store's root."""

    def free(root: Path) -> int:
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return capacity - used

    return free


def test_reserve_evicts_idle_partials_then_lru_blobs(tmp_path: Path) -> None:
    store = BlobStore(
        tmp_path,
        max_bytes=1 << 30,
        clock=Clock(),
        reserve_bytes=1000,
        free_space=_virtual_disk(10_000),
    )
    store.open()
    a = put(store, b"a" * 3000)
    b = put(store, b"b" * 3000)
    idle = store.partial_dir / f"sha256-{'0' * 64}"
    idle.write_bytes(b"x" * 1000)  # an interrupted download nobody resumes now
    busy_digest = Digest("sha256", "1" * 64)
    busy = store.start_partial(busy_digest)
    store.partial_path(busy_digest).write_bytes(b"y" * 500)
    busy.written = 500
    # 10,000 - 7,500 used - 1,000 reserve = 1,500 free: 2,000 more needs the idle partial
    # gone, and then one blob (the least recently used).
    claim = store.start_partial(Digest("sha256", "2" * 64))
    store.reserve(claim, 3000)
    assert not idle.exists()
    assert store.partial_path(busy_digest).exists()
    assert a not in store and b in store
    # The claim counts against later reservations until it is written or released.
    other = store.start_partial(Digest("sha256", "3" * 64))
    with pytest.raises(NoSpace, match="no room"):
        store.reserve(other, 9000)
    # A blob that would not fit even in an empty cache leaves the cache as it was.
    assert b in store
    store.end_partial(claim)
    store.end_partial(busy)


def test_commit_evicts_to_keep_the_reserve(tmp_path: Path) -> None:
    store = BlobStore(
        tmp_path,
        max_bytes=1 << 30,
        clock=Clock(),
        reserve_bytes=2000,
        free_space=_virtual_disk(8000),
    )
    store.open()
    a = put(store, b"a" * 3000)
    b = put(store, b"b" * 3000)  # 2,000 free: exactly the reserve
    assert a in store
    c = put(store, b"c" * 1000)  # below the reserve now: the oldest goes
    assert a not in store and {b, c} <= set(store.digests())


def test_reopen_with_blobs_used_at_the_same_instant(tmp_path: Path) -> None:
    """Found by the soak: equal mtimes made start-up compare digests and fail."""
    store = BlobStore(tmp_path, max_bytes=10_000, clock=Clock())
    store.open()
    digests = [put(store, bytes([i]) * 100) for i in range(5)]
    for d in digests:
        os.utime(store.path_for(d), (1_000_000.0, 1_000_000.0))
    again = BlobStore(tmp_path, max_bytes=10_000, clock=Clock())
    again.open()
    assert set(again.digests()) == set(digests)


async def test_a_reader_of_a_finished_download_survives_its_blob_being_evicted(
    tmp_path: Path,
) -> None:
    """Found by the soak: a client joining a download got its headers, then the download was
    committed and evicted (a small, busy cache) before the client's reader opened the file,
    and the body was cut at 0 bytes."""
    store = BlobStore(tmp_path, max_bytes=1 << 20, clock=Clock())
    store.open()
    data = os.urandom(300_000)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    dl = Download(digest, store.partial_path(digest), store)
    await dl.resume_existing()
    dl.set_started(len(data))
    await dl.append(data)
    dl.verify()
    dl.close_file()
    dl.finish(store.commit(digest, dl.path).path)
    store.remove(digest)  # evicted before the follower's first read
    assert not dl.path.exists() and not store.path_for(digest).exists()
    got = b"".join([chunk async for chunk in dl.stream(0, len(data) - 1)])
    assert got == data
