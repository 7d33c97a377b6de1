"""A fault injector: a BitTorrent peer that serves garbage.

A real libtorrent seed cannot be made to send bad data on demand (in seed mode it even
verifies pieces as it reads them), so this is a minimal peer-wire server of our own: it
answers the handshake for one info-hash, claims to have every piece, unchokes, and answers
every block request with bytes that will fail the piece hash. It speaks no extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct

_PROTOCOL = b"\x13BitTorrent protocol"
_BITFIELD, _UNCHOKE, _REQUEST, _PIECE = 5, 1, 6, 7
_MAX_MESSAGE = 1 << 20


class CorruptPeer:
    def __init__(
        self,
        info_hash_hex: str,
        num_pieces: int,
        *,
        more: dict[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Serve ``info_hash_hex`` (and the hashes in ``more``: hash -> pieces) badly."""
        self.pieces = {bytes.fromhex(info_hash_hex): num_pieces}
        self.pieces.update({bytes.fromhex(h): n for h, n in (more or {}).items()})
        self.host = host
        self.port = port
        self.blocks_sent = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = await reader.readexactly(68)
        info_hash = handshake[28:48]
        if handshake[:20] != _PROTOCOL or info_hash not in self.pieces:
            return
        num_pieces = self.pieces[info_hash]
        writer.write(_PROTOCOL + bytes(8) + info_hash + b"-FAKE0-" + os.urandom(13))
        bits = bytearray(-(-num_pieces // 8))
        for i in range(num_pieces):
            bits[i // 8] |= 0x80 >> (i % 8)
        writer.write(_message(_BITFIELD, bytes(bits)))
        writer.write(_message(_UNCHOKE, b""))
        await writer.drain()
        while True:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            if size == 0:
                continue  # keep-alive
            if size > _MAX_MESSAGE:
                return
            body = await reader.readexactly(size)
            if body[0] == _REQUEST and size == 13:
                index, begin, length = struct.unpack(">III", body[1:])
                # Deterministic garbage that no real piece hashes to.
                block = bytes([0xA5]) * length
                writer.write(_message(_PIECE, struct.pack(">II", index, begin) + block))
                await writer.drain()
                self.blocks_sent += 1


def _message(msg_id: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, msg_id) + payload
