"""`layerswarm configure`: every file it writes is read back the way the runtime reads it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from layerswarm import cli
from layerswarm.runtimeconf import tomledit
from tests.ops.conftest import Registry, free_port

MIRROR = "http://127.0.0.1:5050"


def configure(*argv: str) -> int:
    return cli.main(["configure", *argv])


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.layerswarm.bak.*"))


def leftovers(directory: Path) -> list[Path]:
    """Temp files an interrupted atomic write would leave behind."""
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --- docker -----------------------------------------------------------------------------


def test_docker_fresh_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = tmp_path / "docker" / "daemon.json"
    assert configure("docker", "--daemon-json", str(daemon)) == 0
    assert json.loads(daemon.read_text()) == {"registry-mirrors": [MIRROR]}
    assert stat.S_IMODE(daemon.stat().st_mode) == 0o644
    assert backups(daemon) == []
    out = capsys.readouterr().out
    assert "created" in out
    assert "systemctl reload docker" in out


def test_docker_merge_keeps_other_keys_puts_ours_first_and_backs_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = tmp_path / "daemon.json"
    before = {
        "log-driver": "journald",
        "registry-mirrors": ["https://mirror.example.internal"],
        "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 65536, "Soft": 65536}},
    }
    original = json.dumps(before)
    daemon.write_text(original)
    daemon.chmod(0o600)

    assert configure("docker", "--daemon-json", str(daemon)) == 0

    after = json.loads(daemon.read_text())
    assert after["registry-mirrors"] == [MIRROR, "https://mirror.example.internal"]
    assert {k: v for k, v in after.items() if k != "registry-mirrors"} == {
        k: v for k, v in before.items() if k != "registry-mirrors"
    }
    assert stat.S_IMODE(daemon.stat().st_mode) == 0o600
    [saved] = backups(daemon)
    assert saved.read_text() == original
    assert "backup:" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_docker_second_run_is_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"debug": true}')
    assert configure("docker", "--daemon-json", str(daemon)) == 0
    first = daemon.read_bytes()
    first_mtime = daemon.stat().st_mtime_ns
    capsys.readouterr()

    assert configure("docker", "--daemon-json", str(daemon)) == 0

    assert "already configured" in capsys.readouterr().out
    assert daemon.read_bytes() == first
    assert daemon.stat().st_mtime_ns == first_mtime
    assert len(backups(daemon)) == 1


def test_docker_moves_our_mirror_to_the_front_once(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"registry-mirrors": ["https://a.example", MIRROR + "/"]}))
    assert configure("docker", "--daemon-json", str(daemon)) == 0
    assert json.loads(daemon.read_text())["registry-mirrors"] == [MIRROR, "https://a.example"]


def test_docker_plain_http_mirror_off_loopback_is_listed_insecure(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"insecure-registries": ["10.0.0.1:5000"]}))
    assert configure("docker", "--daemon-json", str(daemon), "--mirror", "http://node7:5050") == 0
    data = json.loads(daemon.read_text())
    assert data["registry-mirrors"] == ["http://node7:5050"]
    assert data["insecure-registries"] == ["10.0.0.1:5000", "node7:5050"]


def test_dry_run_prints_a_diff_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = tmp_path / "daemon.json"
    original = '{"log-driver": "journald"}\n'
    daemon.write_text(original)
    fresh = tmp_path / "fresh" / "daemon.json"

    assert configure("docker", "--daemon-json", str(daemon), "--dry-run") == 0
    assert configure("docker", "--daemon-json", str(fresh), "--dry-run") == 0

    out = capsys.readouterr().out
    assert f"--- {daemon}" in out
    assert f"+++ {daemon}" in out
    assert '-{"log-driver": "journald"}' in out
    assert f'+    "{MIRROR}"' in out
    assert "--- /dev/null" in out
    assert "nothing written" in out
    assert daemon.read_text() == original
    assert backups(daemon) == []
    assert not fresh.parent.exists()


def test_invalid_json_is_refused_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = tmp_path / "daemon.json"
    broken = '{"log-driver": "journald",,}'
    daemon.write_text(broken)
    assert configure("docker", "--daemon-json", str(daemon)) == 1
    err = capsys.readouterr().err
    assert "not valid JSON" in err
    assert str(daemon) in err
    assert daemon.read_text() == broken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.json"]


def test_json_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text('["registry-mirrors"]')
    assert configure("docker", "--daemon-json", str(daemon)) == 1
    assert daemon.read_text() == '["registry-mirrors"]'


def test_no_backup_flag(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{}")
    assert configure("docker", "--daemon-json", str(daemon), "--no-backup") == 0
    assert json.loads(daemon.read_text()) == {"registry-mirrors": [MIRROR]}
    assert backups(daemon) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["docker", "--registry", "ghcr.io"],
        ["docker", "--default"],
        ["podman", "--default"],
        ["containerd", "--registry", "../../etc"],
    ],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path, argv: list[str]) -> None:
    paths = [
        "--daemon-json",
        str(tmp_path / "daemon.json"),
        "--certs-dir",
        str(tmp_path / "certs.d"),
        "--registries-conf",
        str(tmp_path / "50-layerswarm.conf"),
        "--containerd-config",
        str(tmp_path / "config.toml"),
    ]
    assert configure(*argv, *paths) == 2
    assert list(tmp_path.iterdir()) == []


def test_bad_mirror_url_is_refused(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    assert configure("docker", "--daemon-json", str(daemon), "--mirror", "127.0.0.1:5050") == 1
    assert not daemon.exists()


# --- containerd ---------------------------------------------------------------------------


def containerd_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "containerd",
        "--certs-dir",
        str(tmp_path / "certs.d"),
        "--containerd-config",
        str(tmp_path / "config.toml"),
        *extra,
    ]


def read_toml(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def test_containerd_hosts_toml_per_registry(tmp_path: Path) -> None:
    argv = containerd_args(tmp_path, "--registry", "docker.io", "--registry", "ghcr.io")
    assert configure(*argv, "--default") == 0
    certs = tmp_path / "certs.d"

    hub = read_toml(certs / "docker.io" / "hosts.toml")
    assert hub == {
        "server": "https://registry-1.docker.io",
        "host": {MIRROR: {"capabilities": ["pull", "resolve"]}},
    }
    assert read_toml(certs / "ghcr.io" / "hosts.toml")["server"] == "https://ghcr.io"
    # _default has no server: containerd then falls back to the image's own registry.
    assert read_toml(certs / "_default" / "hosts.toml") == {
        "host": {MIRROR: {"capabilities": ["pull", "resolve"]}}
    }


def test_containerd_merge_keeps_server_and_hosts_with_ours_first(tmp_path: Path) -> None:
    hosts = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text(
        '# operator comment\nserver = "https://hub-proxy.example"\n'
        '[host."https://other-mirror.example"]\n  capabilities = ["pull"]\n  skip_verify = true\n'
        '[host."https://other-mirror.example".header]\n  x-team = ["infra"]\n'
    )
    assert configure(*containerd_args(tmp_path)) == 0
    data = read_toml(hosts)
    assert data["server"] == "https://hub-proxy.example"
    host = data["host"]
    assert isinstance(host, dict)
    # containerd tries hosts in file order: ours must come first.
    assert list(host) == [MIRROR, "https://other-mirror.example"]
    assert host["https://other-mirror.example"] == {
        "capabilities": ["pull"],
        "skip_verify": True,
        "header": {"x-team": ["infra"]},
    }
    assert len(backups(hosts)) == 1

    assert configure(*containerd_args(tmp_path)) == 0
    assert len(backups(hosts)) == 1


def test_containerd_invalid_toml_refuses_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = tmp_path / "certs.d" / "ghcr.io" / "hosts.toml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text('server = "https://ghcr.io"\n[host."x"\n')
    argv = containerd_args(tmp_path, "--registry", "docker.io", "--registry", "ghcr.io")
    assert configure(*argv) == 1
    assert "not valid TOML" in capsys.readouterr().err
    assert hosts.read_text() == 'server = "https://ghcr.io"\n[host."x"\n'
    # Nothing is written unless every file can be: docker.io was checked first but not written.
    assert not (tmp_path / "certs.d" / "docker.io").exists()


def test_containerd_config_path_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs.d"
    assert configure(*containerd_args(tmp_path)) == 0
    assert "no containerd config at" in capsys.readouterr().err

    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/x"\n')
    assert configure(*containerd_args(tmp_path, "--registry", "quay.io")) == 0
    err = capsys.readouterr().err
    assert "does not set the CRI registry config_path" in err
    assert f'config_path = "{certs}"' in err

    config.write_text(
        f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{certs}"\n'
    )
    assert configure(*containerd_args(tmp_path, "--registry", "registry.k8s.io")) == 0
    assert "warning" not in capsys.readouterr().err

    config.write_text(
        'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n'
        'config_path = "/etc/elsewhere"\n'
    )
    assert configure(*containerd_args(tmp_path, "--registry", "gcr.io")) == 0
    assert "does not include" in capsys.readouterr().err


# --- podman -------------------------------------------------------------------------------


def test_podman_drop_in_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "registries.conf.d" / "50-layerswarm.conf"
    argv = ["podman", "--registries-conf", str(conf)]
    assert configure(*argv, "--registry", "docker.io", "--registry", "quay.io") == 0
    assert read_toml(conf) == {
        "registry": [
            {
                "prefix": "docker.io",
                "location": "docker.io",
                "mirror": [{"location": "127.0.0.1:5050/docker.io", "insecure": True}],
            },
            {
                "prefix": "quay.io",
                "location": "quay.io",
                "mirror": [{"location": "127.0.0.1:5050/quay.io", "insecure": True}],
            },
        ]
    }
    assert "--upstream NAME=URL" in capsys.readouterr().err


def test_podman_merge_keeps_entries_and_extra_mirror_keys(tmp_path: Path) -> None:
    conf = tmp_path / "50-layerswarm.conf"
    conf.write_text(
        'unqualified-search-registries = ["docker.io"]\n'
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
        '[[registry.mirror]]\nlocation = "mirror.example:443"\n'
        '[[registry.mirror]]\nlocation = "127.0.0.1:5050"\npull-from-mirror = "digest-only"\n'
        '[[registry]]\nlocation = "registry.example"\nblocked = true\n'
    )
    assert (
        configure("podman", "--registries-conf", str(conf), "--mirror", "https://[::1]:5050") == 0
    )
    data = read_toml(conf)
    assert data["unqualified-search-registries"] == ["docker.io"]
    entries = data["registry"]
    assert isinstance(entries, list)
    hub, blocked = entries
    assert blocked == {"location": "registry.example", "blocked": True}
    assert hub["mirror"] == [
        {"location": "[::1]:5050/docker.io", "insecure": False},
        {"location": "mirror.example:443"},
        {"location": "127.0.0.1:5050", "pull-from-mirror": "digest-only"},
    ]


def test_podman_refuses_v1_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "registries.conf"
    text = '[registries.search]\nregistries = ["docker.io"]\n'
    conf.write_text(text)
    assert configure("podman", "--registries-conf", str(conf)) == 1
    assert "v1" in capsys.readouterr().err
    assert conf.read_text() == text


# --- editing TOML in place -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"a": 1, "b": -2.5, "c": True, "d": 'quote " back\\slash\nnewline \u00e9 \x01'},
        {"nested": {"deeper": {"x": [1, 2]}}, "list": []},
        {"t": [{"a": 1, "sub": [{"b": 2}, {"b": 3}]}, {"a": 4}], "key with space": "v"},
        {"mixed": [1, "two", {"three": 3}], "inline": [[1, 2], ["a"]]},
    ],
)
def test_toml_edit_of_a_new_file_round_trips(data: dict[str, object]) -> None:
    assert tomllib.loads(tomledit.edit(None, data)) == data


DATA = Path(__file__).parent / "data"


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of a unified diff, headers left out."""
    lines = diff.splitlines()
    body = [line for line in lines if not line.startswith(("---", "+++", "@@"))]
    return [x[1:] for x in body if x.startswith("-")], [x[1:] for x in body if x.startswith("+")]


def follows(text: str, comment: str) -> list[str]:
    """The two lines after ``comment`` (which must be there once)."""
    lines = text.splitlines()
    assert lines.count(comment) == 1, text
    i = lines.index(comment)
    return lines[i + 1 : i + 3]


def without(data: dict[str, Any], registries: set[str], mirror_prefix: str) -> dict[str, Any]:
    """registries.conf data with our mirrors and the entries we added taken out."""
    out = dict(data)
    entries = []
    for entry in data.get("registry", []):
        name = entry.get("prefix") or entry.get("location")
        mirrors = [
            m for m in entry.get("mirror", []) if not m["location"].startswith(mirror_prefix)
        ]
        kept = {k: v for k, v in entry.items() if k != "mirror"}
        if mirrors:
            kept["mirror"] = mirrors
        if name in registries and kept == {"prefix": name, "location": name}:
            continue  # an entry only we wrote
        entries.append(kept)
    out["registry"] = entries
    return out


def test_a_commented_registries_conf_keeps_every_line_and_gains_only_ours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "registries.conf"
    original = (DATA / "registries.conf").read_text()
    conf.write_text(original)
    args = ["podman", "--registries-conf", str(conf)]
    args += ["--registry", "docker.io", "--registry", "quay.io", "--registry", "ghcr.io"]

    assert configure(*args, "--dry-run") == 0
    removed, added = changed_lines(capsys.readouterr().out)
    # The diff an operator reviews: nothing of theirs removed or rewritten, only our lines.
    assert removed == []
    assert {line for line in added if line.strip()} == {
        "[[registry.mirror]]",
        'location = "127.0.0.1:5050/docker.io"',
        'location = "127.0.0.1:5050/quay.io"',
        'location = "127.0.0.1:5050/ghcr.io"',
        "insecure = true",
        "[[registry]]",
        'prefix = "ghcr.io"',
        'location = "ghcr.io"',
    }, added
    assert conf.read_text() == original

    assert configure(*args) == 0
    new = conf.read_text()
    # Every line the operator wrote, comments included, is still there and in order.
    lines = iter(new.splitlines())
    for line in original.splitlines():
        assert any(line == candidate for candidate in lines), line
    # A comment written above a table is still right above that table, not above ours.
    assert follows(
        new, "# The corp cache serves digests only; tags always resolve at Docker Hub."
    ) == [
        "[[registry.mirror]]",
        'location = "cache.corp.example/dockerhub"',
    ]
    assert follows(new, "# Short names we rely on in CI scripts.")[0] == "[aliases]"
    before, after = tomllib.loads(original), tomllib.loads(new)
    assert without(after, {"ghcr.io"}, "127.0.0.1:5050/") == before
    docker = after["registry"][0]
    assert [m["location"] for m in docker["mirror"]] == [
        "127.0.0.1:5050/docker.io",
        "cache.corp.example/dockerhub",
    ]
    assert backups(conf)[0].read_text() == original
    # And a second run has nothing to say.
    assert configure(*args, "--dry-run") == 0
    assert "already configured" in capsys.readouterr().out


def test_a_commented_hosts_toml_gains_only_our_host_in_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs.d"
    hosts = certs / "docker.io" / "hosts.toml"
    hosts.parent.mkdir(parents=True)
    original = (DATA / "hosts.toml").read_text()
    hosts.write_text(original)
    args = ["containerd", "--certs-dir", str(certs)]
    args += ["--containerd-config", str(tmp_path / "absent.toml")]
    assert configure(*args, "--dry-run") == 0
    removed, added = changed_lines(capsys.readouterr().out)
    assert removed == []
    assert {line for line in added if line.strip()} == {
        '[host."http://127.0.0.1:5050"]',
        'capabilities = ["pull", "resolve"]',
    }
    assert configure(*args) == 0
    after = tomllib.loads(hosts.read_text())
    # containerd tries hosts in file order: ours first, the operator's cache after it.
    assert list(after["host"]) == ["http://127.0.0.1:5050", "https://cache.corp.example"]
    assert (
        after["host"]["https://cache.corp.example"]
        == tomllib.loads(original)["host"]["https://cache.corp.example"]
    )
    assert "# skip_verify = true   # never again, see INC-2231" in hosts.read_text()
    assert follows(hosts.read_text(), "# The corporate pull-through cache.")[0] == (
        '[host."https://cache.corp.example"]'
    )


def test_changing_our_own_value_changes_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        "# ours, set up last year\n"
        "[[registry]]\n"
        'prefix = "docker.io"  # hub\n'
        'location = "docker.io"\n'
        "\n"
        "[[registry.mirror]]\n"
        'location = "127.0.0.1:5050/docker.io"   # the agent\n'
        "insecure = false  # was TLS once\n"
    )
    assert configure("podman", "--registries-conf", str(conf), "--dry-run") == 0
    removed, added = changed_lines(capsys.readouterr().out)
    assert removed == ["insecure = false  # was TLS once"]
    assert len(added) == 1 and added[0].startswith("insecure = true"), added


# --- real clients -------------------------------------------------------------------------


@pytest.mark.integration
def test_skopeo_pulls_through_the_configured_mirror(
    tmp_path: Path, registry_with_image: Registry
) -> None:
    """The registry the image is named after is down; only the agent (mirror) can answer.

    The agent mirrors the name ``closed`` from the real registry's address, and skopeo,
    which sends no ?ns=, reaches it through the path prefix the drop-in writes.
    """
    closed = f"127.0.0.1:{free_port()}"
    agent_port = free_port()
    conf = tmp_path / "50-layerswarm.conf"
    assert (
        configure(
            "podman",
            "--registries-conf",
            str(conf),
            "--registry",
            closed,
            "--mirror",
            f"http://127.0.0.1:{agent_port}",
        )
        == 0
    )
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "agent",
            "--listen",
            f"127.0.0.1:{agent_port}",
            "--data-dir",
            str(tmp_path / "agent"),
            "--no-p2p",
            "--upstream",
            f"{closed}=http://{registry_with_image.addr}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", agent_port), timeout=1).close()
                break
            except OSError:
                assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
                time.sleep(0.05)
        result = subprocess.run(
            [
                "skopeo",
                "--registries-conf",
                str(conf),
                "inspect",
                "--raw",
                f"docker://{closed}/test/img:v1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr + (tmp_path / "agent.log").read_text()
        assert json.loads(result.stdout)["schemaVersion"] == 2
        assert registry_with_image.requests("GET /v2/test/img/manifests/v1") >= 1
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
        log.close()


@pytest.mark.integration
def test_containerd_pulls_through_the_configured_mirror(
    tmp_path: Path, registry_with_image: Registry
) -> None:
    """A real containerd + ctr reads the written hosts.toml; the named registry is down."""
    closed = f"127.0.0.1:{free_port()}"
    certs = tmp_path / "certs.d"
    argv = ["--registry", closed, "--mirror", f"http://{registry_with_image.addr}"]
    assert configure(*containerd_args(tmp_path, *argv)) == 0

    # A short root keeps the socket path under the 108-byte limit of unix addresses.
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"lsctrd-{os.getpid()}-{free_port()}"
    root.mkdir()
    sock = root / "c.sock"
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.aufs"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{root / "d.sock"}"\n[metrics]\n  address = ""\n'
    )
    log = (tmp_path / "containerd.log").open("w")
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        ctr = ["ctr", "--address", str(sock), "-n", "lsops"]
        for _ in range(100):
            if subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "containerd.log").read_text()
            time.sleep(0.1)
        result = subprocess.run(
            [
                *ctr,
                "images",
                "pull",
                "--hosts-dir",
                str(certs),
                "--snapshotter",
                "native",
                f"{closed}/test/img:v1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # containerd fetched the manifest and both blobs from the mirror, telling it which
        # registry the image belongs to.
        ns = "?ns=" + urllib.parse.quote(closed, safe="")
        assert registry_with_image.requests("/v2/test/img/manifests/sha256:") >= 1
        assert registry_with_image.requests(ns) >= 3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
