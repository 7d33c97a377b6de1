"""The CLI's cost at start-up: ``layerswarm --help`` loads no daemon and never libtorrent."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from layerswarm import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
loaded = [m for m in sys.modules if m.split(".")[0] in ("libtorrent", "agent", "tracker")]
print("LOADED=" + ",".join(sorted(loaded)))
"""


def test_help_imports_no_daemon_and_no_libtorrent() -> None:
    res = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert res.stdout.splitlines()[-1] == "LOADED=", res.stdout


def test_the_chosen_subcommand_alone_is_loaded() -> None:
    probe = PROBE.replace('cli.main(["--help"])', 'cli.main(["status", "--help"])')
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert res.stdout.splitlines()[-1] == "LOADED=", res.stdout
