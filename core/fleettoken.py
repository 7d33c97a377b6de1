"""The fleet token: one reader and one rule for the tracker, its agents and the commands."""

from __future__ import annotations

from pathlib import Path

from core.settings import ConfigError

# A token short enough to guess would let anyone register agents and read the fleet view.
MIN_TOKEN = 16


def read_fleet_token(path: Path | None, setting: str) -> str:
    """The token in ``path``, stripped; ConfigError names ``setting`` (the flag without
    ``--``) when it is unset, unreadable or shorter than ``MIN_TOKEN`` characters."""
    if path is None:
        raise ConfigError(f"{setting} is required: the file holding the fleet's shared token")
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"{setting} {path}: token must be at least {MIN_TOKEN} characters")
    return token
