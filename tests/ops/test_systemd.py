"""The systemd units: systemd itself accepts them, and they stay hardened."""

from __future__ import annotations

import configparser
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import env_name, settings_of
from tests.ops.conftest import REPO_ROOT

UNITS_DIR = REPO_ROOT / "systemd"
UNITS = ["layerswarm-agent.service", "layerswarm-tracker.service"]
INSTALLED_BINARY = "/usr/local/bin/layerswarm"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is needed (Debian package systemd, scripts/bootstrap.sh)")
    return path


@pytest.fixture
def runnable_units(tmp_path: Path) -> list[Path]:
    """The committed units with ExecStart pointing at this checkout's layerswarm.

    systemd-analyze verify insists that ExecStart's binary exists; the committed units name
    the installed path, which a test machine does not have.
    """
    out = []
    here = f"{sys.executable} -m layerswarm"
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        assert INSTALLED_BINARY in text
        dest = tmp_path / name
        dest.write_text(text.replace(INSTALLED_BINARY, here))
        out.append(dest)
    return out


def parse_unit(name: str) -> configparser.RawConfigParser:
    # strict=False: systemd allows a key more than once (SystemCallFilter=); the last wins here.
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS_DIR / name)
    return parser


def test_systemd_analyze_verify_accepts_both_units(runnable_units: list[Path]) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", *map(str, runnable_units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_does_reject_a_broken_unit(runnable_units: list[Path]) -> None:
    """The check above can fail: a bad value is reported (on stderr, which must be empty)."""
    unit = runnable_units[0]
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=sometimes"))
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "sometimes" in result.stderr


def test_exposure_stays_low(runnable_units: list[Path]) -> None:
    """systemd's own hardening score: 2.0 of 10 at most (both are about 1.4 today)."""
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            *map(str, runnable_units),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    scores = re.findall(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert len(scores) == 2, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", UNITS)
def test_unit_settings(name: str) -> None:
    service = parse_unit(name)["Service"]
    assert service["ExecStart"].startswith(INSTALLED_BINARY + " ")
    assert service["EnvironmentFile"].startswith("-/etc/layerswarm/")
    assert service["DynamicUser"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["Restart"] == "on-failure"
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[key] in ("yes", "strict"), key
    assert service["MemoryDenyWriteExecute"] == "yes"
    assert service["LockPersonality"] == "yes"
    assert "AF_PACKET" not in service["RestrictAddressFamilies"]
    assert int(service["LimitNOFILE"]) >= 65536


def test_agent_keeps_its_cache_and_has_time_to_drain() -> None:
    service = parse_unit("layerswarm-agent.service")["Service"]
    assert service["StateDirectory"] == "layerswarm"
    assert service["Environment"] == "LAYERSWARM_DATA_DIR=%S/layerswarm"
    assert service["TimeoutStopSec"].rstrip("s").isdigit()
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 30


def known_env(command: str) -> set[str]:
    """The LAYERSWARM_* variables ``layerswarm COMMAND`` reads, from its config dataclass."""
    module = importlib.import_module(f"{command}.config")
    cls = getattr(module, f"{command.capitalize()}Config", None)
    if cls is None:
        raise AssertionError(f"{command}.config has no {command.capitalize()}Config")
    return {env_name(f.name) for f, _ in settings_of(cls)} | {"LAYERSWARM_CONFIG"}


@pytest.mark.parametrize("name", ["agent.env.example", "tracker.env.example"])
def test_env_examples_only_set_known_settings(name: str) -> None:
    """Every LAYERSWARM_ variable, set or commented out, is a real setting of the command."""
    command = name.split(".", maxsplit=1)[0]
    try:
        known = known_env(command)
    except ModuleNotFoundError:
        # Before integration the tracker package lives on its own branch; these are the
        # settings its contract names (listen, store, token-file).
        assert command == "tracker"
        known = {"LAYERSWARM_LISTEN", "LAYERSWARM_STORE", "LAYERSWARM_TOKEN_FILE"}
    used = re.findall(r"^#?(LAYERSWARM_[A-Z_]+)=", (UNITS_DIR / name).read_text(), re.M)
    assert used
    assert set(used) <= known, set(used) - known
