"""Settings reach the agent the same way from flags, LAYERSWARM_* env and a YAML file."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import DOCKER_HUB_URL, AgentConfig, Upstream
from core import settings
from core.settings import ConfigError


def load(argv: list[str], env: dict[str, str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, AgentConfig)
    return settings.load(AgentConfig, parser.parse_args(argv), environ=env or {})


def test_defaults_mirror_docker_hub() -> None:
    cfg = load([])
    assert cfg.default_upstream == "docker.io"
    assert cfg.upstreams["docker.io"] == Upstream("docker.io", DOCKER_HUB_URL)
    assert cfg.listen_host_port == ("127.0.0.1", 5050)


def test_flags_env_and_file_with_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text(
        "listen: 127.0.0.1:7000\ncache-size: 2G\nupstream:\n  ghcr.io: https://ghcr.io\n"
        "tag_ttl: 5s\n"
    )
    env = {"LAYERSWARM_CACHE_SIZE": "3G", "LAYERSWARM_ZONE": "z1"}
    cfg = load(["--config", str(conf), "--listen", "127.0.0.1:7001"], env)
    assert cfg.listen == "127.0.0.1:7001"  # flag beats file
    assert cfg.cache_size == 3 << 30  # env beats file
    assert cfg.tag_ttl == 5.0  # file beats default
    assert cfg.zone == "z1"
    assert cfg.upstreams["ghcr.io"].url == "https://ghcr.io"


def test_repeatable_upstreams_from_flags_and_env() -> None:
    cfg = load(
        [
            "--upstream",
            "127.0.0.1:5000=http://127.0.0.1:5000",
            "--upstream",
            "quay.io",
            "--default-upstream",
            "127.0.0.1:5000",
        ]
    )
    assert cfg.upstreams["127.0.0.1:5000"].url == "http://127.0.0.1:5000"
    assert cfg.upstreams["quay.io"].url == "https://quay.io"
    env_cfg = load([], {"LAYERSWARM_UPSTREAM": "a.example=http://h:1,b.example=https://b"})
    assert set(env_cfg.upstreams) == {"docker.io", "a.example", "b.example"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache-size", "lots"], "not a size"),
        (["--listen", "nowhere"], "HOST:PORT"),
        (["--upstream", "bad name=http://x"], "not a registry"),
        (["--upstream", "ghcr.io=ftp://x"], "http(s)"),
        (["--default-upstream", "ghcr.io"], "has no --upstream"),
        (["--role", "king"], "peer or seed"),
        (["--tag-ttl", "soon"], "not a duration"),
        (["--upstream", "a.io=http://x", "--upstream", "a.io=http://y"], "more than once"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(argv)


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("cache_sise: 1G\n")
    with pytest.raises(ConfigError, match="unknown setting 'cache_sise'"):
        load(["--config", str(conf)])


def test_cli_exits_2_with_one_line_on_bad_flag(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "agent",
            "--cache-size",
            "huge",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cache-size" in lines[0] and "not a size" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_refuses_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "agent",
            "--data-dir",
            str(blocker / "sub"),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "data-dir" in proc.stderr and "Traceback" not in proc.stderr
