"""Fixtures for real parts: registries, token issuer, images, clients, network namespaces.

Nothing is skipped for a missing program: fixtures fail with a message naming it (the
bootstrap script installs them all). Every process is started on a free loopback port (or
inside a namespace the test made) and stopped by PID at teardown.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import shutil
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from testbed import HTPASSWD_USERS, PUSHER
from testbed.clients import Containerd, Podman
from testbed.images import Image, MediaKind, build_image, push
from testbed.netns import Rate, Topology, delete_stale_namespaces
from testbed.procs import Proc, require_binary
from testbed.registry import Registry
from testbed.tokenissuer import TokenIssuer


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces() -> None:
    # A run killed with SIGKILL cannot clean up; its namespaces carry its (now dead) PID.
    if shutil.which("ip") is not None:
        delete_stale_namespaces()


# The directories whose async tests must end every asyncio task they start: code under test
# there runs in the test's own loop, where a task left behind is a leak the daemon would have.
_TASKS_CHECKED = frozenset({"core", "agent", "tracker", "relay", "p2p", "security"})
_TESTS = Path(__file__).parent


@pytest.fixture
async def no_pending_tasks() -> AsyncIterator[None]:
    """Fail the test when, after its other fixtures were torn down, a task is still running."""
    yield
    me = asyncio.current_task()
    left = sorted(t.get_name() for t in asyncio.all_tasks() if t is not me and not t.done())
    if left:
        pytest.fail(f"tasks left pending: {', '.join(left)}", pytrace=False)


@pytest.fixture(autouse=True)
def _tasks_end(request: pytest.FixtureRequest) -> None:
    # Requested first of all, so torn down last: after every fixture closed what it started.
    where = request.path.relative_to(_TESTS).parts[0]
    if where in _TASKS_CHECKED and inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("no_pending_tasks")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain registry on 127.0.0.1:<free port>, fresh for each test."""
    require_binary("docker-registry")
    reg = Registry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain registry shared by a module's tests (use distinct repo names per test)."""
    require_binary("docker-registry")
    reg = Registry(tmp_path_factory.mktemp("module-registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry with htpasswd auth; users and passwords in ``testbed.HTPASSWD_USERS``."""
    require_binary("docker-registry")
    reg = Registry(tmp_path / "htpasswd-registry", htpasswd=HTPASSWD_USERS).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def token_issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    """Bearer-token issuer; users alice (pull private/*), bob (pull public/*), pusher (all)."""
    with TokenIssuer(tmp_path / "token-issuer") as issuer:
        yield issuer


@pytest.fixture
def token_registry(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Registry]:
    """A registry with bearer-token auth by ``token_issuer`` (``registry.token_issuer``)."""
    require_binary("docker-registry")
    reg = Registry(tmp_path / "token-registry", token_issuer=token_issuer).start()
    try:
        yield reg
    finally:
        reg.stop()


class ImageFactory(Protocol):
    def __call__(
        self,
        repo: str = "test/img",
        tag: str = "v1",
        layers: Sequence[int | bytes] = (256 * 1024,),
        *,
        registry: Registry | None = None,
        media_type: MediaKind = "oci",
        seed: int | None = None,
        creds: tuple[str, str] | None = None,
    ) -> Image: ...


@pytest.fixture
def image_factory(tmp_path: Path, request: pytest.FixtureRequest) -> ImageFactory:
    """Build an image (random layers of the given sizes) and push it; returns the ``Image``.

    Without ``registry=`` it pushes to the ``registry`` fixture (started on first use). On an
    authenticated registry it pushes as ``pusher`` unless ``creds`` are given.
    """
    counter = itertools.count(1)

    def make(
        repo: str = "test/img",
        tag: str = "v1",
        layers: Sequence[int | bytes] = (256 * 1024,),
        *,
        registry: Registry | None = None,
        media_type: MediaKind = "oci",
        seed: int | None = None,
        creds: tuple[str, str] | None = None,
    ) -> Image:
        require_binary("skopeo")
        n = next(counter)
        if registry is None:
            registry = request.getfixturevalue("registry")
            assert isinstance(registry, Registry)
        if creds is None and (registry.htpasswd_users or registry.token_issuer):
            creds = PUSHER
        layout = build_image(
            tmp_path / "images" / f"{n}",
            layers,
            media_type=media_type,
            # Distinct per call by default, so two images never share layers by accident.
            seed=seed if seed is not None else zlib.crc32(f"{repo}:{tag}:{n}".encode()),
            tag=tag,
        )
        return push(layout, registry, repo, tag, creds)

    return make


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    """A containerd daemon with everything under tmp_path; ``containerd.pull(ref, hosts_dir)``."""
    require_binary("containerd")
    require_binary("ctr")
    with Containerd(tmp_path / "containerd") as ctrd:
        yield ctrd


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman with root/runroot/tmp under tmp_path (vfs); set ``podman.registries_conf``."""
    require_binary("podman")
    p = Podman(tmp_path / "podman")
    try:
        yield p
    finally:
        p.cleanup()


TopologyFactory = Callable[..., Topology]


@pytest.fixture
def topology() -> Iterator[TopologyFactory]:
    """``topology(n, upload={1: "100mbit"}, download=...)`` -> an entered ``Topology``.

    Every topology made is closed (its processes killed, namespaces deleted) at teardown.
    """
    made: list[Topology] = []

    def make(
        n: int,
        *,
        upload: dict[int, Rate] | None = None,
        download: dict[int, Rate] | None = None,
    ) -> Topology:
        topo = Topology(n, upload=upload, download=download)
        made.append(topo)
        return topo.__enter__()

    try:
        yield make
    finally:
        for topo in reversed(made):
            topo.close()


ProcFactory = Callable[..., Proc]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcFactory]:
    """``procs(argv, name=..., netns=..., env=...)`` -> a started ``Proc``, stopped at teardown."""
    started: list[Proc] = []

    def start(
        argv: Sequence[str],
        *,
        name: str | None = None,
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        p = Proc(argv, tmp_path / "logs", name=name, netns=netns, env=env)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in reversed(started):
            p.stop()
