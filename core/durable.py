"""Files that survive a power cut: written aside, flushed, renamed into place, and the rename
itself flushed.

A rename alone orders nothing on disk: after a power cut the new name can point at a file
whose data never reached the disk (empty or short), which for the cache means a blob that no
longer matches its name. So the file is fsynced before the rename and its directory after it.

    replace(tmp, dest)               # a file already written: flush, rename, flush the dir
    write(path, data, mode=0o600)    # the whole write-aside-and-rename, for small state files
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sync_file(path: Path) -> None:
    """Flush ``path``'s data and size to disk (any descriptor of a file flushes all of it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """Flush ``path``'s entries: what makes a rename or a new name in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: Path, dest: Path) -> None:
    """Move the finished file ``src`` to ``dest`` so that after a power cut ``dest`` is either
    absent (or its old self) or complete. Raises OSError as os.replace does."""
    sync_file(src)
    os.replace(src, dest)
    sync_dir(dest.parent)


def write(path: Path, data: bytes, *, mode: int = 0o644, tmp: Path | None = None) -> None:
    """Write ``data`` to ``tmp`` (default: ``path`` + ".tmp"), then ``replace`` it onto
    ``path``. On failure the scratch file is removed: it would only hold room a full disk
    lacks. ``mode`` applies to a new file (before umask), e.g. 0o600 for keys."""
    scratch = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        raise
    sync_dir(path.parent)
