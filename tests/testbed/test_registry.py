"""Self-tests of the registry, token issuer and image helpers against the real registry."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed import ALICE, BOB, HTPASSWD_USERS
from testbed.clients import compare_dir_with_image, skopeo_copy, write_registries_conf
from testbed.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    build_index,
    push_index,
)
from testbed.registry import Registry, parse_access_log
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


def test_push_then_pull_is_byte_identical_and_logged_once_per_blob(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/img", "v1", [300_000, 70_000])
    conf = write_registries_conf(tmp_path / "registries.conf", registry.host_port)
    skopeo_copy(image.ref, tmp_path / "out", conf)
    compare_dir_with_image(tmp_path / "out", image)
    for layer in image.layers:
        assert registry.blob_fetches(layer.digest) == 1, registry.proc.log_tail()
        assert registry.blob_bytes_served(layer.digest) == layer.size
    assert registry.blob_fetches(image.config_digest) == 1
    assert registry.manifest_fetches("test/img", "v1") == 1
    agents = {line.user_agent for line in registry.requests(kind="blobs")}
    assert any(agent.startswith("skopeo/") for agent in agents), agents


def test_docker_media_types_survive_push(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/docker", "v2", [50_000], media_type="docker")
    assert json.loads(image.manifest)["mediaType"] == DOCKER_MANIFEST
    req = urllib.request.Request(
        f"{registry.url}/v2/test/docker/manifests/v2", headers={"Accept": DOCKER_MANIFEST}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == image.manifest
        assert resp.headers["Docker-Content-Digest"] == image.manifest_digest


@pytest.mark.parametrize(("kind", "media_type"), [("oci", OCI_INDEX), ("docker", DOCKER_LIST)])
def test_multi_arch_index_push_and_copy_all(
    registry: Registry, tmp_path: Path, kind: str, media_type: str
) -> None:
    index = push_index(
        build_index(tmp_path / "idx", [20_000], media_type=kind, seed=7),  # type: ignore[arg-type]
        registry,
        f"test/multi-{kind}",
        "v1",
    )
    assert json.loads(index.local.manifest)["mediaType"] == media_type
    assert {img.local.platform[1] for img in index.images} == {"amd64", "arm64"}
    out = tmp_path / "out"
    skopeo_copy(index.ref, out, all_platforms=True)
    assert (out / "manifest.json").read_bytes() == index.local.manifest
    for img in index.images:
        hexd = img.manifest_digest.split(":", 1)[1]
        assert (out / f"{hexd}.manifest.json").read_bytes() == img.manifest
        for digest in img.blob_digests:
            assert (out / digest.split(":", 1)[1]).read_bytes() == img.blob(digest)
            assert registry.blob_fetches(digest) == 1


def test_restart_keeps_port_and_data(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/restart", "v1", [10_000])
    port = registry.port
    registry.stop()
    assert not registry.running
    failed = skopeo_copy(image.ref, tmp_path / "down", check=False, timeout=60)
    assert failed.returncode != 0
    registry.start()
    assert registry.port == port
    skopeo_copy(image.ref, tmp_path / "up")
    compare_dir_with_image(tmp_path / "up", image)


def test_htpasswd_registry_refuses_anonymous_accepts_creds(
    htpasswd_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("private/x", "v1", [10_000], registry=htpasswd_registry)
    anon = skopeo_copy(image.ref, tmp_path / "anon", check=False, timeout=60)
    assert anon.returncode != 0
    assert "unauthorized" in anon.stderr.lower() or "authentication" in anon.stderr.lower()
    wrong = skopeo_copy(image.ref, tmp_path / "wrong", creds=("alice", "nope"), check=False)
    assert wrong.returncode != 0
    skopeo_copy(image.ref, tmp_path / "ok", creds=("alice", HTPASSWD_USERS["alice"]))
    compare_dir_with_image(tmp_path / "ok", image)
    assert htpasswd_registry.blob_fetches(image.layers[0].digest) == 1
    assert any(line.status == 401 for line in htpasswd_registry.access_log())


def test_token_registry_grants_alice_only(
    token_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    issuer = token_registry.token_issuer
    assert issuer is not None
    image = image_factory("private/x", "v1", [10_000], registry=token_registry)

    skopeo_copy(image.ref, tmp_path / "alice", creds=ALICE)
    compare_dir_with_image(tmp_path / "alice", image)

    bob = skopeo_copy(image.ref, tmp_path / "bob", creds=BOB, check=False, timeout=60)
    assert bob.returncode != 0, bob.stdout
    anon = skopeo_copy(image.ref, tmp_path / "anon", check=False, timeout=60)
    assert anon.returncode != 0, anon.stdout
    wrong = skopeo_copy(image.ref, tmp_path / "w", creds=("alice", "x"), check=False, timeout=60)
    assert wrong.returncode != 0, wrong.stdout

    by_user = {(i.user, a) for i in issuer.issued for a in i.access}
    assert ("alice", ("repository", "private/x", ("pull",))) in by_user
    assert not [i for i in issuer.issued if i.user in ("bob", None) and i.access]
    assert issuer.token_count("bob") >= 1
    assert issuer.token_count(None) >= 1
    assert token_registry.blob_fetches(image.layers[0].digest) == 1


def test_token_issuer_answers_with_verifiable_jwt(token_issuer: object) -> None:
    import base64

    import jwt
    from cryptography import x509

    from testbed.tokenissuer import TokenIssuer

    assert isinstance(token_issuer, TokenIssuer)
    creds = base64.b64encode(b"alice:alice-pw").decode()
    url = f"{token_issuer.realm}?service=svc&scope=repository:private/a:pull,push"
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {creds}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    header = jwt.get_unverified_header(body["token"])
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    pem_cert = x509.load_pem_x509_certificate(token_issuer.cert_path.read_bytes())
    assert cert == pem_cert
    claims = jwt.decode(body["token"], cert.public_key(), algorithms=["RS256"], audience="svc")  # type: ignore[arg-type]
    assert claims["sub"] == "alice"
    assert claims["iss"] == token_issuer.issuer
    # push is not granted to alice: the issuer filters the requested actions.
    assert claims["access"] == [{"type": "repository", "name": "private/a", "actions": ["pull"]}]

    bad = urllib.request.Request(
        url, headers={"Authorization": "Basic " + base64.b64encode(b"alice:no").decode()}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=10)
    assert info.value.code == 401
    info.value.close()


def test_proxy_registry_serves_second_pull_from_its_cache(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    image = image_factory("test/cached", "v1", [40_000])
    with Registry(tmp_path / "cache", proxy_remoteurl=registry.url, name="cache") as cache:
        ref = f"{cache.host_port}/test/cached:v1"
        skopeo_copy(ref, tmp_path / "out0")
        compare_dir_with_image(tmp_path / "out0", image)
        # distribution's proxy streams a miss to the client and stores it with a second,
        # background upstream fetch: wait for that to land before counting.
        for digest in image.blob_digests:
            cache.wait_for_blob(digest)
        upstream = {d: registry.blob_fetches(d) for d in image.blob_digests}
        assert all(n >= 1 for n in upstream.values()), upstream

        skopeo_copy(ref, tmp_path / "out1")
        compare_dir_with_image(tmp_path / "out1", image)
        assert cache.blob_fetches(image.layers[0].digest) == 2
    assert {d: registry.blob_fetches(d) for d in image.blob_digests} == upstream


def test_access_log_parser_reads_apache_lines() -> None:
    text = (
        '127.0.0.1 - - [22/Nov/2026:06:10:03 +0000] "GET /v2/a/b/blobs/sha256:ab HTTP/1.1" '
        '206 1024 "" "containerd/1.6"\n'
        "time=... level=info msg=noise\n"
        '127.0.0.1 - alice [22/Nov/2026:06:10:04 +0000] "HEAD /v2/a/manifests/v1 HTTP/1.1" '
        '200 - "" "skopeo/1.9.3"\n'
    )
    lines = parse_access_log(text)
    assert [(x.method, x.status, x.bytes, x.user) for x in lines] == [
        ("GET", 206, 1024, "-"),
        ("HEAD", 200, 0, "alice"),
    ]
    assert lines[0].user_agent == "containerd/1.6"
