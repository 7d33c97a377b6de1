"""Segment metainfo: build it from a file, and validate it when it comes from the network.

A segment torrent is a BitTorrent v1 torrent with exactly one file. Its info dictionary holds
only ``name``, ``length``, ``piece length``, ``pieces`` and, for fleet-only
swarms, ``ssl-cert`` (the fleet CA, which makes libtorrent demand mutual TLS for the swarm).
Nothing else goes in, so the info-hash depends only on the name, the bytes, the piece size and
the CA: two agents that cut the same segment get the same torrent.

Metainfo fetched from the tracker is untrusted input: ``parse_metainfo`` is a strict decoder
with limits on size, depth and values, and rejects anything the engine would not have made
(multi-file and v2 torrents, names that are paths). The engine never saves to a path the
torrent names; the name is only part of the hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.p2p.errors import InvalidMetainfo

MIN_PIECE_LENGTH = 16 << 10
MAX_PIECE_LENGTH = 16 << 20
# Segments are tens of MiB; anything near this is a bug or an attack, not a segment.
DEFAULT_MAX_LENGTH = 1 << 30
MAX_METAINFO_SIZE = 1 << 20
_MAX_DEPTH = 8
_MAX_NAME = 200

BValue = int | bytes | list["BValue"] | dict[bytes, "BValue"]


@dataclass(frozen=True)
class TorrentInfo:
    """What the engine needs to know about a validated segment torrent."""

    info_hash: str  # hex SHA-1 of the bencoded info dictionary (BitTorrent v1)
    length: int
    piece_length: int
    name: str
    ssl_cert: bytes | None  # PEM of the swarm's CA; None for a plain torrent

    @property
    def num_pieces(self) -> int:
        return -(-self.length // self.piece_length)


def default_piece_length(length: int) -> int:
    """1 MiB pieces, or 256 KiB below 4 MiB so a short last segment still has several pieces.

    Pieces are the unit a peer can re-serve: smaller ones let a downloader pass data on
    sooner, larger ones cost less per-piece overhead (requests, hash checks, alerts).
    """
    return 1 << 20 if length >= 4 << 20 else 256 << 10


def hash_pieces(path: Path, piece_length: int) -> tuple[int, bytes]:
    """Read ``path`` once; return (length, concatenated SHA-1 piece hashes). Blocking."""
    digests = bytearray()
    length = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(piece_length)
            if not chunk:
                break
            length += len(chunk)
            # BitTorrent v1 piece hashes are SHA-1 by definition; not a security choice of ours.
            digests += hashlib.sha1(chunk).digest()  # noqa: S324
            if len(chunk) < piece_length:
                break
    return length, bytes(digests)


def build_metainfo(
    *,
    name: str,
    length: int,
    piece_length: int,
    pieces: bytes,
    ssl_cert: bytes | None = None,
) -> tuple[str, bytes]:
    """Return (info_hash hex, bencoded metainfo) for a single-file v1 torrent."""
    check_name(name)
    if length <= 0:
        raise InvalidMetainfo("a segment must not be empty")
    info: dict[bytes, BValue] = {
        b"length": length,
        b"name": name.encode(),
        b"piece length": piece_length,
        b"pieces": pieces,
        # Not "private": that flag would also turn off peer exchange, and PEX is how the
        # members of one swarm find each other between tracker lookups (a rollout where
        # every node only knows the seed is no faster than pulling from the seed). DHT and
        # LSD are off in the session, and with fleet TLS only certificate holders connect.
    }
    if ssl_cert is not None:
        info[b"ssl-cert"] = ssl_cert
    raw_info = bencode(info)
    # The info-hash is SHA-1 by the BitTorrent v1 spec.
    info_hash = hashlib.sha1(raw_info).hexdigest()  # noqa: S324
    meta = b"d4:info" + raw_info + b"e"
    return info_hash, meta


def check_name(name: str) -> None:
    """A torrent name must be a plain file name, so it can never steer a path."""
    if (
        not name
        or len(name) > _MAX_NAME
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or not name.isprintable()
    ):
        raise InvalidMetainfo(f"unsafe torrent name {name[:_MAX_NAME]!r}")


def parse_metainfo(data: bytes, *, max_length: int = DEFAULT_MAX_LENGTH) -> TorrentInfo:
    """Validate metainfo from the network; raise InvalidMetainfo for anything unexpected."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidMetainfo("metainfo must be bytes")
    data = bytes(data)
    if len(data) > MAX_METAINFO_SIZE:
        raise InvalidMetainfo(f"metainfo of {len(data)} bytes is too large")
    top, info_span = _decode_top(data)
    info = top.get(b"info")
    if not isinstance(info, dict) or info_span is None:
        raise InvalidMetainfo("metainfo has no info dictionary")
    if b"files" in info or b"file tree" in info or b"meta version" in info:
        raise InvalidMetainfo("only single-file v1 torrents are accepted")
    length = info.get(b"length")
    piece_length = info.get(b"piece length")
    pieces = info.get(b"pieces")
    raw_name = info.get(b"name")
    if not isinstance(length, int) or not 0 < length <= max_length:
        raise InvalidMetainfo(f"segment length {length!r} out of range (1..{max_length})")
    if (
        not isinstance(piece_length, int)
        or not MIN_PIECE_LENGTH <= piece_length <= MAX_PIECE_LENGTH
        or piece_length & (piece_length - 1)
    ):
        raise InvalidMetainfo(f"piece length {piece_length!r} is not a power of two in range")
    if not isinstance(pieces, bytes) or len(pieces) != 20 * -(-length // piece_length):
        raise InvalidMetainfo("piece hashes do not match the length")
    if not isinstance(raw_name, bytes):
        raise InvalidMetainfo("torrent name missing")
    try:
        name = raw_name.decode()
    except UnicodeDecodeError:
        raise InvalidMetainfo("torrent name is not UTF-8") from None
    check_name(name)
    ssl_cert = info.get(b"ssl-cert")
    if ssl_cert is not None and not isinstance(ssl_cert, bytes):
        raise InvalidMetainfo("ssl-cert must be a string")
    info_hash = hashlib.sha1(data[info_span[0] : info_span[1]]).hexdigest()  # noqa: S324
    return TorrentInfo(
        info_hash=info_hash,
        length=length,
        piece_length=piece_length,
        name=name,
        ssl_cert=ssl_cert,
    )


def bencode(value: BValue) -> bytes:
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: BValue, out: bytearray) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out += b"i%de" % value
    elif isinstance(value, bytes):
        out += b"%d:" % len(value) + value
    elif isinstance(value, list):
        out += b"l"
        for item in value:
            _encode(item, out)
        out += b"e"
    elif isinstance(value, dict):
        out += b"d"
        for key in sorted(value):
            _encode(key, out)
            _encode(value[key], out)
        out += b"e"
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def _decode_top(data: bytes) -> tuple[dict[bytes, BValue], tuple[int, int] | None]:
    """Decode a whole metainfo; also return the byte span of the top-level ``info`` value."""
    if not data.startswith(b"d"):
        raise InvalidMetainfo("metainfo is not a bencoded dictionary")
    pos = 1
    top: dict[bytes, BValue] = {}
    info_span: tuple[int, int] | None = None
    while True:
        if pos >= len(data):
            raise InvalidMetainfo("truncated metainfo")
        if data[pos : pos + 1] == b"e":
            pos += 1
            break
        key, pos = _decode(data, pos, 1)
        if not isinstance(key, bytes):
            raise InvalidMetainfo("dictionary key is not a string")
        if key in top:
            raise InvalidMetainfo("duplicate key in metainfo")
        start = pos
        top[key], pos = _decode(data, pos, 1)
        if key == b"info":
            info_span = (start, pos)
    if pos != len(data):
        raise InvalidMetainfo("trailing bytes after metainfo")
    return top, info_span


def _decode(data: bytes, pos: int, depth: int) -> tuple[BValue, int]:
    if depth > _MAX_DEPTH:
        raise InvalidMetainfo("metainfo nested too deeply")
    if pos >= len(data):
        raise InvalidMetainfo("truncated metainfo")
    lead = data[pos : pos + 1]
    if lead == b"i":
        return _decode_int(data, pos)
    if lead.isdigit():
        return _decode_bytes(data, pos)
    if lead == b"l":
        return _decode_list(data, pos, depth)
    if lead == b"d":
        return _decode_dict(data, pos, depth)
    raise InvalidMetainfo(f"unexpected byte {lead!r} in metainfo")


def _decode_int(data: bytes, pos: int) -> tuple[int, int]:
    end = data.find(b"e", pos + 1)
    digits = data[pos + 1 : end] if end > 0 else b""
    if (
        end < 0
        or not digits
        or len(digits) > 20
        or not digits.lstrip(b"-").isdigit()
        or digits.startswith(b"-0")
        or (digits.startswith(b"0") and digits != b"0")
    ):
        raise InvalidMetainfo("malformed integer in metainfo")
    return int(digits), end + 1


def _decode_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos)
    digits = data[pos:colon] if colon > 0 else b""
    if (
        colon < 0
        or not digits.isdigit()
        or len(digits) > 8
        or (digits.startswith(b"0") and digits != b"0")
    ):
        raise InvalidMetainfo("malformed string length in metainfo")
    end = colon + 1 + int(digits)
    if end > len(data):
        raise InvalidMetainfo("truncated string in metainfo")
    return data[colon + 1 : end], end


def _decode_list(data: bytes, pos: int, depth: int) -> tuple[list[BValue], int]:
    items: list[BValue] = []
    pos += 1
    while data[pos : pos + 1] != b"e":
        item, pos = _decode(data, pos, depth + 1)
        items.append(item)
    return items, pos + 1


def _decode_dict(data: bytes, pos: int, depth: int) -> tuple[dict[bytes, BValue], int]:
    out: dict[bytes, BValue] = {}
    pos += 1
    while data[pos : pos + 1] != b"e":
        key, pos = _decode(data, pos, depth + 1)
        if not isinstance(key, bytes):
            raise InvalidMetainfo("dictionary key is not a string")
        if key in out:
            raise InvalidMetainfo("duplicate key in metainfo")
        out[key], pos = _decode(data, pos, depth + 1)
    return out, pos + 1
