"""Start real programs for tests, wait until they answer, and stop exactly what was started.

Every process gets its own session (``start_new_session=True``), so its PID is also its
process-group id: ``Proc.stop`` signals that group and nothing else. Output goes to files
(never to pipes that could fill up and block the child) so a failing assertion can quote the
tail with ``log_tail``.

Readiness checks against addresses inside a network namespace run *inside* that namespace
(``wait_for_port(..., netns=NAME)``): the root namespace has no route to those addresses and
must never send traffic to them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

# Loopback only: wait_for_* refuses other hosts unless the check runs inside a namespace.
_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


class ProcError(RuntimeError):
    """A helper process failed to start, died early, or did not become ready in time."""


def require_binary(name: str) -> str:
    """Return the path of ``name`` or fail loudly: tests never skip for a missing program."""
    path = shutil.which(name)
    if path is None:
        raise ProcError(
            f"required program {name!r} is not installed; run scripts/bootstrap.sh "
            "(it installs the Debian packages the integration tests drive)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _check_loopback(host: str) -> None:
    if not host.startswith(_LOOPBACK):
        raise ValueError(
            f"refusing to connect to {host!r} from the root namespace; pass netns= so the "
            "check runs inside the namespace that owns that address"
        )


# Run inside a namespace by `ip netns exec`: one bounded loop, so one process per wait.
_NETNS_WAIT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 15.0,
    *,
    netns: str | None = None,
    proc: Proc | None = None,
) -> None:
    """Wait until a TCP connect to ``host:port`` succeeds; raise ProcError after ``timeout``.

    With ``netns`` the connects are made from inside that namespace. With ``proc`` the wait
    ends early (with its log tail in the error) if that process exits first.
    """
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", _NETNS_WAIT]
        argv += [host, str(port), str(timeout)]
        if subprocess.run(argv, check=False, timeout=timeout + 10).returncode != 0:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise ProcError(f"{host}:{port} in netns {netns} not reachable in {timeout}s{tail}")
        return
    _check_loopback(host)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as exc:
            if proc is not None and not proc.running:
                raise ProcError(
                    f"{proc.name} exited ({proc.returncode}) before {host}:{port} opened\n"
                    f"{proc.log_tail()}"
                ) from exc
            if time.monotonic() >= deadline:
                tail = f"\n{proc.log_tail()}" if proc is not None else ""
                raise ProcError(f"{host}:{port} not reachable after {timeout}s{tail}") from exc
            time.sleep(0.05)


def wait_for_http(url: str, timeout: float = 15.0, *, proc: Proc | None = None) -> int:
    """Wait until ``url`` gives any HTTP answer (401 counts: the server is up); return status."""
    host = urllib.parse.urlsplit(url).hostname or ""
    _check_loopback(host)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError as exc:
            if proc is not None and not proc.running:
                raise ProcError(
                    f"{proc.name} exited ({proc.returncode}) before {url} answered\n"
                    f"{proc.log_tail()}"
                ) from exc
            if time.monotonic() >= deadline:
                tail = f"\n{proc.log_tail()}" if proc is not None else ""
                raise ProcError(f"{url} gave no HTTP answer after {timeout}s{tail}") from exc
            time.sleep(0.05)


def file_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note saying it is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"({path} does not exist)"
    # Reading the whole log is fine: test logs are small, and the tail is what matters.
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text)


class Proc:
    """One started program: argv, optional network namespace, logs in ``log_dir``.

    ``start()`` may be called again after ``stop()`` (same argv, logs appended), which is how
    tests take a server down and bring it back on the same port and data.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_dir: Path,
        *,
        name: str | None = None,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name or Path(argv[0]).name
        self.argv = list(argv)
        self.netns = netns
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{self.name}.stdout.log"
        self.stderr_path = log_dir / f"{self.name}.stderr.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def full_argv(self) -> list[str]:
        if self.netns is None:
            return list(self.argv)
        # `ip netns exec` execs the program, so the PID we get is the program's own.
        return ["ip", "netns", "exec", self.netns, *self.argv]

    def start(self) -> Proc:
        if self.running:
            raise ProcError(f"{self.name} is already running (pid {self.pid})")
        require_binary(self.full_argv[0])
        env = None
        if self.env is not None:
            env = {**os.environ, **self.env}
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._popen = subprocess.Popen(
                self.full_argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ProcError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group we started, SIGKILL it after ``timeout``; return the code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait(timeout=timeout)
        # Children that outlived the leader still carry its group id: end them too.
        self._signal_group(signal.SIGKILL)
        return popen.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def wait_for_log(
        self, text: str, timeout: float = 15.0, *, count: int = 1, stream: str = "stdout"
    ) -> None:
        """Wait until ``text`` appears ``count`` times in stdout (or ``stream="stderr"``)."""
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        deadline = time.monotonic() + timeout
        while True:
            seen = path.read_text(errors="replace").count(text) if path.exists() else 0
            if seen >= count:
                return
            if not self.running:
                raise ProcError(f"{self.name} exited before logging {text!r}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ProcError(
                    f"{self.name} did not log {text!r} in {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of stdout and stderr, for assertion messages."""
        return (
            f"--- {self.name} stdout ({self.stdout_path}) ---\n"
            f"{file_tail(self.stdout_path, lines)}\n"
            f"--- {self.name} stderr ({self.stderr_path}) ---\n"
            f"{file_tail(self.stderr_path, lines)}"
        )

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen is not None else None
        return f"Proc({self.name!r}, pid={pid}, netns={self.netns!r})"


def run_checked(
    argv: Sequence[str],
    *,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    netns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion; with ``check`` a failure raises with its output."""
    full = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
    require_binary(full[0])
    full_env = None if env is None else {**os.environ, **env}
    try:
        res = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcError(f"timed out after {timeout}s: {' '.join(full)}") from exc
    if check and res.returncode != 0:
        raise ProcError(
            f"command failed ({res.returncode}): {' '.join(full)}\n"
            f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}"
        )
    return res
