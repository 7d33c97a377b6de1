from __future__ import annotations

import pytest

from agent.errors import NameInvalid
from agent.oci import Digest
from agent.reference import parse_image

HEX = "b" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repo", "ref"),
    [
        ("alpine", "docker.io", "library/alpine", "latest"),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20"),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7"),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest"),
        ("ghcr.io/org/team/app:v1", "ghcr.io", "org/team/app", "v1"),
        ("127.0.0.1:5000/test/img:v1", "127.0.0.1:5000", "test/img", "v1"),
        ("localhost/x", "localhost", "x", "latest"),
        ("127.0.0.1:5000/test/img", "127.0.0.1:5000", "test/img", "latest"),
    ],
)
def test_parse_image(text: str, registry: str, repo: str, ref: str) -> None:
    img = parse_image(text)
    assert (img.registry, img.repo, img.reference) == (registry, repo, ref)


def test_parse_image_by_digest() -> None:
    img = parse_image(f"127.0.0.1:5000/test/img@sha256:{HEX}")
    assert img.reference == Digest("sha256", HEX)
    assert str(img) == f"127.0.0.1:5000/test/img@sha256:{HEX}"


@pytest.mark.parametrize("text", ["", "UPPER/case", "a b", "img@sha256:short", "x:-tag", "a" * 600])
def test_bad_images(text: str) -> None:
    with pytest.raises(Exception) as exc:
        parse_image(text)
    assert exc.type.__name__ in ("NameInvalid", "DigestInvalid")
    assert isinstance(exc.value, NameInvalid) or "digest" in str(exc.value)
