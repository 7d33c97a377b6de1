"""``layerswarm tracker`` as an operator runs it: bad settings fail fast with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.redis_server import free_port
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
            "store must be memory or redis",
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
        [sys.executable, "-m", "tracker", "--shutdown-timeout", "2s"],
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
