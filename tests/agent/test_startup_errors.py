"""A data dir the agent cannot use stops it at start-up with one line naming the path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testbed.disk import tmpfs
from testbed.procs import free_port, run_checked


def start_agent(data_dir: Path) -> tuple[int, str]:
    argv = [sys.executable, "-m", "layerswarm", "agent", "--no-p2p"]
    argv += ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)]
    # A healthy agent would run until stopped: the timeout turns that into a failure.
    res = run_checked(argv, timeout=30, check=False)
    return res.returncode, res.stderr


def assert_clear_failure(rc: int, stderr: str, path: Path, why: str) -> None:
    assert rc != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert str(path) in stderr and why in stderr, stderr


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("not a directory")
    rc, err = start_agent(target)
    assert_clear_failure(rc, err, target, "is not a directory")


def test_data_dir_whose_cache_dir_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "blobs").write_text("a file where the cache should be")
    rc, err = start_agent(data)
    assert_clear_failure(rc, err, data / "blobs", "File exists")


@pytest.mark.integration
@pytest.mark.netns  # mounting needs root
def test_read_only_data_dir(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", 1 << 20, read_only=True) as data:
        rc, err = start_agent(data)
        assert_clear_failure(rc, err, data, "not writable: Read-only file system")
        rc, err = start_agent(data / "sub")
        assert_clear_failure(rc, err, data / "sub", "cannot create it: Read-only file system")


@pytest.mark.integration
@pytest.mark.netns
def test_read_only_cache_dir_inside_a_writable_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    with tmpfs(data / "blobs", 1 << 20, read_only=True):
        rc, err = start_agent(data)
        assert_clear_failure(rc, err, data / "blobs", "Read-only file system")
