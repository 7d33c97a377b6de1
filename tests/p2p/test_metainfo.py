"""Metainfo built by the engine, and validation of metainfo arriving from the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt
import pytest

from agent.p2p.errors import InvalidMetainfo
from agent.p2p.metainfo import (
    bencode,
    build_metainfo,
    default_piece_length,
    hash_pieces,
    parse_metainfo,
)


def _info(**overrides: object) -> dict[bytes, object]:
    info: dict[bytes, object] = {
        b"name": b"seg",
        b"length": 300_000,
        b"piece length": 262_144,
        b"pieces": bytes(40),
        b"private": 1,
    }
    for key, value in overrides.items():
        k = key.replace("_", " ").encode()
        if value is None:
            info.pop(k, None)
        else:
            info[k] = value
    return info


def _meta(info: dict[bytes, object]) -> bytes:
    return bencode({b"info": info})  # type: ignore[dict-item]


def test_built_metainfo_matches_libtorrent(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    data = os.urandom(600_000)
    path.write_bytes(data)
    plen = default_piece_length(len(data))
    length, pieces = hash_pieces(path, plen)
    info_hash, meta = build_metainfo(name="blob-1", length=length, piece_length=plen, pieces=pieces)
    parsed = parse_metainfo(meta)
    assert (parsed.info_hash, parsed.length, parsed.piece_length) == (info_hash, 600_000, plen)
    assert parsed.name == "blob-1" and parsed.ssl_cert is None and parsed.num_pieces == 3
    assert pieces[:20] == hashlib.sha1(data[:plen]).digest()
    ti = lt.torrent_info(meta)
    assert str(ti.info_hashes().v1) == info_hash
    assert not ti.priv()  # PEX stays on within a swarm (see build_metainfo)


@pytest.mark.parametrize(
    "name",
    [b"../etc/passwd", b"a/b", b"a\\b", b"..", b".", b"", b"bad\x00name", b"\xff\xfe"],
)
def test_unsafe_names_rejected(name: bytes) -> None:
    with pytest.raises(InvalidMetainfo):
        parse_metainfo(_meta(_info(name=name)))


@pytest.mark.parametrize(
    "info",
    [
        _info(files=[{b"length": 1, b"path": [b"x"]}], length=None),  # multi-file
        _info(file_tree={b"x": {}}, meta_version=2),  # v2
        _info(length=0),
        _info(length=-5),
        _info(length=(1 << 30) + 1, pieces=bytes(20 * 4097)),
        _info(piece_length=300_000),  # not a power of two
        _info(piece_length=1024),  # below the block size
        _info(pieces=bytes(20)),  # too few hashes for the length
        _info(name=None),
        _info(name=5),
        _info(**{"ssl-cert": 7}),
    ],
)
def test_unexpected_torrents_rejected(info: dict[bytes, object]) -> None:
    with pytest.raises(InvalidMetainfo):
        parse_metainfo(_meta(info))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"d4:infod",
        b"le",
        b"d4:infoi3ee",
        b"d4:infod4:name3:abcee" + b"x",  # trailing bytes
        b"d4:infod6:lengthi03eee",  # non-canonical integer
        b"d4:infod6:lengthi-0eee",
        b"d4:infod4:name99999:abcee",  # string runs past the end
        b"d1:ai1e1:ai2ee",  # duplicate key
        b"d4:infod" + b"l" * 50 + b"e" * 50 + b"ee",  # nested too deep
        b"d4:info" + b"d4:name3:abc" + b"e" * 1 + b"e" + b"\x00" * (2 << 20),  # too large
    ],
)
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(InvalidMetainfo):
        parse_metainfo(data)


def test_length_limit_is_the_callers() -> None:
    meta = _meta(_info())
    assert parse_metainfo(meta).length == 300_000
    with pytest.raises(InvalidMetainfo):
        parse_metainfo(meta, max_length=100_000)


def test_build_refuses_unsafe_name() -> None:
    with pytest.raises(InvalidMetainfo):
        build_metainfo(name="../x", length=1, piece_length=16384, pieces=bytes(20))
