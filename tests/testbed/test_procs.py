"""Self-tests of testbed/procs.py against real processes."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest

from testbed.procs import (
    Proc,
    ProcError,
    free_port,
    run_checked,
    wait_for_http,
    wait_for_port,
)

pytestmark = pytest.mark.integration


def test_proc_serves_then_stops_by_pid(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    proc = Proc(argv, tmp_path / "logs", name="http").start()
    try:
        wait_for_port("127.0.0.1", port, 15, proc=proc)
        assert wait_for_http(f"http://127.0.0.1:{port}/", 15, proc=proc) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200
    finally:
        code = proc.stop(timeout=5)
    assert not proc.running
    assert code is not None
    # http.server logs each request on stderr: the tail helper must show it.
    assert '"GET / HTTP/1.1" 200' in proc.log_tail()


def test_proc_restarts_and_appends_logs(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"]
    proc = Proc(argv, tmp_path / "logs", name="sleeper")
    for run in (1, 2):
        proc.start()
        proc.wait_for_log("hello", count=run)
        proc.stop(timeout=5)
    assert proc.stdout_path.read_text().count("hello") == 2


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc = Proc([sys.executable, "-c", code], tmp_path, name="stubborn").start()
    proc.wait_for_log("up")
    assert proc.stop(timeout=0.5) == -9


def test_wait_for_port_reports_early_exit(tmp_path: Path) -> None:
    proc = Proc([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path).start()
    with pytest.raises(ProcError, match="exited \\(3\\)") as info:
        wait_for_port("127.0.0.1", free_port(), 10, proc=proc)
    assert "boom" in str(info.value)


def test_wait_for_port_is_bounded() -> None:
    with pytest.raises(ProcError, match="not reachable"):
        wait_for_port("127.0.0.1", free_port(), 0.3)


def test_root_namespace_never_probes_other_addresses() -> None:
    with pytest.raises(ValueError, match="root namespace"):
        wait_for_port("10.99.0.1", 80, 0.1)
    with pytest.raises(ValueError, match="root namespace"):
        wait_for_http("http://10.99.0.1:80/", 0.1)


def test_run_checked_raises_with_output() -> None:
    with pytest.raises(ProcError, match="nope"):
        run_checked([sys.executable, "-c", "import sys; sys.stderr.write('nope'); sys.exit(2)"])
    assert run_checked(["true"]).returncode == 0


def test_missing_program_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ProcError, match="bootstrap"):
        Proc(["layerswarm-no-such-program"], tmp_path).start()
