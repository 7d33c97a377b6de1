"""``layerswarm agent``: the node agent, composed with an in-process tracker when it has no
--tracker.

This is the one place an agent and a tracker meet: agent/ and tracker/ never import each
other. The agent gets a ``TrackerClient`` bound to its id (tracker.embedded.LocalTrackerClient,
no HTTP) and keeps the tracker running for as long as it runs. With ``--serve-tracker`` the
same tracker also serves its HTTP API on ``--tracker-listen``, so the agents of a small fleet
point their ``--tracker`` at this node and no separate tracker process is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from agent import command
from agent.config import AgentConfig
from core import serve, settings
from core.fleettoken import read_fleet_token
from core.tasks import Supervisor
from core.trackerclient import TrackerClient
from tracker.app import build_app as build_tracker_app
from tracker.clock import SystemClock
from tracker.config import TrackerConfig
from tracker.embedded import LocalTrackerClient
from tracker.server import TRACKER
from tracker.service import Tracker
from tracker.store.memory import MemoryStore

log = logging.getLogger(__name__)


class EmbeddedTracker:
    """A memory-store tracker in the agent's process; served over HTTP on ``sock`` if given."""

    def __init__(self, config: TrackerConfig, sock: socket.socket | None = None) -> None:
        self._sock = sock
        self._app: web.Application | None = None
        if sock is None:
            self._tracker = Tracker(MemoryStore(), SystemClock(), config)
        else:
            self._app = build_tracker_app(config, store=MemoryStore())
            # One tracker for this agent's calls and for every other agent's requests.
            self._tracker = self._app[TRACKER]

    @property
    def reachable(self) -> bool:
        return self._app is not None

    def client(self, agent_id: str, key: str) -> TrackerClient:
        return LocalTrackerClient(self._tracker, agent_id, key)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self._app is None or self._sock is None:
            tasks = Supervisor("embedded tracker")
            tasks.spawn(self._tracker.maintain(), name="tracker upkeep")
            try:
                yield
            finally:
                await tasks.close()
            return
        # The tracker app's own start-up runs its upkeep; the socket was bound at start-up.
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()
            log.info("tracker serving on %s", serve.bound_address(self._sock))
            yield
        finally:
            await runner.cleanup()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    command.configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    config = settings.load(AgentConfig, args)
    if config.tracker:
        return command.run(config)
    if not config.serve_tracker:
        return command.run(config, in_process_tracker=EmbeddedTracker(TrackerConfig()))
    tracker_config = TrackerConfig(
        listen=config.tracker_listen, token_file=config.tracker_token_file
    )
    # The fleet token before any port: a bad one is one line and nothing bound.
    read_fleet_token(config.tracker_token_file, "tracker-token-file")
    sock = serve.bind(*config.tracker_host_port, what="for the tracker")
    try:
        return command.run(config, in_process_tracker=EmbeddedTracker(tracker_config, sock))
    finally:
        sock.close()
