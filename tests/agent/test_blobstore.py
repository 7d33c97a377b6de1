"""The cache keeps what fits, evicts least recently used first, never what is being read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.blobstore import BlobStore
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
