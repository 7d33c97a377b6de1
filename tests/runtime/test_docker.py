"""A real Docker Engine pulling through the agent, configured by ``layerswarm configure docker``.

One dockerd for the module (vfs, no network set-up, its own socket and data root). The agent
mirrors "docker.io", which here is a local distribution registry with bearer-token auth that,
like Docker Hub, lets anyone pull ``library/*`` and only alice pull ``private/*``. Whether the
upstream served something is read from its access log, never guessed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.agent import AgentProc
from testbed.dockerd import ENGINE_SETTINGS, Dockerd, write_client_config
from testbed.images import Image, build_image, push
from testbed.procs import require_binary
from testbed.registry import Registry
from testbed.tokenissuer import TokenIssuer, User
from tests.cli.conftest import layerswarm

pytestmark = pytest.mark.integration

PUSHER = ("pusher", "pusher-pw")
ALICE = ("alice", "alice-pw")


@dataclass
class Hub:
    """The stand-in for Docker Hub: registry, its token issuer, and the images it holds."""

    registry: Registry
    issuer: TokenIssuer
    public: Image
    private: Image


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_binary("docker-registry")
    work = tmp_path_factory.mktemp("hub")
    users = {
        "alice": User("alice-pw", {"private/*": frozenset({"pull"})}),
        "pusher": User("pusher-pw", {"*": frozenset({"pull", "push"})}),
    }
    anonymous = {"library/*": frozenset({"pull"})}
    with TokenIssuer(work / "issuer", users=users, anonymous=anonymous) as issuer:
        registry = Registry(work / "registry", token_issuer=issuer).start()
        try:
            # Docker 20.10 reads both media types; docker's own is what Docker Hub mostly serves.
            public_layout = build_image(
                work / "public", [300_000, 120_000], media_type="docker", seed=1, tag="v1"
            )
            private_layout = build_image(
                work / "private", [200_000], media_type="docker", seed=2, tag="v1"
            )
            public = push(public_layout, registry, "library/app", "v1", PUSHER)
            private = push(private_layout, registry, "private/app", "v1", PUSHER)
            yield Hub(registry, issuer, public, private)
        finally:
            registry.stop()


@pytest.fixture(scope="module")
def agent(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = AgentProc(
        tmp_path_factory.mktemp("agent"),
        {"docker.io": hub.registry.url},
        default_upstream="docker.io",
        extra=["--no-p2p"],
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def daemon_json(agent: AgentProc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's daemon.json (engine settings), then ``layerswarm configure docker``."""
    path = tmp_path_factory.mktemp("etc-docker") / "daemon.json"
    path.write_text(json.dumps(ENGINE_SETTINGS, indent=2) + "\n")
    res = layerswarm("configure", "docker", "--mirror", agent.url, "--daemon-json", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    return path


@pytest.fixture(scope="module")
def engine(daemon_json: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    require_binary("dockerd")
    with Dockerd(tmp_path_factory.mktemp("dockerd"), daemon_json) as d:
        yield d


def remove_images(engine: Dockerd) -> None:
    ids = engine.image_ids()
    if ids:
        engine.docker("rmi", "--force", *ids)


def pulled_image_id(engine: Dockerd, ref: str) -> str:
    return engine.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def layer_fetches(hub: Hub, image: Image) -> list[int]:
    return [hub.registry.blob_fetches(layer.digest) for layer in image.layers]


def test_configure_docker_writes_the_daemon_json_dockerd_runs_with(
    engine: Dockerd, daemon_json: Path, agent: AgentProc
) -> None:
    written = json.loads(daemon_json.read_text())
    assert written["registry-mirrors"] == [agent.url]
    # The operator's own settings are kept; dockerd would not have started without them.
    assert {k: written[k] for k in ENGINE_SETTINGS} == ENGINE_SETTINGS
    mirrors = json.loads(
        engine.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
    )
    assert mirrors == [agent.url + "/"], engine.proc.log_tail()


def test_public_image_pulls_through_the_agent_and_then_from_its_cache(
    engine: Dockerd, hub: Hub, agent: AgentProc
) -> None:
    image = hub.public
    remove_images(engine)
    engine.docker("pull", "app:v1")
    # Docker names an image by its config's digest: the bytes came through whole.
    assert pulled_image_id(engine, "app:v1") == image.config_digest
    assert layer_fetches(hub, image) == [1, 1], hub.registry.proc.log_tail()
    first = agent.metric("layerswarm_served_bytes_total", 'source="upstream"')
    assert first > 0, agent.log()

    remove_images(engine)
    engine.docker("pull", "app:v1")
    assert pulled_image_id(engine, "app:v1") == image.config_digest
    # The access log proves the second pull's layers came from the agent's cache.
    assert layer_fetches(hub, image) == [1, 1], hub.registry.proc.log_tail()
    assert agent.metric("layerswarm_served_bytes_total", 'source="cache"') >= sum(
        layer.size for layer in image.layers
    ), agent.log()


def test_private_image_needs_the_docker_io_login(engine: Dockerd, hub: Hub, tmp_path: Path) -> None:
    image = hub.private
    anonymous = write_client_config(tmp_path / "anonymous", None)
    wrong = write_client_config(tmp_path / "wrong", (ALICE[0], "not-her-password"))
    alice = write_client_config(tmp_path / "alice", ALICE)
    remove_images(engine)

    for config in (anonymous, wrong):
        res = engine.docker("pull", "private/app:v1", config_dir=config, check=False)
        assert res.returncode != 0, res.stdout
    assert layer_fetches(hub, image) == [0], hub.registry.proc.log_tail()

    engine.docker("pull", "private/app:v1", config_dir=alice)
    assert pulled_image_id(engine, "private/app:v1") == image.config_digest
    assert layer_fetches(hub, image) == [1]

    # Now the layers are in the agent's cache, and still nobody else gets them.
    remove_images(engine)
    for config in (anonymous, wrong):
        res = engine.docker("pull", "private/app:v1", config_dir=config, check=False)
        assert res.returncode != 0, res.stdout
    assert engine.image_ids() == []


def test_doctor_reads_the_engines_mirrors_through_its_api(
    engine: Dockerd, agent: AgentProc, hub: Hub
) -> None:
    common = [
        "--upstream",
        f"docker.io={hub.registry.url}",
        "--data-dir",
        str(agent.data_dir),
        "--no-p2p",
        "--docker-host",
        engine.base_url,
        "--timeout",
        "3s",
    ]
    res = layerswarm("doctor", "--agent", agent.url, *common)
    expected = f"OK    runtime: the container API at {engine.base_url} pulls docker.io through"
    assert expected in res.stdout, res.stdout + res.stderr

    # An agent on another port is not what this engine uses, and doctor says so from the API.
    other = "http://127.0.0.1:1"
    res = layerswarm("doctor", "--agent", other, *common)
    assert f"FAIL  runtime: the container API at {engine.base_url} does not use" in res.stdout
    assert agent.url in res.stdout, res.stdout


def test_cached_image_still_pulls_with_the_upstream_stopped(
    engine: Dockerd, hub: Hub, agent: AgentProc
) -> None:
    image = hub.public
    engine.docker("pull", "app:v1")  # cached by the agent, whatever ran before
    remove_images(engine)
    hub.registry.stop()
    try:
        engine.docker("pull", "app:v1")
        assert pulled_image_id(engine, "app:v1") == image.config_digest
    finally:
        hub.registry.start()


def test_a_reload_picks_up_the_mirrors_configure_wrote(
    engine: Dockerd, daemon_json: Path, agent: AgentProc
) -> None:
    """configure's note says `systemctl reload docker`: dockerd rereads registry-mirrors on
    SIGHUP, without a restart (last in this module: it changes the engine's mirrors)."""
    other = "http://127.0.0.1:9"
    res = layerswarm("configure", "docker", "--mirror", other, "--daemon-json", str(daemon_json))
    assert res.returncode == 0 and "systemctl reload docker" in res.stdout, res.stdout
    os.kill(engine.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        mirrors = json.loads(
            engine.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
        )
        if mirrors == [other + "/", agent.url + "/"]:
            break
        assert time.monotonic() < deadline, (mirrors, engine.proc.log_tail())
        time.sleep(0.2)
