"""The ``layerswarm`` command: one entry point, one subcommand per job.

Subcommands are imported only when chosen, so ``layerswarm --help`` stays fast and no
component's code runs at import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from layerswarm import logredact
from layerswarm.settings import ConfigError


class Command(Protocol):
    """What a subcommand module exposes to the CLI."""

    HELP: str

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> module implementing Command; modules are imported lazily.
COMMANDS: dict[str, str] = {
    "agent": "agent.command",
    "tracker": "tracker.command",
    "pki": "layerswarm.pki_cmd",
    "configure": "layerswarm.configure",
    "preheat": "layerswarm.preheat_cmd",
    "invalidate": "layerswarm.invalidate_cmd",
    "status": "layerswarm.status_cmd",
    "doctor": "layerswarm.doctor",
}


def _load(module: str) -> Command:
    mod = importlib.import_module(module)
    return mod  # a module satisfies Command by duck typing


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="layerswarm", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded: dict[str, Command] = {}
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, module in COMMANDS.items():
        if wanted is not None and name != wanted:
            # Only the chosen subcommand's module is imported; the others still show in --help.
            sub.add_parser(name, help="")
            continue
        cmd = _load(module)
        loaded[name] = cmd
        p = sub.add_parser(name, help=cmd.HELP, description=cmd.HELP)
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
