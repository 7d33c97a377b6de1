"""The registry read API (OCI distribution spec, pull side) served to the node's runtime.

Routes: ``GET /v2/``; GET/HEAD ``/v2/<name>/manifests/<reference>``,
``/v2/<name>/blobs/<digest>``; GET ``/v2/<name>/tags/list``. Every other method is
405 UNSUPPORTED: this is a read-only mirror.

The registry a request is for comes from containerd's ``?ns=`` query; without it (Docker's
``registry-mirrors``) it is the default upstream. Handlers raise RegistryError subclasses;
agent/server/middleware.py renders them as OCI error bodies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web

from agent.blobstore import BlobStore, CachedBlob
from agent.config import (
    DOCKER_HUB,
    AgentConfig,
    Upstream,
    canonical_registry,
    registry_from_prefix,
    valid_registry_name,
)
from agent.errors import (
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    RegistryError,
    Unauthorized,
    Unsupported,
    UpstreamError,
)
from agent.fetch import Download
from agent.manifests import StoredManifest
from agent.metrics import AgentMetrics
from agent.mirror import Mirror
from agent.oci import (
    DEFAULT_ACCEPT,
    ByteRange,
    Digest,
    parse_digest,
    parse_range,
    validate_name,
    validate_reference,
)
from agent.referrers import FILTERS_HEADER, OCI_INDEX, check_artifact_type, referrers
from agent.server.sendfile import SendfileResponse
from agent.upstream import UpstreamClient, ensure_ok, read_limited, relay_error

log = logging.getLogger(__name__)

_PATH_RE = re.compile(
    r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs|tags|referrers)/(?P<rest>[^/]+)$"
)
_API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
_MAX_TAGS_BODY = 4 << 20
# How long whether an upstream challenges anonymous clients is remembered.
_NEEDS_AUTH_TTL = 300.0


@dataclass
class RequestInfo:
    """What the access log and metrics want to know about a request, filled as it goes:
    ``bytes`` of a manifest or blob sent to the client from ``source`` are counted as served
    once, by the middleware, when the response ends."""

    kind: str = "other"
    repo: str = ""
    digest: str = ""
    upstream: str = ""
    source: str = ""
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)


_INFO_KEY = web.RequestKey("layerswarm_info", RequestInfo)


def info(request: web.Request) -> RequestInfo:
    ri = request.get(_INFO_KEY)
    if ri is None:
        ri = RequestInfo()
        request[_INFO_KEY] = ri
    return ri


class RegistryHandlers:
    def __init__(
        self,
        config: AgentConfig,
        mirror: Mirror,
        client: UpstreamClient,
        store: BlobStore,
        metrics: AgentMetrics,
    ) -> None:
        self._config = config
        self._upstreams = config.upstreams
        self._mirror = mirror
        self._client = client
        self._store = store
        self._metrics = metrics
        # Per upstream: (whether /v2/ challenges anonymous clients, when that was asked).
        self._needs_auth: dict[str, tuple[bool, float]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v2", self.ping)
        app.router.add_route("*", "/v2/", self.ping)
        app.router.add_route("*", "/v2/{tail:.+}", self.dispatch)

    async def ping(self, request: web.Request) -> web.StreamResponse:
        """``/v2/``: answer as the upstream would, so clients learn its auth challenge.

        Clients (skopeo, podman, Docker) decide from this answer whether and how to send
        credentials to the mirror; a bare 200 would make them never send any. When the
        upstream can't be reached we still answer 200, so cached images keep pulling.

        A ping carries no repository, so a mirror location with a path prefix
        (``node:5050/ghcr.io``) pings plain ``/v2/``: with several upstreams and no ``?ns=``,
        credentials on a ping (a ``login``) could be meant for any of them, and are sent to
        none; they are checked by the upstream on the first real request instead.
        """
        ri = info(request)
        ri.kind = "ping"
        if request.method not in ("GET", "HEAD"):
            raise Unsupported("this mirror is read-only", headers={"Allow": "GET, HEAD"})
        auth = client_auth(request)
        upstream = self._ping_target(request, auth)
        if upstream is None:
            log.info("ping with credentials names no registry; not forwarding them anywhere")
            return web.json_response({}, headers=_API_HEADERS)
        ri.upstream = upstream.name
        try:
            async with self._client.request(upstream, "GET", "/v2/", client_auth=auth) as resp:
                if resp.status == 401:
                    raise await relay_error(resp)
        except UpstreamError as exc:
            log.info("upstream %s not answering /v2/: %s", upstream.name, exc.message)
        if auth is None and self._ambiguous(request) and await self._others_need_auth(upstream):
            # The default upstream lets anyone in, but a registry reached by path prefix does
            # not: without a challenge here, clients would never send the credentials they
            # hold for that prefix. A Basic challenge makes them send those (or an empty
            # Basic, read as anonymous); the upstream the path names then decides.
            raise Unauthorized(
                "authentication required by a registry this mirror serves",
                headers={"WWW-Authenticate": 'Basic realm="layerswarm mirror"', **_API_HEADERS},
            )
        return web.json_response({}, headers=_API_HEADERS)

    def _ambiguous(self, request: web.Request) -> bool:
        return "ns" not in request.query and len(self._upstreams) > 1

    async def _others_need_auth(self, default: Upstream) -> bool:
        """Does any other upstream challenge anonymous clients (asked at most every few
        minutes per upstream)? Configured credentials answering for one count as a no."""
        now = time.monotonic()
        for up in self._upstreams.values():
            if up.name == default.name:
                continue
            known = self._needs_auth.get(up.name)
            if known is None or now - known[1] > _NEEDS_AUTH_TTL:
                needs = False
                try:
                    async with self._client.request(up, "GET", "/v2/", client_auth=None) as resp:
                        needs = resp.status == 401
                except UpstreamError:
                    needs = False
                known = (needs, now)
                self._needs_auth[up.name] = known
            if known[0]:
                return True
        return False

    def _ping_target(self, request: web.Request, auth: str | None) -> Upstream | None:
        """The upstream a ``/v2/`` ping is for, or None when it can't be told and the ping
        carries credentials (which must then go nowhere)."""
        ns_values = request.query.getall("ns", [])
        if ns_values or len(self._upstreams) == 1 or auth is None:
            upstream, _ = self._upstream_for(request, "")
            return upstream
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        ri = info(request)
        if request.method not in ("GET", "HEAD"):
            raise Unsupported("this mirror is read-only", headers={"Allow": "GET, HEAD"})
        m = _PATH_RE.match(request.path)
        if m is None:
            if request.path.rstrip("/") == "/v2/_catalog":
                ri.kind = "catalog"
                raise Unsupported("catalog listing is not offered by this mirror")
            raise NameUnknown("no such endpoint")
        kind = m.group("kind")
        ri.kind = {
            "manifests": "manifest",
            "blobs": "blob",
            "tags": "tags",
            "referrers": "referrers",
        }[kind]
        upstream, name = self._upstream_for(request, m.group("name"))
        ri.upstream = upstream.name
        repo = validate_name(name)
        if upstream.name == DOCKER_HUB and "/" not in repo:
            # Docker Hub's official images live under library/; clients that omit it mean it.
            repo = f"library/{repo}"
        ri.repo = repo
        rest = m.group("rest")
        auth = client_auth(request)
        if kind == "manifests":
            return await self._manifest(request, upstream, repo, rest, auth)
        if kind == "blobs":
            return await self._blob(request, upstream, repo, rest, auth)
        if kind == "referrers":
            return await self._referrers(request, upstream, repo, rest, auth)
        if rest != "list":
            raise NameUnknown("no such endpoint")
        return await self._tags(request, upstream, repo, auth)

    def _upstream_for(self, request: web.Request, name: str) -> tuple[Upstream, str]:
        """The upstream a request is for, and the repository name within it.

        containerd names the registry in ``?ns=``. podman, CRI-O and skopeo send no ``ns``,
        so their mirror entries use a path prefix (``location = "node:5050/ghcr.io"``) and
        the registry arrives as the first path component, a port written ``_port`` because a
        reference path may not contain a colon (``node:5050/127.0.0.1_5000``). Docker Hub
        namespaces never contain dots or underscores, and only configured upstreams match.
        """
        ns_values = request.query.getall("ns", [])
        if len(ns_values) > 1:
            raise NameInvalid("more than one ns parameter")
        if not ns_values:
            first, sep, rest = name.partition("/")
            if sep and rest and ("." in first or first == "localhost"):
                host = canonical_registry(first)
                up = self._upstreams.get(host) or self._upstreams.get(registry_from_prefix(host))
                if up is not None:
                    return up, rest
                if self._names_a_registry(first):
                    # Sending it to the default upstream would fail there as a 404, and a
                    # client would silently fall back to pulling direct.
                    raise NameUnknown(
                        f"registry {registry_from_prefix(first)[:100]} is not mirrored here;"
                        f" this agent mirrors {', '.join(sorted(self._upstreams))}"
                    )
        ns = ns_values[0] if ns_values else self._config.default_upstream
        ns = canonical_registry(ns)
        if not valid_registry_name(ns):
            raise NameInvalid(f"invalid ns {ns[:100]!r}")
        up = self._upstreams.get(ns)
        if up is None:
            raise NameUnknown(f"registry {ns} is not mirrored here")
        return up, name

    def _names_a_registry(self, component: str) -> bool:
        """Is this first path component surely a registry prefix, not a repository part?

        A ``_port`` suffix, an IP address or ``localhost`` can't be a namespace a client means
        on the default upstream; nor can a dotted name when that upstream is Docker Hub, whose
        namespaces never hold dots. Other dotted names may be a namespace elsewhere.
        """
        host = registry_from_prefix(component)
        if host != component or component == "localhost":
            return True
        try:
            ipaddress.ip_address(component)
            return True
        except ValueError:
            return self._config.default_upstream == DOCKER_HUB

    # -- manifests ----------------------------------------------------------------

    async def _manifest(
        self, request: web.Request, upstream: Upstream, repo: str, reference: str, auth: str | None
    ) -> web.StreamResponse:
        ref = validate_reference(reference)
        # Clients like podman send one Accept header per media type: keep them all, or the
        # upstream answers with an older format (schema1) than the client can take.
        accept = ", ".join(request.headers.getall("Accept", [])) or DEFAULT_ACCEPT
        if isinstance(ref, Digest):
            info(request).digest = str(ref)
        stored = await self._mirror.manifest(upstream, repo, ref, accept, auth)
        ri = info(request)
        ri.digest = str(stored.digest)
        ri.source = "upstream" if stored.fetched else "cache"
        return self._manifest_response(request, stored)

    def _manifest_response(self, request: web.Request, m: StoredManifest) -> web.Response:
        headers = {
            **_API_HEADERS,
            "Docker-Content-Digest": str(m.digest),
            "Content-Type": m.media_type,
            "ETag": f'"{m.digest}"',
        }
        ri = info(request)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(m.body))
            return web.Response(headers=headers)
        ri.bytes = len(m.body)
        return web.Response(body=m.body, headers=headers)

    # -- referrers (OCI 1.1) ----------------------------------------------------------

    async def _referrers(
        self, request: web.Request, upstream: Upstream, repo: str, raw: str, auth: str | None
    ) -> web.StreamResponse:
        subject = parse_digest(raw)
        artifact_type = check_artifact_type(request.query.get("artifactType"))
        ri = info(request)
        ri.digest = str(subject)
        ri.source = "upstream"
        body, filtered = await referrers(
            self._client, self._mirror, upstream, repo, subject, artifact_type, auth
        )
        headers = {**_API_HEADERS, "Content-Type": OCI_INDEX}
        if filtered:
            headers[FILTERS_HEADER] = "artifactType"
        return web.Response(body=body if request.method == "GET" else None, headers=headers)

    # -- blobs ----------------------------------------------------------------------

    async def _blob(
        self, request: web.Request, upstream: Upstream, repo: str, raw_digest: str, auth: str | None
    ) -> web.StreamResponse:
        digest = parse_digest(raw_digest)
        ri = info(request)
        ri.digest = str(digest)
        if (
            request.method == "HEAD"
            and digest not in self._store
            and self._mirror.inflight(digest) is None
        ):
            # A HEAD asks whether the blob exists and how big it is: the upstream's HEAD
            # answers that, where opening the blob would download all of it.
            ri.source = "upstream"
            size = await self._mirror.head_blob(upstream, repo, digest, auth)
            headers = self._blob_headers(digest)
            if size is not None:
                headers["Content-Length"] = str(size)
            return web.Response(headers=headers)
        opened = await self._mirror.open_blob(upstream, repo, digest, auth)
        source = "cache"
        if isinstance(opened, Download) and not opened.trusted_stream and request.method == "GET":
            # Bytes from peers reach a client only once the whole blob verified; they are still
            # the download's (peers' or the upstream's), not bytes the cache saved.
            dl = opened
            opened = await self._verified(dl)
            source = dl.source
        if isinstance(opened, CachedBlob):
            return await self._send_cached(request, opened, source)
        return await self._send_download(request, opened)

    async def _verified(self, dl: Download) -> CachedBlob | Download:
        while not dl.finished:
            if dl.trusted_stream:
                return dl  # peers gave up; the upstream streams the rest
            await dl.wait_changed()
        if isinstance(dl.error, RegistryError):
            raise dl.error
        if dl.error is not None:
            raise UpstreamError(f"could not fetch {dl.digest}: {dl.error}", status=502)
        cached = self._store.get(dl.digest)
        # Evicted in the instant since: the finished download still reads its file.
        return cached if cached is not None else dl

    def _blob_headers(self, digest: Digest) -> dict[str, str]:
        return {
            **_API_HEADERS,
            "Docker-Content-Digest": str(digest),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
            "Cache-Control": "max-age=31536000",
        }

    def _range(self, request: web.Request, size: int | None) -> ByteRange | None:
        try:
            return parse_range(request.headers.get("Range"), size)
        except RangeInvalid as exc:
            if size is not None:
                exc.headers["Content-Range"] = f"bytes */{size}"
            raise

    async def _send_cached(
        self, request: web.Request, blob: CachedBlob, source: str = "cache"
    ) -> web.StreamResponse:
        ri = info(request)
        ri.source = source
        headers = self._blob_headers(blob.digest)
        rng = self._range(request, blob.size)
        offset, count, status = 0, blob.size, 200
        if rng is not None:
            offset, count, status = rng.start, rng.length, 206
            headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{blob.size}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(count)
            return web.Response(status=status, headers=headers)
        self._metrics.first_byte_seconds.labels(source).observe(time.monotonic() - ri.started)
        with self._store.pin(blob.digest):
            resp = SendfileResponse(blob.path, offset, count, status=status, headers=headers)
            await resp.prepare(request)
        ri.bytes = count
        return resp

    async def _send_download(self, request: web.Request, dl: Download) -> web.StreamResponse:
        ri = info(request)
        ri.source = dl.source
        headers = self._blob_headers(dl.digest)
        size = dl.size
        rng = self._range(request, size)
        status = 200
        start, end = 0, (size - 1 if size is not None else None)
        if rng is not None:
            status = 206
            start, end = rng.start, rng.end
            headers["Content-Range"] = (
                f"bytes {rng.start}-{rng.end}/{size if size is not None else '*'}"
            )
        if request.method == "HEAD":
            if end is not None:
                headers["Content-Length"] = str(end - start + 1)
            return web.Response(status=status, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        if end is not None:
            resp.content_length = end - start + 1
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        try:
            async for chunk in dl.stream(start, end if end is not None else 1 << 62):
                if not sent:
                    self._metrics.first_byte_seconds.labels(dl.source).observe(
                        time.monotonic() - ri.started
                    )
                await resp.write(chunk)
                sent += len(chunk)
                # Counted by the middleware when the response ends, however it ends. The source
                # too: a download picks it (peers or the upstream) after a client joined it.
                ri.bytes = sent
                ri.source = dl.source
                if end is None and dl.finished and dl.error is None and start + sent >= dl.written:
                    break
        except (RegistryError, Exception) as exc:
            # Headers are gone; the only honest signal left is to cut the connection short,
            # so the client sees an incomplete body and never a complete wrong blob.
            log.warning("aborting blob response digest=%s after %d bytes: %s", dl.digest, sent, exc)
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    # -- tags -------------------------------------------------------------------------

    async def _tags(
        self, request: web.Request, upstream: Upstream, repo: str, auth: str | None
    ) -> web.StreamResponse:
        query: dict[str, str] = {}
        n_raw = request.query.get("n")
        n: int | None = None
        if n_raw is not None:
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
            if not re.fullmatch(r"[0-9]{1,5}", n_raw) or int(n_raw) > 10000:
                raise RegistryError("n must be an integer up to 10000", status=400)
            n = int(n_raw)
            query["n"] = n_raw
        last = request.query.get("last")
        if last:
            validate_reference(last)
            query["last"] = last
        async with self._client.request(
            upstream, "GET", f"/v2/{repo}/tags/list", client_auth=auth, query=query
        ) as resp:
            await ensure_ok(resp, upstream.name)
            body = await read_limited(resp, _MAX_TAGS_BODY)
            headers = dict(_API_HEADERS)
            headers["Content-Type"] = "application/json"
            link = resp.headers.get("Link")
        info(request).source = "upstream"
        next_page: dict[str, str] | None = None
        if link:
            # The upstream's link names its own path; the client must come back to ours, with
            # the same ?ns= so the next page goes to the same registry.
            next_page = _link_query(link)
        elif n is not None or last:
            # Some upstreams (distribution 2.x) ignore n and last on tag lists; page here,
            # in the lexical order the spec asks for.
            body, next_last = _paginate(body, n, last)
            if next_last is not None and n is not None:
                next_page = {"n": str(n), "last": next_last}
        if next_page is not None:
            if "ns" in request.query:
                next_page["ns"] = request.query["ns"]
            headers["Link"] = f'<{request.path}?{urlencode(next_page)}>; rel="next"'
        return web.Response(body=body if request.method == "GET" else None, headers=headers)


def _paginate(body: bytes, n: int | None, last: str | None) -> tuple[bytes, str | None]:
    """One page of a full tag list, and the ``last`` of the next page (None: no more)."""
    try:
        doc = json.loads(body)
        tags = sorted(t for t in doc.get("tags") or [] if isinstance(t, str))
    except (ValueError, AttributeError, TypeError, RecursionError):
        raise UpstreamError("upstream tag list is not JSON", status=502) from None
    if last:
        tags = [t for t in tags if t > last]
    more = n is not None and len(tags) > n
    if n is not None:
        tags = tags[:n]
    doc["tags"] = tags
    return json.dumps(doc).encode(), (tags[-1] if more and tags else None)


def _link_query(link: str) -> dict[str, str] | None:
    """``n`` and ``last`` of an upstream's ``Link: <url>; rel="next"``, if it has them."""
    m = re.match(r"\s*<([^>]*)>", link)
    if m is None:
        return None
    q = parse_qs(urlsplit(m.group(1)).query)
    out = {k: q[k][0] for k in ("n", "last") if q.get(k)}
    return out or None


def client_auth(request: web.Request) -> str | None:
    """The client's Authorization header; an empty Basic login (what containers/image sends
    after a Basic challenge when it holds no credentials) is no credential at all."""
    auth = request.headers.get("Authorization")
    if auth is None:
        return None
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "basic" and value.strip() in ("", "Og==", "Og"):
        return None
    return auth
