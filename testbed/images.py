"""Build OCI image layouts directly from Python and push them with skopeo.

Each layer is a real ``tar.gz`` holding one file of seeded random (incompressible) bytes, so
podman and containerd can unpack it, and the config lists the true ``diff_ids``. Building is
deterministic for a given seed, and ``push`` uses ``--preserve-digests`` so the manifest in
the registry is byte for byte the one built here (``push`` checks that).

    layout = build_image(tmp_path / "img", layers=[1 << 20, 300_000], seed=1)
    image = push(layout, registry, "test/img", "v1")
    image.ref            # "127.0.0.1:5000/test/img:v1"
    image.blob(image.layers[0].digest)   # the exact bytes the registry must serve
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from testbed.procs import run_checked

MediaKind = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_TYPES: dict[MediaKind, dict[str, str]] = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {
        "manifest": DOCKER_MANIFEST,
        "index": DOCKER_LIST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER,
    },
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    digest: str  # of the compressed blob, as in the manifest
    size: int  # compressed size
    diff_id: str  # of the uncompressed tar, as in the config
    media_type: str


@dataclass(frozen=True)
class ImageLayout:
    """One single-platform image in an OCI layout directory (``layout``), tagged ``tag``."""

    layout: Path
    tag: str
    media_kind: MediaKind
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    layers: tuple[Layer, ...]
    platform: tuple[str, str] = ("linux", "amd64")

    def blob(self, digest: str) -> bytes:
        algo, _, hexpart = digest.partition(":")
        return (self.layout / "blobs" / algo / hexpart).read_bytes()

    @property
    def blob_digests(self) -> list[str]:
        """Config and layers: everything a pull fetches with ``GET /v2/.../blobs/``."""
        return [self.config_digest, *(layer.digest for layer in self.layers)]


@dataclass(frozen=True)
class IndexLayout:
    """A multi-platform image index in an OCI layout, with one ``ImageLayout`` per platform."""

    layout: Path
    tag: str
    media_kind: MediaKind
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    images: tuple[ImageLayout, ...]

    def blob(self, digest: str) -> bytes:
        algo, _, hexpart = digest.partition(":")
        return (self.layout / "blobs" / algo / hexpart).read_bytes()


class _HasRegistry(Protocol):
    @property
    def host_port(self) -> str: ...


@dataclass(frozen=True)
class Image:
    """An image pushed to a registry: where it is and what it is made of."""

    host: str
    repo: str
    tag: str
    local: ImageLayout

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        return f"{self.host}/{self.repo}@{self.manifest_digest}"

    @property
    def manifest(self) -> bytes:
        return self.local.manifest

    @property
    def manifest_digest(self) -> str:
        return self.local.manifest_digest

    @property
    def config_digest(self) -> str:
        return self.local.config_digest

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.local.layers

    @property
    def layout(self) -> Path:
        return self.local.layout

    def blob(self, digest: str) -> bytes:
        return self.local.blob(digest)

    @property
    def blob_digests(self) -> list[str]:
        return self.local.blob_digests


@dataclass(frozen=True)
class IndexImage:
    """A multi-platform index pushed to a registry (with every platform's image)."""

    host: str
    repo: str
    tag: str
    local: IndexLayout

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def manifest_digest(self) -> str:
        return self.local.manifest_digest

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(Image(self.host, self.repo, self.tag, img) for img in self.local.images)


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def make_layer_tar(content: bytes, filename: str) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip of it) with one regular file; fixed metadata for determinism."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(filename)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    # Level 1: the payload is random and won't shrink; only speed matters here.
    return raw, gzip.compress(raw, compresslevel=1, mtime=0)


def _init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def _write_index_json(layout: Path, descriptor: dict[str, Any], tag: str) -> None:
    desc = dict(descriptor)
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]}
    (layout / "index.json").write_text(json.dumps(index, indent=2))


def _build_platform_image(
    layout: Path,
    layers: Sequence[int | bytes],
    *,
    media_kind: MediaKind,
    rng: random.Random,
    platform: tuple[str, str],
    tag: str,
) -> ImageLayout:
    types = _TYPES[media_kind]
    built: list[Layer] = []
    for i, spec in enumerate(layers):
        content = rng.randbytes(spec) if isinstance(spec, int) else bytes(spec)
        raw, gz = make_layer_tar(content, f"layer{i}-{platform[1]}.bin")
        digest = _write_blob(layout, gz)
        built.append(Layer(digest, len(gz), sha256_digest(raw), types["layer"]))
    os_name, arch = platform
    config = {
        "architecture": arch,
        "os": os_name,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layerswarm test layer {i}"}
            for i in range(len(built))
        ],
    }
    config_bytes = _canonical(config)
    config_digest = _write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": {
            "mediaType": types["config"],
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in built
        ],
    }
    manifest_bytes = json.dumps(manifest, indent=3).encode()
    manifest_digest = _write_blob(layout, manifest_bytes)
    return ImageLayout(
        layout=layout,
        tag=tag,
        media_kind=media_kind,
        manifest=manifest_bytes,
        manifest_digest=manifest_digest,
        manifest_media_type=types["manifest"],
        config_digest=config_digest,
        layers=tuple(built),
        platform=platform,
    )


def build_image(
    layout: Path,
    layers: Sequence[int | bytes] = (1 << 20,),
    *,
    media_type: MediaKind = "oci",
    seed: int = 0,
    tag: str = "latest",
    platform: tuple[str, str] = ("linux", "amd64"),
) -> ImageLayout:
    """Write a one-platform image to the OCI layout ``layout`` and return what it holds.

    ``layers``: per layer, the size of its random file (int) or the file's content (bytes).
    """
    _init_layout(layout)
    img = _build_platform_image(
        layout, layers, media_kind=media_type, rng=random.Random(seed), platform=platform, tag=tag
    )
    if media_type == "docker":
        _write_dir_view(layout, img.manifest, img.blob_digests)
    _write_index_json(
        layout,
        {
            "mediaType": img.manifest_media_type,
            "digest": img.manifest_digest,
            "size": len(img.manifest),
        },
        tag,
    )
    return img


def build_index(
    layout: Path,
    layers: Sequence[int | bytes] = (256 * 1024,),
    *,
    media_type: MediaKind = "oci",
    seed: int = 0,
    tag: str = "latest",
    platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
) -> IndexLayout:
    """A multi-platform index: one image per platform, each with its own random layers."""
    _init_layout(layout)
    rng = random.Random(seed)
    images = tuple(
        _build_platform_image(
            layout, layers, media_kind=media_type, rng=rng, platform=platform, tag=tag
        )
        for platform in platforms
    )
    types = _TYPES[media_type]
    index = {
        "schemaVersion": 2,
        "mediaType": types["index"],
        "manifests": [
            {
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest,
                "size": len(img.manifest),
                "platform": {"os": img.platform[0], "architecture": img.platform[1]},
            }
            for img in images
        ],
    }
    index_bytes = json.dumps(index, indent=3).encode()
    index_digest = _write_blob(layout, index_bytes)
    if media_type == "docker":
        blobs = [d for img in images for d in img.blob_digests]
        _write_dir_view(layout, index_bytes, blobs, [img.manifest for img in images])
    _write_index_json(
        layout, {"mediaType": types["index"], "digest": index_digest, "size": len(index_bytes)}, tag
    )
    return IndexLayout(
        layout=layout,
        tag=tag,
        media_kind=media_type,
        manifest=index_bytes,
        manifest_digest=index_digest,
        manifest_media_type=types["index"],
        images=images,
    )


def _write_dir_view(
    layout: Path, top_manifest: bytes, blobs: Sequence[str], instances: Sequence[bytes] = ()
) -> Path:
    # skopeo's oci: transport only reads OCI media types from index.json, so docker-typed
    # images are pushed from a dir: view (manifest.json + blobs by hex), hard-linked to the
    # layout's blobs so nothing is stored twice.
    view = layout / "dir-view"
    view.mkdir(exist_ok=True)
    (view / "version").write_text("Directory Transport Version: 1.1\n")
    (view / "manifest.json").write_bytes(top_manifest)
    for digest in blobs:
        hexpart = digest.split(":", 1)[1]
        target = view / hexpart
        if not target.exists():
            target.hardlink_to(layout / "blobs" / "sha256" / hexpart)
    for manifest in instances:
        hexpart = sha256_digest(manifest).split(":", 1)[1]
        (view / f"{hexpart}.manifest.json").write_bytes(manifest)
    return view


def _skopeo_push(
    local: ImageLayout | IndexLayout,
    registry: _HasRegistry,
    repo: str,
    tag: str,
    creds: tuple[str, str] | None,
    *,
    all_platforms: bool,
    netns: str | None,
) -> None:
    """Push with skopeo (in ``netns``, by default the registry's own namespace, since a
    registry inside a namespace must never be reached from the root namespace) and check
    that the registry stored exactly the digest that was built."""
    host_port = registry.host_port
    netns = netns or getattr(registry, "netns", None)
    digest_file = local.layout / f"pushed-{repo.replace('/', '_')}-{tag}.digest"
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if all_platforms:
        argv.append("--all")
    if local.media_kind == "docker":
        argv += ["--format", "v2s2"]
    if creds is not None:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    else:
        argv.append("--dest-no-creds")
    argv += ["--digestfile", str(digest_file)]
    if local.media_kind == "docker":
        source = f"dir:{local.layout / 'dir-view'}"
    else:
        source = f"oci:{local.layout}:{local.tag}"
    argv += [source, f"docker://{host_port}/{repo}:{tag}"]
    # An empty auth file keeps the machine's own credentials out of the tests.
    auth = digest_file.parent / "empty-auth.json"
    auth.write_text("{}")
    run_checked(argv, env={"REGISTRY_AUTH_FILE": str(auth)}, timeout=300, netns=netns)
    pushed = digest_file.read_text().strip()
    if pushed != local.manifest_digest:
        raise AssertionError(
            f"registry stored {pushed}, built {local.manifest_digest}: skopeo rewrote it"
        )


def push(
    local: ImageLayout,
    registry: _HasRegistry,
    repo: str,
    tag: str | None = None,
    creds: tuple[str, str] | None = None,
    *,
    netns: str | None = None,
) -> Image:
    """``skopeo copy`` the layout to ``registry`` as ``repo:tag``; the digest must not change.

    ``netns``: where skopeo runs; by default the registry's own namespace (``registry.netns``),
    since a registry inside a namespace must never be reached from the root namespace.
    """
    tag = tag or local.tag
    _skopeo_push(local, registry, repo, tag, creds, all_platforms=False, netns=netns)
    return Image(registry.host_port, repo, tag, local)


def push_index(
    local: IndexLayout,
    registry: _HasRegistry,
    repo: str,
    tag: str | None = None,
    creds: tuple[str, str] | None = None,
    *,
    netns: str | None = None,
) -> IndexImage:
    tag = tag or local.tag
    _skopeo_push(local, registry, repo, tag, creds, all_platforms=True, netns=netns)
    return IndexImage(registry.host_port, repo, tag, local)
