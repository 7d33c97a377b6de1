"""Power-loss durability, seen from outside: a real agent runs under strace, and every file it
renames into its data dir must have been fsynced first, and its directory fsynced after.

A power cut cannot be produced on demand here; the system calls that make a rename survive
one can be watched instead.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.procs import Proc, free_port, require_binary
from testbed.registry import Registry
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

MiB = 1 << 20

_SYSCALL = re.compile(r"^(?P<name>fsync|fdatasync|rename|renameat|renameat2)\((?P<args>.*)\) = 0$")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def syscalls(trace_dir: Path) -> list[list[tuple[str, list[str]]]]:
    """Per thread (strace -ff writes one file each), its successful calls in order: fsyncs
    with the synced path, renames with (source, destination)."""
    threads = []
    for f in sorted(trace_dir.iterdir()):
        calls = []
        for line in f.read_text(errors="replace").splitlines():
            m = _SYSCALL.match(line.strip())
            if m is None:
                continue
            if m["name"] in ("fsync", "fdatasync"):
                fd = _FD_PATH.match(m["args"])
                assert fd is not None, line
                calls.append(("sync", [fd["path"]]))
            else:
                paths = _QUOTED.findall(m["args"])
                assert len(paths) == 2 and all(p.startswith("/") for p in paths), line
                calls.append(("rename", paths))
        threads.append(calls)
    return threads


def fetch(url: str) -> bytes:
    req = urllib.request.Request(
        url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        data: bytes = r.read()
        return data


def test_every_rename_into_the_data_dir_is_fsynced_before_and_after(
    tmp_path: Path, registry: Registry, image_factory: ImageFactory
) -> None:
    strace = require_binary("strace")
    image = image_factory(layers=[2 * MiB, 64 * 1024])
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    agent = AgentProc(
        tmp_path / "agent",
        {registry.host_port: registry.url},
        default_upstream=registry.host_port,
        extra=["--no-p2p"],
    )
    agent.port = free_port()
    agent.proc = Proc(
        [strace, "-ff", "-qq", "-y", "-o", str(trace_dir / "t"),
         "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", *agent.argv()],
        agent.workdir / "logs", name="agent",
    )  # fmt: skip
    try:
        agent.start()
        base = f"{agent.url}/v2/{image.repo}"
        assert fetch(f"{base}/manifests/{image.tag}") == image.manifest
        for digest in image.blob_digests:
            assert fetch(f"{base}/blobs/{digest}") == image.blob(digest)
    finally:
        agent.stop()

    data = str(agent.data_dir.resolve())
    renamed: list[str] = []
    for calls in syscalls(trace_dir):
        for i, (kind, paths) in enumerate(calls):
            if kind != "rename" or not paths[1].startswith(data + "/"):
                continue
            src, dest = paths
            renamed.append(dest)
            before = [p[0] for k, p in calls[:i] if k == "sync"]
            after = [p[0] for k, p in calls[i + 1 :] if k == "sync"]
            assert src in before, f"{dest} renamed from {src} without an fsync of it first"
            assert str(Path(dest).parent) in after, f"{dest}: its directory never fsynced"
    # The trace really covered the cache: every blob and the manifest were renamed in.
    blobs = {Path(d).name for d in renamed if "/blobs/" in d}
    assert blobs >= {d.split(":")[1] for d in image.blob_digests}, renamed
    assert any("/manifests/" in d for d in renamed), renamed
