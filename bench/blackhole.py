"""Fleet members that claim every layer and never send a byte, for bench.fleet's
``layerswarm-blackholed`` scenario. Runs inside a host namespace:

    python -m bench.blackhole HOST BASE_PORT COUNT TRACKER_URL TOKEN_FILE DIGEST:SIZE...

A fault injector: each of COUNT fake agents registers with the tracker (ports BASE_PORT..),
announces every DIGEST as held, accepts peer connections and stays silent. It prints "ready"
once all are announced and keeps heartbeating until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from pathlib import Path

import aiohttp

from core.trackerclient import HttpTrackerClient
from core.wire import AgentInfo, Announcement


async def main(argv: list[str]) -> None:
    host, base_raw, count_raw, tracker, token_file, *blobs = argv
    base, count = int(base_raw), int(count_raw)
    token = Path(token_file).read_text().strip()
    held = [
        Announcement(d, "holding", int(size), int(size))
        for d, size in (b.rsplit(":", 1) for b in blobs)
    ]
    writers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)  # accepted, never answered

    servers = [await asyncio.start_server(silent, host, base + i) for i in range(count)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        clients = []
        for i in range(count):
            client = HttpTrackerClient(
                tracker, token, f"blackhole-{i}", secrets.token_urlsafe(24), session
            )
            info = AgentInfo(f"blackhole-{i}", host, base + i, zone="z1", region="r1")
            await client.heartbeat(info)
            await client.announce_many(held)
            clients.append((client, info))
        print("ready", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            for client, info in clients:
                with contextlib.suppress(Exception):
                    await client.heartbeat(info)
    for w in writers:
        w.close()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
