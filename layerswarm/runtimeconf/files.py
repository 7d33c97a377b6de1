"""Change a config file safely: parse what is there, diff, back up, write atomically.

Every runtime module works the same way: ``read_config`` parses the current file (refusing
one that does not parse, so an operator's broken file is never overwritten), the module
computes the desired data, and ``plan`` turns that into a ``FileChange`` (or ``None`` when
the file already says the same thing, which makes every command idempotent). ``apply``
then writes it: backup first, temp file + ``os.replace`` so a reader never sees half a file,
the old mode and owner kept.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core import durable
from layerswarm.runtimeconf import tomledit

log = logging.getLogger(__name__)

Format = Literal["json", "toml"]
BACKUP_INFIX = ".layerswarm.bak."
NEW_FILE_MODE = 0o644


class ConfigureError(Exception):
    """A file can't be changed safely; the message is one line for the operator."""


@dataclass(frozen=True)
class Current:
    """A config file as found: its text (None if absent) and parsed data ({} if absent)."""

    path: Path
    text: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class FileChange:
    path: Path
    old_text: str | None
    new_text: str

    def diff(self) -> str:
        old = [] if self.old_text is None else self.old_text.splitlines(keepends=True)
        new = self.new_text.splitlines(keepends=True)
        fromfile = "/dev/null" if self.old_text is None else str(self.path)
        return "".join(difflib.unified_diff(old, new, fromfile=fromfile, tofile=str(self.path)))


def parse(text: str, fmt: Format) -> dict[str, Any]:
    """Parse ``text``; raises ValueError (json/tomllib's own) when it is not valid."""
    if fmt == "json":
        if not text.strip():
            # dockerd accepts an empty daemon.json; so do we.
            return {}
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return data
    return tomllib.loads(text)


def render(old_text: str | None, data: dict[str, Any], fmt: Format) -> str:
    """``data`` as file text; TOML is edited in place so comments and order survive."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return tomledit.edit(old_text, data)


def read_config(path: Path, fmt: Format) -> Current:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Current(path, None, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigureError(f"{path}: cannot read: {exc}") from None
    try:
        data = parse(text, fmt)
    except ValueError as exc:
        raise ConfigureError(
            f"{path}: not valid {fmt.upper()} ({exc}); fix or move it away, nothing was changed"
        ) from None
    return Current(path, text, data)


def plan(current: Current, desired: dict[str, Any], fmt: Format) -> FileChange | None:
    """The change that makes ``current`` say ``desired``, or None if it already does.

    Compared as data, not text, so a hand-formatted file that already has our settings is
    left alone.
    """
    if current.text is not None and current.data == desired:
        return None
    new_text = render(current.text, desired, fmt)
    # Re-parse what we are about to write: a file a runtime can't read is worse than none.
    if parse(new_text, fmt) != desired:
        raise ConfigureError(f"{current.path}: rendered {fmt.upper()} does not round-trip")
    return FileChange(current.path, current.text, new_text)


def _now() -> datetime:
    return datetime.now(UTC)


def backup_path(path: Path, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}")
    n = 1
    while candidate.exists():
        # Two changes within one second must not overwrite the first backup.
        candidate = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}.{n}")
        n += 1
    return candidate


def apply(
    change: FileChange, *, backup: bool = True, now: Callable[[], datetime] = _now
) -> Path | None:
    """Write ``change``; returns the backup's path if one was made."""
    path = change.path
    path.parent.mkdir(parents=True, exist_ok=True)
    st: os.stat_result | None = None
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
    if st is not None:
        on_disk = path.read_text(encoding="utf-8")
        if on_disk != change.old_text:
            raise ConfigureError(f"{path}: changed while we were working on it; run again")
    saved: Path | None = None
    if st is not None and backup:
        saved = backup_path(path, now())
        _atomic_write(saved, change.old_text or "", st)
        log.debug("backed up %s to %s", path, saved)
    _atomic_write(path, change.new_text, st)
    return saved


def _atomic_write(path: Path, text: str, like: os.stat_result | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (like.st_mode & 0o7777) if like is not None else NEW_FILE_MODE)
        if like is not None and os.geteuid() == 0:
            os.chown(tmp, like.st_uid, like.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    durable.sync_dir(path.parent)
