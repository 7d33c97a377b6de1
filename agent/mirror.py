"""The mirror's logic, apart from HTTP: manifests by tag and digest, and opening blobs.

Used by the registry handlers for clients and by preheat for the agent's own pulls; both go
through the same access checks and the same cache.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.access import AccessChecker
from agent.blobstore import BlobStore, CachedBlob
from agent.config import AgentConfig, Upstream
from agent.errors import DigestInvalid, ManifestInvalid, RegistryError, UpstreamError
from agent.fetch import (
    BlobFetcher,
    Download,
    FetchJob,
    RetryPolicy,
    raise_if_throttled,
    with_retries,
)
from agent.manifests import ManifestStore, StoredManifest
from agent.metrics import AgentMetrics
from agent.oci import MANIFEST_TYPES, Digest, digest_of, parse_digest
from agent.reference import parse_image
from agent.upstream import RelayedError, UpstreamClient, ensure_ok, read_limited

log = logging.getLogger(__name__)

# One try: for when an older answer can be given at once instead of waiting.
_NO_RETRY = RetryPolicy(budget=0.0, attempts=1)
# A joiner whose initiator's credentials were refused retries as initiator this many times.
_MAX_JOIN_RETRIES = 3
# Repositories whose anonymous readability was asked recently (bounded like the grants).
_MAX_ANONYMOUS_PROBES = 10_000
# Content types that say nothing about the document: the body's own mediaType decides.
_GENERIC_TYPES = ("application/octet-stream", "application/json", "text/plain")
# Docker's old signed manifests, still served by some registries to clients that ask for them.
_SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)


class Mirror:
    def __init__(
        self,
        config: AgentConfig,
        client: UpstreamClient,
        store: BlobStore,
        manifests: ManifestStore,
        fetcher: BlobFetcher,
        access: AccessChecker,
        metrics: AgentMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._client = client
        self._store = store
        self._manifests = manifests
        self._fetcher = fetcher
        self._access = access
        self._metrics = metrics
        self._retry = RetryPolicy(budget=config.upstream_retry_wait)
        # With peers as a source, the upstream's GET is no longer the access check, so it
        # is made first (usually answered from the grants the manifest request left).
        self.check_access_first = False
        self._anonymous_probed: OrderedDict[tuple[str, str], float] = OrderedDict()

    def invalidate_tag(self, image: str) -> None:
        """A fleet-wide tag invalidation from the tracker: revalidate that tag next time."""
        try:
            ref = parse_image(image)
        except RegistryError:
            log.warning("ignoring invalidation of %r: not an image reference", image[:200])
            return
        if isinstance(ref.reference, Digest) or ref.registry not in self._config.upstreams:
            return
        if self._manifests.expire_tag(ref.registry, ref.repo, ref.reference):
            log.info(
                "tag invalidated upstream=%s repo=%s tag=%s", ref.registry, ref.repo, ref.reference
            )

    def _always_revalidate(self, repo: str, tag: str) -> bool:
        """--revalidate-tags: a pattern with a colon matches REPO:TAG, else the tag alone."""
        return any(
            fnmatch.fnmatchcase(f"{repo}:{tag}" if ":" in pattern else tag, pattern)
            for pattern in self._config.revalidate_tags
        )

    async def manifest(
        self,
        upstream: Upstream,
        repo: str,
        ref: str | Digest,
        accept: str,
        auth: str | None,
        *,
        internal: bool = False,
    ) -> StoredManifest:
        if isinstance(ref, Digest):
            stored = await self.manifest_by_digest(upstream, repo, ref, accept, auth, internal)
        else:
            stored = await self.manifest_by_tag(upstream, repo, ref, accept, auth, internal)
        self._access.link_manifest(upstream.name, repo, stored.body)
        return stored

    async def manifest_by_digest(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        accept: str,
        auth: str | None,
        internal: bool = False,
    ) -> StoredManifest:
        stored = self._manifests.get(digest)
        # Cached from another upstream: this one's yes would vouch for bytes it may not have
        # (it may never have seen them); fetching verifies it has them.
        if stored is not None and self._access.vouched_by(digest, upstream.name):
            await self._access.check(upstream, repo, "manifests", digest, auth, internal=internal)
            return stored
        return await self._fetch_manifest(
            upstream, repo, str(digest), accept, auth, expect=digest, internal=internal
        )

    async def manifest_by_tag(
        self,
        upstream: Upstream,
        repo: str,
        tag: str,
        accept: str,
        auth: str | None,
        internal: bool = False,
    ) -> StoredManifest:
        entry = self._manifests.get_tag(upstream.name, repo, tag)
        cached = self._manifests.get(entry.digest) if entry is not None else None
        acceptable = cached is not None and _accepts(accept, cached.media_type)
        if (
            cached is not None
            and entry is not None
            and acceptable
            and self._manifests.is_fresh(entry, self._config.tag_ttl)
            and not self._always_revalidate(repo, tag)
            and self._access.granted(auth, upstream.name, repo)
        ):
            return cached
        fallback = (
            cached is not None
            and acceptable
            and self._access.granted(auth, upstream.name, repo, stale=True)
        )
        # With a last known digest to answer from, a busy upstream is not waited out.
        retry = _NO_RETRY if fallback else self._retry

        async def head() -> str | None:
            # A HEAD revalidates the tag and checks the client's access in one request, and
            # does not count against Docker Hub's pull rate limit the way a GET does.
            async with self._client.request(
                upstream,
                "HEAD",
                f"/v2/{repo}/manifests/{tag}",
                client_auth=auth,
                own_auth=internal,
                headers={"Accept": accept},
            ) as resp:
                self._metrics.observe_rate_limit(upstream.name, resp.headers)
                await raise_if_throttled(resp, upstream.name)
                await ensure_ok(resp, upstream.name)
                return resp.headers.get("Docker-Content-Digest")

        try:
            head_digest = await with_retries(
                retry, upstream.name, self._metrics, f"manifest {repo}:{tag}", head
            )
            self._access.remember(auth, upstream.name, repo)
            if auth is not None and not internal:
                await self._learn_anonymous(upstream, repo, tag, accept)
            if head_digest:
                try:
                    d = parse_digest(head_digest)
                except DigestInvalid:
                    d = None
                known = self._manifests.get(d) if d is not None else None
                if (
                    known is not None
                    and _accepts(accept, known.media_type)
                    and self._access.vouched_by(known.digest, upstream.name)
                ):
                    self._manifests.set_tag(
                        upstream.name, repo, tag, known.digest, known.media_type
                    )
                    return known
            stored = await self._fetch_manifest(
                upstream, repo, tag, accept, auth, expect=None, internal=internal, retry=retry
            )
            if not self._manifests.set_tag(
                upstream.name, repo, tag, stored.digest, stored.media_type
            ):
                self._metrics.no_space.labels("manifest_not_stored").inc()
            return stored
        except (UpstreamError, RelayedError) as exc:
            # Unreachable, failing or rate-limiting (429): not a "no" to this client.
            unavailable = isinstance(exc, UpstreamError) or exc.status == 429
            if unavailable and fallback and cached is not None:
                log.warning(
                    "upstream unavailable, serving last known digest "
                    "upstream=%s repo=%s tag=%s error=%s",
                    upstream.name,
                    repo,
                    tag,
                    exc.message,
                )
                return cached
            raise

    async def _learn_anonymous(self, upstream: Upstream, repo: str, tag: str, accept: str) -> None:
        """Ask once in a while whether anyone may read ``repo``, and remember a yes.

        Docker Hub and other token registries give every client a token, anonymous ones too,
        and a token says nothing about who holds it. Without this, a repository read only
        with tokens never earns an anonymous grant, so while the upstream is down (dockerd
        then sends no credentials at all) even a public image in the cache is refused. The
        question is a HEAD with an anonymous token, answered by the upstream itself; it is
        skipped where configured credentials would answer instead of nobody.
        """
        if self._client.has_credentials(upstream.name):
            return
        if self._access.granted(None, upstream.name, repo):
            return
        key = (upstream.name, repo)
        now = self._clock()
        asked = self._anonymous_probed.get(key)
        if asked is not None and now - asked < max(self._config.auth_ttl, 60.0):
            return
        self._anonymous_probed[key] = now
        self._anonymous_probed.move_to_end(key)
        while len(self._anonymous_probed) > _MAX_ANONYMOUS_PROBES:
            self._anonymous_probed.popitem(last=False)
        try:
            async with self._client.request(
                upstream,
                "HEAD",
                f"/v2/{repo}/manifests/{tag}",
                client_auth=None,
                own_auth=True,
                headers={"Accept": accept},
            ) as resp:
                if resp.status != 200:
                    return
        except UpstreamError:
            return
        self._access.remember(None, upstream.name, repo)

    async def _fetch_manifest(
        self,
        upstream: Upstream,
        repo: str,
        reference: str,
        accept: str,
        auth: str | None,
        *,
        expect: Digest | None,
        internal: bool = False,
        retry: RetryPolicy | None = None,
    ) -> StoredManifest:
        async def get() -> tuple[bytes, str, str | None]:
            async with self._client.request(
                upstream,
                "GET",
                f"/v2/{repo}/manifests/{reference}",
                client_auth=auth,
                own_auth=internal,
                headers={"Accept": accept},
            ) as resp:
                self._metrics.observe_rate_limit(upstream.name, resp.headers)
                await raise_if_throttled(resp, upstream.name)
                await ensure_ok(resp, upstream.name)
                try:
                    body = await read_limited(resp, self._config.max_manifest_size)
                except UpstreamError as exc:
                    raise ManifestInvalid(
                        f"upstream manifest larger than {self._config.max_manifest_size} bytes",
                        status=502,
                    ) from exc
                media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
                return body, media_type, resp.headers.get("Docker-Content-Digest")

        body, media_type, header_digest = await with_retries(
            retry or self._retry, upstream.name, self._metrics, f"manifest {repo}@{reference}", get
        )
        self._metrics.count_upstream(upstream.name, len(body))
        if not media_type or media_type in _GENERIC_TYPES:
            media_type = _sniff_media_type(body)
        elif media_type not in MANIFEST_TYPES and media_type not in _SCHEMA1_TYPES:
            # An HTML login page or an error document must not be cached and served as the
            # manifest of a tag or digest.
            raise ManifestInvalid(
                f"upstream {upstream.name} answered with {media_type[:100]!r}, not a manifest",
                status=502,
            )
        algo = expect.algorithm if expect is not None else "sha256"
        actual = digest_of(body, algo)
        if expect is not None and actual != expect:
            raise DigestInvalid(f"upstream manifest does not match {expect}", status=502)
        # A signed schema1 manifest's digest covers its payload without the signatures, so the
        # header can't be checked against the body; we key it by the body's own hash.
        if header_digest and expect is None and "prettyjws" not in media_type:
            try:
                hd = parse_digest(header_digest)
            except DigestInvalid:
                hd = None
            if hd is not None and digest_of(body, hd.algorithm) != hd:
                raise DigestInvalid(
                    "upstream manifest does not match its Docker-Content-Digest", status=502
                )
        self._access.remember(auth, upstream.name, repo)
        self._access.record_origin(upstream.name, repo, actual)
        if not self._manifests.put(actual, media_type, body):
            self._metrics.no_space.labels("manifest_not_stored").inc()
        return StoredManifest(actual, media_type, body, fetched=True)

    async def open_blob(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        auth: str | None,
        *,
        internal: bool = False,
    ) -> CachedBlob | Download:
        """The cached blob, or the download that will bring it (started if needed).

        Raises the upstream's answer (401, 403, 404...) when this client may not read it.
        """
        for _ in range(_MAX_JOIN_RETRIES):
            if (
                self.check_access_first
                or digest in self._store
                or self._fetcher.inflight(digest) is not None
            ):
                await self._access.check_blob(upstream, repo, digest, auth, internal=internal)
            cached = self._store.get(digest)
            if cached is not None:
                return cached
            job = FetchJob(
                upstream,
                repo,
                digest,
                auth,
                internal=internal,
                size=self._access.size_of(upstream.name, digest),
            )
            dl, created = self._fetcher.start(job)
            if created:
                self._access.record_origin(upstream.name, repo, digest)
            try:
                # Shielded: a client leaving must not cancel what other clients wait on.
                await asyncio.shield(dl.started)
            except RelayedError:
                if created:
                    raise
                # The request that started the download had credentials the upstream refused;
                # ours passed the access check, so start over with them.
                continue
            if created:
                self._access.remember(auth, upstream.name, repo)
                self._access.link(upstream.name, repo, [digest])
            return dl
        raise UpstreamError(f"could not start a download of {digest}", status=503)

    def inflight(self, digest: Digest) -> Download | None:
        return self._fetcher.inflight(digest)

    async def head_blob(
        self, upstream: Upstream, repo: str, digest: Digest, auth: str | None
    ) -> int | None:
        """The size of a blob as the upstream answers a HEAD for this client (None: it did not
        say), without downloading it; raises the upstream's refusal as its answer."""
        async with self._client.request(
            upstream, "HEAD", f"/v2/{repo}/blobs/{digest}", client_auth=auth
        ) as resp:
            await ensure_ok(resp, upstream.name)
            size = resp.content_length
        self._access.remember(auth, upstream.name, repo)
        self._access.link(upstream.name, repo, [digest])
        return size


def _accepts(accept: str, media_type: str) -> bool:
    if not accept:
        return True
    types = [a.split(";")[0].strip() for a in accept.split(",")]
    return media_type in types or "*/*" in types


def _sniff_media_type(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ManifestInvalid("upstream manifest is not JSON", status=502) from None
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(mt, str) and mt in MANIFEST_TYPES:
        return mt
    if isinstance(doc, dict) and "manifests" in doc:
        return MANIFEST_TYPES[1]
    return MANIFEST_TYPES[0]
