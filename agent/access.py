"""Who may read what: cached content is served only after the upstream agreed.

The upstream is the only authority on access. Before cached (or peer-fetched) bytes go to a
client, the upstream must have answered a request *with that client's credentials* for that
repository, and the blob must be known to belong to that repository (seen in one of its
manifests, or confirmed by a HEAD on that repository's blob). Positive answers are remembered
per (hash of the credential, upstream, repository) for ``ttl`` seconds; only a hash is kept.
When the upstream is unreachable, a positive answer up to ``grace`` seconds old still counts,
so a node keeps pulling what a client was already allowed to read during an upstream outage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from agent.config import Upstream
from agent.errors import BlobUnknown, DigestInvalid, RegistryError, UpstreamError
from agent.oci import DEFAULT_ACCEPT, Digest, parse_digest
from agent.upstream import UpstreamClient, ensure_ok
from core import durable

log = logging.getLogger(__name__)

_MAX_GRANTS = 100_000
_MAX_REPO_DIGESTS = 50_000
# Blobs whose origin is remembered, and (upstream, repository) pairs kept per blob.
_MAX_ORIGINS = 200_000
_MAX_ORIGINS_PER_BLOB = 8


def credential_key(auth: str | None) -> str:
    return hashlib.sha256((auth or "").encode()).hexdigest()


class AccessChecker:
    def __init__(
        self,
        client: UpstreamClient,
        *,
        ttl: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        state_file: Path | None = None,
        origins_file: Path | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._grace = grace
        self._clock = clock
        self._wall = wall_clock
        self._grants: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._repo_digests: OrderedDict[tuple[str, str, Digest], None] = OrderedDict()
        # Blob sizes as upstreams state them (HEAD answers, manifest descriptors): the only
        # sizes a download believes (peers and the tracker are never asked).
        self._sizes: OrderedDict[tuple[str, Digest], int] = OrderedDict()
        # Anonymous grants (what the upstream serves to anyone) are no secret, so they alone
        # are kept on disk: a restarted agent can serve public images through an outage.
        self._state_file = state_file
        self._anonymous: dict[str, float] = self._load_anonymous()
        # Where each cached blob came from: (upstream, repository) pairs. Another upstream's
        # yes is not enough to serve those bytes (it may be lenient, or hostile). Kept on disk,
        # one line per pair appended, so the rule holds for a cache that outlives a restart.
        self._origins_file = origins_file
        self._origins: OrderedDict[Digest, list[tuple[str, str]]] = OrderedDict()
        self._origin_lines = 0
        self._load_origins()

    def _load_anonymous(self) -> dict[str, float]:
        if self._state_file is None:
            return {}
        try:
            data = json.loads(self._state_file.read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_anonymous(self) -> None:
        if self._state_file is None:
            return
        try:
            durable.write(self._state_file, json.dumps(self._anonymous).encode())
        except OSError as exc:
            log.warning("could not save anonymous grants: %s", exc)

    def _load_origins(self) -> None:
        if self._origins_file is None:
            return
        try:
            text = self._origins_file.read_text()
        except OSError:
            return
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) != 3:
                continue
            try:
                digest = parse_digest(parts[0])
            except DigestInvalid:
                continue
            self._add_origin(digest, parts[1], parts[2])
            self._origin_lines += 1
        if self._origin_lines > 2 * len(self._origins) + 1000:
            self._rewrite_origins()

    def _add_origin(self, digest: Digest, upstream: str, repo: str) -> bool:
        pairs = self._origins.setdefault(digest, [])
        self._origins.move_to_end(digest)
        if (upstream, repo) in pairs:
            return False
        pairs.append((upstream, repo))
        del pairs[:-_MAX_ORIGINS_PER_BLOB]
        while len(self._origins) > _MAX_ORIGINS:
            self._origins.popitem(last=False)
        return True

    def _rewrite_origins(self) -> None:
        if self._origins_file is None:
            return
        lines = [f"{d} {u} {r}\n" for d, pairs in self._origins.items() for u, r in pairs]
        try:
            durable.write(self._origins_file, "".join(lines).encode())
            self._origin_lines = len(lines)
        except OSError as exc:
            log.warning("could not save blob origins: %s", exc)

    def record_origin(self, upstream: str, repo: str, digest: Digest) -> None:
        """``digest`` is being fetched for ``repo`` of ``upstream``: that upstream vouches."""
        if not self._add_origin(digest, upstream, repo) or self._origins_file is None:
            return
        try:
            with self._origins_file.open("a") as f:
                f.write(f"{digest} {upstream} {repo}\n")
            self._origin_lines += 1
        except OSError as exc:
            log.warning("could not save blob origin: %s", exc)
        if self._origin_lines > 2 * len(self._origins) + 1000:
            self._rewrite_origins()

    def origins(self, digest: Digest) -> list[tuple[str, str]]:
        return list(self._origins.get(digest, ()))

    def vouched_by(self, digest: Digest, upstream: str) -> bool:
        """May ``upstream`` speak for cached ``digest``: it came from there (or its origin is
        unknown, from before origins were kept)?"""
        origins = self._origins.get(digest)
        return not origins or any(u == upstream for u, _ in origins)

    def remember(self, auth: str | None, upstream: str, repo: str) -> None:
        key = (credential_key(auth), upstream, repo)
        self._grants[key] = self._clock()
        self._grants.move_to_end(key)
        while len(self._grants) > _MAX_GRANTS:
            self._grants.popitem(last=False)
        if auth is None:
            akey = f"{upstream}/{repo}"
            now = self._wall()
            # Written at most once a minute per repository: this sits on the request path.
            if now - self._anonymous.get(akey, 0.0) > 60:
                self._anonymous[akey] = now
                if len(self._anonymous) > _MAX_GRANTS:
                    oldest = sorted(self._anonymous, key=self._anonymous.__getitem__)
                    for k in oldest[: len(self._anonymous) - _MAX_GRANTS]:
                        del self._anonymous[k]
                self._save_anonymous()

    def link(self, upstream: str, repo: str, digests: list[Digest]) -> None:
        """Record that these digests belong to ``repo`` (from its manifest or a blob answer)."""
        for d in digests:
            k = (upstream, repo, d)
            self._repo_digests[k] = None
            self._repo_digests.move_to_end(k)
        while len(self._repo_digests) > _MAX_REPO_DIGESTS:
            self._repo_digests.popitem(last=False)

    def link_manifest(self, upstream: str, repo: str, body: bytes) -> None:
        self.link(upstream, repo, referenced_digests(body))
        for digest, size in descriptor_sizes(body):
            self.remember_size(upstream, digest, size)

    def remember_size(self, upstream: str, digest: Digest, size: int) -> None:
        key = (upstream, digest)
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        while len(self._sizes) > _MAX_REPO_DIGESTS:
            self._sizes.popitem(last=False)

    def size_of(self, upstream: str, digest: Digest) -> int | None:
        """The blob's size as this upstream stated it (per upstream: one upstream's word
        never decides what another's clients are told)."""
        return self._sizes.get((upstream, digest))

    def granted(self, auth: str | None, upstream: str, repo: str, *, stale: bool = False) -> bool:
        at = self._grants.get((credential_key(auth), upstream, repo))
        if at is None:
            if stale and auth is None:
                wall_at = self._anonymous.get(f"{upstream}/{repo}")
                return wall_at is not None and self._wall() - wall_at <= self._grace
            return False
        age = self._clock() - at
        return age <= (self._grace if stale else self._ttl)

    def is_linked(self, upstream: str, repo: str, digest: Digest) -> bool:
        return (upstream, repo, digest) in self._repo_digests

    async def check_blob(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        auth: str | None,
        *,
        internal: bool = False,
    ) -> None:
        """Return if the client may read blob ``digest`` from ``repo``; else raise its answer.

        For a blob fetched from other upstreams, the named upstream's yes is not enough: one
        of those it came from must also say yes for this client, or BlobNotVouched is raised
        (the client then pulls from the named registry itself).
        """
        await self.check(upstream, repo, "blobs", digest, auth, internal=internal)
        origins = self.origins(digest)
        if not origins or any(u == upstream.name for u, _ in origins):
            return
        for origin_name, origin_repo in reversed(origins):
            origin = self._client.upstreams.get(origin_name)
            if origin is None:
                continue
            try:
                await self.check(origin, origin_repo, "blobs", digest, auth, internal=internal)
            except RegistryError:
                continue
            return
        raise BlobNotVouched(
            f"{digest} is cached from another registry that does not confirm this client"
            f" may read it; pull it from {upstream.name} directly"
        )

    async def check(
        self,
        upstream: Upstream,
        repo: str,
        kind: str,
        digest: Digest,
        auth: str | None,
        *,
        internal: bool = False,
    ) -> None:
        """May this client read ``digest`` (a blob or a manifest, by ``kind``) from ``repo``?

        Answered from a fresh grant when the digest is linked to the repository, else by a
        HEAD upstream with the client's credentials (``internal``: the agent's own request,
        which may run its own token flow). The upstream's refusal is raised as its answer.
        """
        if self.is_linked(upstream.name, repo, digest) and self.granted(auth, upstream.name, repo):
            return
        headers = {"Accept": DEFAULT_ACCEPT} if kind == "manifests" else {}
        try:
            async with self._client.request(
                upstream,
                "HEAD",
                f"/v2/{repo}/{kind}/{digest}",
                client_auth=auth,
                own_auth=internal,
                headers=headers,
            ) as resp:
                await ensure_ok(resp, upstream.name)
                length = resp.headers.get("Content-Length", "")
            if kind == "blobs" and length.isdigit() and len(length) < 19:
                self.remember_size(upstream.name, digest, int(length))
            self.remember(auth, upstream.name, repo)
            self.link(upstream.name, repo, [digest])
            return
        except UpstreamError:
            if self.is_linked(upstream.name, repo, digest) and self.granted(
                auth, upstream.name, repo, stale=True
            ):
                log.warning(
                    "upstream down, serving from earlier grant upstream=%s repo=%s",
                    upstream.name,
                    repo,
                )
                return
            raise


class BlobNotVouched(BlobUnknown):
    """A cached blob came from upstreams that do not confirm this client may read it."""


def descriptor_sizes(body: bytes) -> list[tuple[Digest, int]]:
    """(digest, size) of every descriptor in a manifest or index that states a size."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    descs: list[object] = [doc.get("config")]
    for key in ("layers", "manifests", "blobs"):
        if isinstance(doc.get(key), list):
            descs.extend(doc[key])
    out: list[tuple[Digest, int]] = []
    for d in descs:
        if not isinstance(d, dict):
            continue
        raw, size = d.get("digest"), d.get("size")
        if not isinstance(raw, str) or type(size) is not int or not 0 <= size < 1 << 50:
            continue
        try:
            out.append((parse_digest(raw), size))
        except DigestInvalid:
            continue
    return out


def referenced_digests(body: bytes) -> list[Digest]:
    """Digests a manifest or index points at (config, layers, child manifests)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    out: list[Digest] = []
    descs: list[object] = []
    if isinstance(doc.get("config"), dict):
        descs.append(doc["config"])
    for key in ("layers", "manifests", "blobs"):
        if isinstance(doc.get(key), list):
            descs.extend(doc[key])
    for d in descs:
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            try:
                out.append(parse_digest(d["digest"]))
            except DigestInvalid:
                continue
    return out
