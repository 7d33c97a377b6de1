"""``layerswarm tracker`` as an operator runs it: bad settings fail fast with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.redis_server import free_port
from tests.tracker.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerswarm", "tracker", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "127.0.0.1:0", "--store", "memory"], "token-file is required"),
        (["--listen", "nowhere", "--token-file", "{tok}"], "expected HOST:PORT"),
        (
            ["--listen", "127.0.0.1:0", "--store", "mysql://x", "--token-file", "{tok}"],
            "store must be memory, redis://HOST:PORT/DB or redis+sentinel://",
        ),
        (
            ["--listen", "127.0.0.1:0", "--store", "redis+sentinel://h:1", "--token-file", "{tok}"],
            "name the master the sentinels watch",
        ),
        (
            ["--listen", "127.0.0.1:0", "--token-file", "/nonexistent/token"],
            "token-file /nonexistent/token",
        ),
        (["--listen", "127.0.0.1:0", "--token-file", "{tok}", "--max-peers", "0"], "max-peers"),
        (
            ["--listen", "127.0.0.1:0", "--token-file", "{tok}", "--agent-ttl", "soon"],
            "not a duration",
        ),
        (["--config", "{yaml}"], "unknown setting 'colour'"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    yaml_file = tmp_path / "tracker.yaml"
    yaml_file.write_text("colour: blue\n")
    result = run_cli(*(a.format(tok=tok, yaml=yaml_file) for a in args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("layerswarm tracker: ") and needle in lines[0]


def test_unknown_flag_exits_2() -> None:
    result = run_cli("--listen", "127.0.0.1:0", "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr.strip().splitlines()[-1]


def test_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerswarm", "tracker", "--shutdown-timeout", "2s"],
        cwd=ROOT,
        env={
            **os.environ,
            "LAYERSWARM_LISTEN": f"127.0.0.1:{port}",
            "LAYERSWARM_TOKEN_FILE": str(tok),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = b""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.1)
        assert body == b'{"status":"ok"}'
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "tracker listening on http://127.0.0.1:" in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def _listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (loopback, IPv4), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def _workers_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_workers_share_the_port_and_a_dead_worker_is_replaced(
    tmp_path: Path, redis_url: str
) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "layerswarm", "tracker", "--listen", f"127.0.0.1:{port}"),
            *("--store", redis_url, "--token-file", str(tok), "--workers", "2"),
            *("--shutdown-timeout", "2s"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Two worker processes, each with its own listening socket on the one port.
        _wait(lambda: _listeners(port) == 2, "two listening sockets")
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.read() == b'{"status":"ok"}'
        # A worker killed from outside is replaced; the port keeps answering meanwhile.
        os.kill(workers[0], signal.SIGKILL)
        _wait(
            lambda: len(_workers_of(proc.pid)) == 2 and workers[0] not in _workers_of(proc.pid),
            "a new worker",
        )
        _wait(lambda: _listeners(port) == 2, "two listening sockets again")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "with 2 workers" in err
        assert "starting it again" in err
        assert _listeners(port) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def test_workers_need_a_shared_store(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    result = run_cli("--listen", "127.0.0.1:0", "--token-file", str(tok), "--workers", "2")
    assert result.returncode == 2
    assert "workers above 1 need --store redis" in result.stderr
