"""Real container clients (skopeo, podman, containerd/ctr) pulling through a mirror.

Every client keeps its state in directories the test owns, uses an empty auth file (never
the machine's credentials), and is checked against the bytes the test built: a pull "works"
only when every blob matches ``Image.blob(digest)`` byte for byte.

    conf = write_registries_conf(tmp_path / "reg.conf", registry.host_port, agent_host_port)
    skopeo_copy(image.ref, tmp_path / "out", conf)
    compare_dir_with_image(tmp_path / "out", image)

    with Containerd(tmp_path / "ctrd") as ctrd:
        hosts = write_hosts_toml(tmp_path / "certs.d", registry.host_port, agent_url)
        ctrd.pull(image.ref, hosts)
        ctrd.verify_image(image)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.images import Image
from testbed.procs import Proc, ProcError, run_checked

Creds = tuple[str, str]


def _empty_auth(dirpath: Path) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    auth = dirpath / "empty-auth.json"
    if not auth.exists():
        auth.write_text("{}")
    return auth


def write_registries_conf(path: Path, registry_host: str, mirror_host: str | None = None) -> Path:
    """containers-registries.conf(5): ``registry_host`` with an optional mirror, both HTTP."""
    lines = [
        "unqualified-search-registries = []",
        "",
        "[[registry]]",
        f'location = "{registry_host}"',
        "insecure = true",
    ]
    if mirror_host is not None:
        lines += ["", "[[registry.mirror]]", f'location = "{mirror_host}"', "insecure = true"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_hosts_toml(certs_d: Path, registry_host: str, mirror_url: str | None = None) -> Path:
    """containerd ``hosts.toml`` for ``registry_host`` trying ``mirror_url`` first; returns the
    directory to pass as ``--hosts-dir``."""
    host_dir = certs_d / registry_host
    host_dir.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "http://{registry_host}"']
    if mirror_url is not None:
        lines += [
            "",
            f'[host."{mirror_url}"]',
            '  capabilities = ["pull", "resolve"]',
        ]
    (host_dir / "hosts.toml").write_text("\n".join(lines) + "\n")
    return certs_d


# ---- skopeo ---------------------------------------------------------------------------------


def skopeo_copy(
    ref: str,
    dest_dir: Path,
    registries_conf: Path | None = None,
    creds: Creds | None = None,
    *,
    netns: str | None = None,
    all_platforms: bool = False,
    check: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy docker://REF dir:DEST``; with ``check`` a failure raises with stderr.

    Without ``registries_conf`` TLS verification is simply turned off for the source.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    argv = ["skopeo"]
    if registries_conf is not None:
        argv += ["--registries-conf", str(registries_conf)]
    argv += ["copy", "--quiet"]
    if registries_conf is None:
        argv.append("--src-tls-verify=false")
    if creds is not None:
        argv += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    else:
        argv.append("--src-no-creds")
    if all_platforms:
        argv.append("--all")
    argv += [f"docker://{ref}", f"dir:{dest_dir}"]
    env = {"REGISTRY_AUTH_FILE": str(_empty_auth(dest_dir.parent / ".auth"))}
    return run_checked(argv, env=env, timeout=timeout, check=check, netns=netns)


def skopeo_copy_logged_in(
    ref: str,
    dest: Path,
    conf: Path,
    creds: tuple[str, str],
    hosts: list[str],
    *,
    check: bool = True,
    netns: str | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """skopeo copy with a logged-in auth file, the way a user who ran `podman login` pulls.

    containers/image looks up a mirror's credentials by the mirror's own host name (its
    --src-creds apply to the primary registry only), so the file names every host.
    """
    auth = dest.parent / f"{dest.name}-auth.json"
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    auth.write_text(json.dumps({"auths": {h: {"auth": token} for h in hosts}}))
    dest.mkdir(parents=True, exist_ok=True)
    return run_checked(
        [
            "skopeo",
            "--registries-conf",
            str(conf),
            "copy",
            "--quiet",
            f"docker://{ref}",
            f"dir:{dest}",
        ],
        env={"REGISTRY_AUTH_FILE": str(auth)},
        check=check,
        timeout=timeout,
        netns=netns,
    )


def compare_dir_with_image(dest_dir: Path, image: Image) -> None:
    """Assert a ``dir:`` copy holds the image's manifest and every blob, byte for byte."""
    manifest = (dest_dir / "manifest.json").read_bytes()
    assert manifest == image.manifest, (
        f"manifest in {dest_dir} differs from the pushed one ({image.manifest_digest})"
    )
    for digest in image.blob_digests:
        path = dest_dir / digest.split(":", 1)[1]
        assert path.exists(), f"blob {digest} missing from {dest_dir}"
        got = path.read_bytes()
        want = image.blob(digest)
        assert got == want, f"blob {digest}: {len(got)} bytes differ from the {len(want)} built"


def compare_oci_with_image(layout_dir: Path, image: Image) -> None:
    """Assert an ``oci:`` layout copy holds the image's manifest and every blob, byte for byte."""
    blobs = layout_dir / "blobs" / "sha256"
    manifest_path = blobs / image.manifest_digest.split(":", 1)[1]
    assert manifest_path.exists(), f"manifest {image.manifest_digest} missing from {layout_dir}"
    assert manifest_path.read_bytes() == image.manifest
    for digest in image.blob_digests:
        path = blobs / digest.split(":", 1)[1]
        assert path.exists(), f"blob {digest} missing from {layout_dir}"
        got = path.read_bytes()
        want = image.blob(digest)
        assert got == want, f"blob {digest}: {len(got)} bytes differ from the {len(want)} built"


# ---- podman ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodmanImage:
    id: str
    digest: str
    repo_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]


class Podman:
    """podman as root with its state (root, tmp) under ``workdir``; vfs storage driver.

    ``pull`` runs ``podman pull`` to completion; podman leaves no daemon behind, and
    ``cleanup`` unmounts anything podman might have mounted under ``workdir``.
    """

    def __init__(self, workdir: Path, registries_conf: Path | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.tmp = workdir / "tmp"
        # podman refuses a runroot longer than 50 characters, and pytest's tmp paths are
        # longer: use a short directory of our own, removed in cleanup().
        self.runroot = Path(tempfile.mkdtemp(prefix="lsw-podman-"))
        self._short_runroot = self.runroot
        for d in (self.root, self.runroot, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.registries_conf = registries_conf
        self.auth = _empty_auth(workdir)

    def _argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(self.tmp),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ]

    def _env(self) -> dict[str, str]:
        env = {"TMPDIR": str(self.tmp), "REGISTRY_AUTH_FILE": str(self.auth)}
        if self.registries_conf is not None:
            env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 300.0, netns: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_checked(
            self._argv(*args), env=self._env(), check=check, timeout=timeout, netns=netns
        )

    def pull(
        self,
        ref: str,
        creds: Creds | None = None,
        *,
        check: bool = True,
        netns: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        args = ["pull", "--quiet"]
        if creds is not None:
            args += ["--creds", f"{creds[0]}:{creds[1]}"]
        if self.registries_conf is None:
            args.append("--tls-verify=false")
        return self.run(*args, ref, check=check, netns=netns)

    def inspect(self, ref: str) -> PodmanImage:
        out = self.run("image", "inspect", ref).stdout
        data = json.loads(out)[0]
        return PodmanImage(
            id=data["Id"],
            digest=data["Digest"],
            repo_digests=tuple(data.get("RepoDigests") or ()),
            diff_ids=tuple(data["RootFS"]["Layers"]),
        )

    def verify_image(self, image: Image) -> PodmanImage:
        """Assert podman stored ``image``: same id (config digest), digest and diff_ids."""
        got = self.inspect(image.ref)
        assert got.id == image.config_digest.split(":", 1)[1], (got, image.config_digest)
        assert got.digest == image.manifest_digest, (got, image.manifest_digest)
        want_diff_ids = json.loads(image.blob(image.config_digest))["rootfs"]["diff_ids"]
        assert list(got.diff_ids) == want_diff_ids, (got.diff_ids, want_diff_ids)
        return got

    def cleanup(self) -> None:
        unmount_under(self.workdir)
        unmount_under(self._short_runroot)
        shutil.rmtree(self._short_runroot, ignore_errors=True)


def podman_pull(
    ref: str,
    workdir: Path,
    registries_conf: Path | None,
    creds: Creds | None = None,
) -> PodmanImage:
    """One-shot pull with podman state under ``workdir``; returns what podman stored."""
    podman = Podman(workdir, registries_conf)
    try:
        podman.pull(ref, creds)
        return podman.inspect(ref)
    finally:
        podman.cleanup()


# ---- containerd -----------------------------------------------------------------------------


def unmount_under(path: Path) -> None:
    """Lazily unmount every mount point below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    points = []
    with contextlib.suppress(FileNotFoundError), open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                points.append(mount_point)
    for mount_point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)


_CONTAINERD_DISABLED = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.overlayfs",
]


class Containerd:
    """A containerd daemon with root, state and sockets under ``workdir``; stopped by PID.

    Unix socket paths are limited to 107 bytes, so pytest's deep tmp paths may be too long;
    the sockets then go to a short directory we create and remove ourselves.
    """

    def __init__(self, workdir: Path, *, netns: str | None = None) -> None:
        self.workdir = workdir
        self.netns = netns
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.sock_dir = workdir / "s"
        self._short_sock_dir: Path | None = None
        if len(str(self.sock_dir / "containerd.sock.ttrpc")) > 100:
            self._short_sock_dir = Path(tempfile.mkdtemp(prefix="lsw-ctrd-"))
            self.sock_dir = self._short_sock_dir
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        self.address = str(self.sock_dir / "containerd.sock")
        self.config_path = workdir / "config.toml"
        disabled = ", ".join(f'"{p}"' for p in _CONTAINERD_DISABLED)
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.root}"',
                    f'state = "{self.state}"',
                    f"disabled_plugins = [{disabled}]",
                    "[grpc]",
                    f'  address = "{self.address}"',
                    "[ttrpc]",
                    f'  address = "{self.address}.ttrpc"',
                    "[debug]",
                    f'  address = "{self.sock_dir / "debug.sock"}"',
                    "[metrics]",
                    '  address = ""',
                    "",
                ]
            )
        )
        self.proc = Proc(
            ["containerd", "--config", str(self.config_path)],
            workdir / "logs",
            name="containerd",
            netns=netns,
        )

    def start(self, timeout: float = 30.0) -> Containerd:
        self.proc.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self.proc.running:
                    raise ProcError(f"containerd exited early\n{self.proc.log_tail()}")
                if Path(self.address).exists():
                    res = self.ctr("version", check=False, timeout=10)
                    if res.returncode == 0:
                        return self
                if time.monotonic() >= deadline:
                    raise ProcError(f"containerd not ready in {timeout}s\n{self.proc.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()
        unmount_under(self.workdir)
        if self._short_sock_dir is not None:
            shutil.rmtree(self._short_sock_dir, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ctr(
        self,
        *args: str,
        namespace: str = "test",
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", self.address, "--namespace", namespace, *args]
        return run_checked(argv, check=check, timeout=timeout, netns=self.netns)

    def pull(
        self,
        ref: str,
        hosts_dir: Path,
        *,
        namespace: str = "test",
        creds: Creds | None = None,
        all_platforms: bool = False,
        unpack: bool = True,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr images pull --plain-http --hosts-dir DIR``, unpacked by the native snapshotter."""
        args = ["images", "pull", "--plain-http", "--hosts-dir", str(hosts_dir)]
        args += ["--snapshotter", "native"]
        if creds is not None:
            args += ["--user", f"{creds[0]}:{creds[1]}"]
        if all_platforms:
            args.append("--all-platforms")
        if not unpack:
            # ctr has no --no-unpack; fetching only the content is `content fetch`.
            args[0:2] = ["content", "fetch"]
            args = [a for a in args if a not in ("--snapshotter", "native")]
        return self.ctr(*args, ref, namespace=namespace, check=check)

    def content_digests(self, namespace: str = "test") -> set[str]:
        out = self.ctr("content", "ls", "--quiet", namespace=namespace).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def content_get(self, digest: str, namespace: str = "test") -> bytes:
        argv = ["ctr", "--address", self.address, "--namespace", namespace]
        argv += ["content", "get", digest]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        res = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        if res.returncode != 0:
            raise ProcError(f"ctr content get {digest} failed: {res.stderr.decode()[-2000:]}")
        return res.stdout

    def image_names(self, namespace: str = "test") -> list[str]:
        out = self.ctr("images", "ls", "--quiet", namespace=namespace).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def verify_image(self, image: Image, namespace: str = "test") -> None:
        """Assert the image is listed and its manifest, config and layers are stored exactly."""
        assert image.ref in self.image_names(namespace), self.image_names(namespace)
        present = self.content_digests(namespace)
        wanted: Sequence[str] = [image.manifest_digest, *image.blob_digests]
        missing = [d for d in wanted if d not in present]
        assert not missing, f"containerd lacks {missing}"
        for digest in wanted:
            want = image.manifest if digest == image.manifest_digest else image.blob(digest)
            assert self.content_get(digest, namespace) == want, f"containerd's {digest} differs"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (to prove a test left nothing running)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found
