"""``layerswarm tracker``: serve the tracker's HTTP API until SIGTERM.

With ``--workers N`` (N > 1, Redis store) this process binds the port, then forks N worker
processes that each bind it again with SO_REUSEPORT and serve it with their own event loop
and Redis connection: the kernel spreads connections over them, so one replica can use N
cores. The parent only supervises: it forwards SIGTERM/SIGINT to its workers by PID and
starts a new worker when one dies unasked. Trackers keep no state of their own beyond
caches and the fleet page's chart, so the workers need nothing from each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from types import FrameType

from core import serve, settings
from tracker.app import build_app
from tracker.config import TrackerConfig

log = logging.getLogger(__name__)

# A worker that keeps dying is restarted at most this often (a broken Redis URL, say).
_RESTART_PAUSE = 1.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, TrackerConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(TrackerConfig, args)
    # The port, then the token file and store URL, all before the store is touched or any
    # "ready" is logged: a tracker that can't serve says so in one line and exits.
    many = config.workers > 1
    sock = serve.bind(*config.listen_host_port, reuse_port=many)
    try:
        # TLS files are read before forking, so a bad one stops the tracker with one line.
        tls = config.ssl_context()
        if many:
            config.read_token()
            return _supervise(config, sock)
        app = build_app(config)
        asyncio.run(
            serve.serve(
                app,
                sock,
                shutdown_timeout=config.shutdown_timeout,
                on_listening=lambda address: log.info(
                    "tracker listening on %s://%s%s",
                    "https" if tls else "http",
                    address,
                    " (agents identified by certificate)" if config.agent_ca_file else "",
                ),
                ssl_context=tls,
            )
        )
    finally:
        sock.close()
    return 0


def _worker(config: TrackerConfig, host: str, port: int, index: int) -> int:
    """Runs in a forked child: its own socket on the shared port, loop and store client."""
    sock = serve.bind(host, port, reuse_port=True)
    try:
        asyncio.run(
            serve.serve(
                build_app(config),
                sock,
                shutdown_timeout=config.shutdown_timeout,
                on_listening=lambda address: log.info(
                    "tracker worker %d listening on %s://%s pid=%d",
                    index,
                    "https" if config.tls_cert_file else "http",
                    address,
                    os.getpid(),
                ),
                ssl_context=config.ssl_context(),
            )
        )
    finally:
        sock.close()
    return 0


def _spawn(config: TrackerConfig, host: str, port: int, index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: never return into the parent's code, whatever happens.
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = _worker(config, host, port, index)
    except BaseException:
        log.exception("tracker worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def _supervise(config: TrackerConfig, sock: socket.socket) -> int:
    # The parent keeps its socket bound (not listening, so it takes no connections): the
    # port stays ours while a worker restarts, and port 0 resolves once for all workers.
    host, port = sock.getsockname()[:2]
    children: dict[int, int] = {}
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(config.workers):
        children[_spawn(config, host, port, i)] = i
    log.info(
        "tracker listening on %s://%s with %d workers",
        "https" if config.tls_cert_file else "http",
        serve.bound_address(sock),
        config.workers,
    )
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        log.warning(
            "tracker worker %d (pid %d) exited with %d; starting it again", index, pid, code
        )
        time.sleep(_RESTART_PAUSE)
        if not stopping:
            children[_spawn(config, host, port, index)] = index
    return 1 if failed else 0
