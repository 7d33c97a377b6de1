"""Running the node's registry mirror; ``layerswarm agent`` (layerswarm.agent_cmd) composes it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from agent.app import build_app, prepare_data_dir
from agent.config import AgentConfig
from agent.p2p.errors import PeerTransferError
from agent.trackerlink import InProcessTracker
from core import serve, settings

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, AgentConfig)


def run(config: AgentConfig, *, in_process_tracker: InProcessTracker | None = None) -> int:
    """Serve the agent until SIGTERM. Its ports were free or bound before anything started;
    ``in_process_tracker`` is the tracker the composition root built for an agent without
    --tracker (its port, if served, is bound already too)."""
    prepare_data_dir(config)
    # Every port first: an agent that can't serve must not register, heartbeat or take jobs.
    sock = serve.bind(*config.listen_host_port)
    try:
        if config.p2p and (config.tracker or config.serve_tracker):
            serve.probe(*config.peer_host_port, what="for peers")
        asyncio.run(_serve(config, sock, in_process_tracker))
    finally:
        sock.close()
    return 0


async def _serve(
    config: AgentConfig, sock: socket.socket, in_process_tracker: InProcessTracker | None
) -> None:
    def listening(address: str) -> None:
        log.info("agent listening on %s, data in %s", address, config.data_dir)

    try:
        await serve.serve(
            await build_app(config, in_process_tracker=in_process_tracker),
            sock,
            shutdown_timeout=config.shutdown_timeout,
            on_listening=listening,
        )
    except PeerTransferError as exc:
        # The peer port was free a moment ago (probe) but libtorrent could not take it.
        raise serve.ListenError(str(exc)) from None
