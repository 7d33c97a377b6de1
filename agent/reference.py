"""Image references as people write them: ``alpine``, ``ghcr.io/org/app:1.2``,
``127.0.0.1:5000/team/img@sha256:...``."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import DOCKER_HUB, valid_registry_name
from agent.errors import NameInvalid
from agent.oci import Digest, validate_name, validate_reference


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repo: str
    reference: str | Digest

    def __str__(self) -> str:
        sep = "@" if isinstance(self.reference, Digest) else ":"
        return f"{self.registry}/{self.repo}{sep}{self.reference}"


def parse_image(text: str) -> ImageRef:
    """Split an image reference; a bare name means Docker Hub (``library/`` for one component)."""
    raw = text.strip()
    if not raw or len(raw) > 512:
        raise NameInvalid(f"invalid image reference {text[:100]!r}")
    name, reference = raw, "latest"
    if "@" in raw:
        name, _, reference = raw.partition("@")
    else:
        slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > slash:
            name, reference = raw[:colon], raw[colon + 1 :]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = DOCKER_HUB, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not valid_registry_name(registry):
        raise NameInvalid(f"invalid registry in {text[:100]!r}")
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    validate_name(repo)
    return ImageRef(registry, repo, validate_reference(reference))
