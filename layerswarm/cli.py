"""The ``layerswarm`` command: one entry point, one subcommand per job.

Subcommands are imported only when chosen, so ``layerswarm --help`` stays fast and no
component's code runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from core import logredact
from core.settings import ConfigError


class Command(Protocol):
    """What a subcommand module exposes to the CLI."""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _agent() -> Command:
    from layerswarm import agent_cmd

    return agent_cmd


def _tracker() -> Command:
    from tracker import command

    return command


def _pki() -> Command:
    from layerswarm import pki_cmd

    return pki_cmd


def _configure() -> Command:
    from layerswarm import configure

    return configure


def _preheat() -> Command:
    from layerswarm import preheat_cmd

    return preheat_cmd


def _invalidate() -> Command:
    from layerswarm import invalidate_cmd

    return invalidate_cmd


def _status() -> Command:
    from layerswarm import status_cmd

    return status_cmd


def _doctor() -> Command:
    from layerswarm import doctor

    return doctor


# name -> (one-line help, loader). Each subcommand's module is imported only when that
# subcommand is chosen (function-local imports), so `layerswarm --help` stays fast and never
# loads libtorrent.
COMMANDS: dict[str, tuple[str, Callable[[], Command]]] = {
    "agent": (
        "run the node agent: a registry mirror that fetches layers from peers, then upstream",
        _agent,
    ),
    "tracker": (
        "run the tracker: which agents hold which layers, and who fetches a cold one",
        _tracker,
    ),
    "pki": (
        "create the fleet CA and agent certificates for encrypted, fleet-only peer swarms",
        _pki,
    ),
    "configure": (
        "point docker, containerd or podman/CRI-O at the local layerswarm agent",
        _configure,
    ),
    "preheat": (
        "pull images onto seeds (or every agent) ahead of a rollout, with live progress",
        _preheat,
    ),
    "invalidate": (
        "make every agent revalidate these tags (IMAGE:TAG) with the upstream on next pull",
        _invalidate,
    ),
    "status": (
        "show the fleet: agents, zones, hottest layers, bytes from peers vs upstream",
        _status,
    ),
    "doctor": (
        "check this node: agent, tracker, upstreams, disk, and the runtime's mirror config",
        _doctor,
    ),
}


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="layerswarm", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded: dict[str, Command] = {}
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (help_text, load) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            # Only the chosen subcommand's module is imported.
            cmd = load()
            loaded[name] = cmd
            cmd.configure_parser(p)
    return parser, loaded


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, loaded = build_parser(args_list)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logredact.install()
    if not args.command:
        parser.print_help()
        return 2
    try:
        code = loaded[args.command].run(args)
        # Flushed here, not at exit, so a reader that left is handled below like any other.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `layerswarm status --json | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except ConfigError as exc:
        print(f"layerswarm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
