"""``layerswarm agent``: run the node's registry mirror."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from agent.app import build_app, prepare_data_dir
from agent.config import AgentConfig
from agent.p2p.errors import PeerTransferError
from core import serve, settings

HELP = "run the node agent: a registry mirror that fetches layers from peers, then upstream"

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, AgentConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(AgentConfig, args)
    prepare_data_dir(config)
    # Every port first: an agent that can't serve must not register, heartbeat or take jobs.
    sock = serve.bind(*config.listen_host_port)
    try:
        if config.p2p and config.tracker:
            serve.probe(*config.peer_host_port, what="for peers")
        asyncio.run(_serve(config, sock))
    finally:
        sock.close()
    return 0


async def _serve(config: AgentConfig, sock: socket.socket) -> None:
    def listening(address: str) -> None:
        log.info("agent listening on %s, data in %s", address, config.data_dir)

    try:
        await serve.serve(
            await build_app(config),
            sock,
            shutdown_timeout=config.shutdown_timeout,
            on_listening=listening,
        )
    except PeerTransferError as exc:
        # The peer port was free a moment ago (probe) but libtorrent could not take it.
        raise serve.ListenError(str(exc)) from None
