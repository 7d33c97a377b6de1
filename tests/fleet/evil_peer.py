"""A fleet member gone bad, run inside a host namespace: it holds the fleet token, registers
with the tracker, announces a layer and serves garbage for every segment of it.

    python -m tests.fleet.evil_peer HOST PORT TRACKER_URL TOKEN_FILE DIGEST HASH:PIECES...

A fault injector (see tests/p2p/fake_peer.py): a real agent never serves unverified bytes.
It writes the number of garbage blocks it sent to stdout when stopped with SIGTERM.
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
from tests.p2p.fake_peer import CorruptPeer


async def main(argv: list[str]) -> None:
    host, port, tracker, token_file, digest, *specs = argv
    pieces = {s.split(":")[0]: int(s.split(":")[1]) for s in specs}
    first, *rest = pieces.items()
    peer = CorruptPeer(first[0], first[1], more=dict(rest), host=host, port=int(port))
    await peer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        client = HttpTrackerClient(
            tracker,
            Path(token_file).read_text().strip(),
            "evil-agent",
            secrets.token_urlsafe(24),
            session,
        )
        info = AgentInfo("evil-agent", host, int(port), zone="z1", region="r1")
        await client.heartbeat(info)
        await client.announce_many([Announcement(digest, "holding", 1, 1)])
        print("ready", flush=True)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            await client.heartbeat(info)
    await peer.close()
    print(f"blocks_sent={peer.blocks_sent}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
