"""A response that sends a byte range of a file with sendfile(2).

aiohttp's FileResponse would parse Range itself and answer 416 without an OCI error body;
the registry handler validates ranges first and then only needs the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

_FALLBACK_CHUNK = 1 << 20


class SendfileResponse(web.StreamResponse):
    def __init__(
        self,
        path: Path,
        offset: int,
        count: int,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._path = path
        self._offset = offset
        self._count = count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            # aiohttp calls prepare() again on a response the handler already sent.
            return await super().prepare(request)
        # Open before sending headers: a vanished file is still an error we can answer.
        fobj = await asyncio.to_thread(self._path.open, "rb")
        try:
            writer = await super().prepare(request)
            assert writer is not None
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            if self._count:
                loop = asyncio.get_running_loop()
                try:
                    await loop.sendfile(transport, fobj, self._offset, self._count)
                except NotImplementedError:
                    await self._copy(writer, fobj)
            await super().write_eof()
            return writer
        finally:
            fobj.close()

    async def _copy(self, writer: AbstractStreamWriter, fobj: BinaryIO) -> None:
        fd = fobj.fileno()
        pos, end = self._offset, self._offset + self._count
        while pos < end:
            chunk = await asyncio.to_thread(os.pread, fd, min(_FALLBACK_CHUNK, end - pos), pos)
            if not chunk:
                raise ConnectionResetError("file shrank while sending")
            await writer.write(chunk)
            pos += len(chunk)
