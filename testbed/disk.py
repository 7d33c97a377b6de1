"""Small filesystems for disk-full tests: a tmpfs of a given size, and a filler that takes
every free byte of it (as another writer on a shared disk would).

Mounting needs root; the mount is always undone in a ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from testbed.procs import ProcError, run_checked


@contextlib.contextmanager
def tmpfs(path: Path, size: int, *, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes at ``path`` for the block, then unmount it."""
    if os.geteuid() != 0:
        raise ProcError("mounting a tmpfs needs root (these tests run under the netns marker)")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755" + (",ro" if read_only else "")
    run_checked(["mount", "-t", "tmpfs", "-o", opts, "layerswarm-test", str(path)])
    try:
        yield path
    finally:
        if run_checked(["umount", str(path)], check=False).returncode != 0:
            # Something still holds a file open (a process the test is stopping): detach the
            # mount now, the kernel frees it when the last file closes.
            run_checked(["umount", "-l", str(path)], check=False)


def fill(directory: Path, *, leave: int = 0, name: str = "filler") -> Path:
    """Write a file in ``directory`` until its filesystem has at most ``leave`` bytes free.

    With ``leave=0`` the last write must fail with ENOSPC; anything else is an error, so a
    test built on a full disk knows the disk really was full.
    """
    path = directory / name
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    target = max(0, free - leave)
    block = b"\0" * (1 << 20)
    written = 0
    saw_enospc = False
    with path.open("ab") as f:
        fd = f.fileno()
        try:
            while written < target:
                n = os.write(fd, block[: min(len(block), target - written)])
                written += n
            if leave == 0:
                # Pages and metadata round things: keep writing small blocks until refused.
                while True:
                    written += os.write(fd, b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            saw_enospc = True
    if leave == 0 and not saw_enospc:
        raise AssertionError(f"{directory} never reported ENOSPC")
    return path
