"""Serving a daemon: bind its sockets first, then start its work, then accept requests.

Both daemons (agent, tracker) go through here so that a port that is taken ends the process
with one line and a non-zero exit before anything else happened: no "listening" log, no
tracker registration, no heartbeat, no preheat job picked up by an agent that can't serve.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import field

from aiohttp import web

from core.settings import ConfigError, parse_duration, setting

log = logging.getLogger(__name__)

# Connections the kernel completes before the daemon accepts them (capped by
# net.core.somaxconn). aiohttp's 128 overflowed when a tracker replica died and its half of
# the fleet reconnected to the survivor at once: dropped SYNs are retried after 1, 3, 7 s,
# which bench.fleet_sim saw as failovers of 1-13 s and calls timing out.
LISTEN_BACKLOG = 4096


def shutdown_timeout_setting(default: float) -> float:
    """The ``shutdown_timeout`` field of a daemon's config: the grace ``serve`` gives
    running requests on SIGTERM (each daemon has its own default)."""
    return field(
        default=default,
        metadata=setting(
            # aiohttp waits without a limit for 0.
            "on SIGTERM, how long in-flight requests may finish (0: as long as they take)",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )


class ListenError(ConfigError):
    """A socket could not be bound; the message is the one line an operator sees."""


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.errno == errno.EADDRNOTAVAIL:
        text += " (not an address of this host)"
    return text[:1].lower() + text[1:]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, *, what: str = "", reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket for ``host:port`` (not yet listening), or ListenError.

    ``reuse_port``: other sockets of this user with the same flag may bind the same port
    (worker processes), and the kernel spreads new connections over those that listen.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # As aiohttp and every server does: a restart must not wait out TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        label = f"{what} " if what else ""
        raise ListenError(f"cannot listen {label}on {_show(host, port)}: {_reason(exc)}") from None
    return sock


def probe(host: str, port: int, *, what: str = "") -> None:
    """Fail now with ListenError if ``host:port`` can't be bound by whoever binds it later.

    For the sockets another library opens (libtorrent's peer port): a listener already there
    makes this bind fail even with SO_REUSEADDR, which is the case that matters.
    """
    if port == 0:
        return
    bind(host, port, what=what).close()


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return _show(str(host), int(port))


async def serve(
    app: web.Application,
    sock: socket.socket,
    *,
    shutdown_timeout: float,
    on_listening: Callable[[str], None],
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Start ``app`` (its start-up hooks), then accept on ``sock`` until SIGTERM or SIGINT.

    The socket is bound before the hooks run and accepts only after they succeeded; on a
    signal, stop accepting and give running requests ``shutdown_timeout`` seconds.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock, ssl_context=ssl_context, backlog=LISTEN_BACKLOG)
        await site.start()
        on_listening(bound_address(sock))
        await stop.wait()
        log.info("stopping: draining requests for up to %.0fs", shutdown_timeout)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        sock.close()
