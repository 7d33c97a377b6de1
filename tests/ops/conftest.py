"""Fixtures for the ops tests: a real docker-registry holding one tiny image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_oci_layout(root: Path, tag: str) -> None:
    """A one-layer OCI image layout, written directly so its bytes are known and tiny."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = b"hello from layerswarm ops tests\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer_tar = buf.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"],
            },
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer_gz),
                    "size": len(layer_gz),
                }
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@dataclass
class Registry:
    addr: str
    log: Path

    def requests(self, needle: str) -> int:
        """Access-log lines containing ``needle``: what the registry really served."""
        return sum(needle in line for line in self.log.read_text().splitlines())


@pytest.fixture
def registry_with_image(tmp_path: Path) -> Iterator[Registry]:
    """docker-registry on a free loopback port holding test/img:v1; stands in for the agent."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.fail("docker-registry and skopeo are needed (scripts/bootstrap.sh installs them)")
    addr = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "registry.yml"
    conf.write_text(
        "version: 0.1\n"
        "log: {level: info, accesslog: {disabled: false}}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'regdata'}}}}}\n"
        f"http: {{addr: {addr}}}\n"
    )
    log = tmp_path / "registry.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError) as exc:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"docker-registry did not start: {log.read_text()}") from exc
                time.sleep(0.1)
        layout = tmp_path / "oci"
        write_oci_layout(layout, "v1")
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:v1",
                f"docker://{addr}/test/img:v1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield Registry(addr, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
