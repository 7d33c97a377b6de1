"""Talking to upstream registries: auth pass-through, redirects, timeouts, error translation.

Credentials stay on their request's path: a client's ``Authorization`` header is sent only to
the upstream it was meant for (same scheme, host and port; dropped when a redirect leaves it,
so storage back-ends behind signed URLs never see it); configured credentials are used only
when a client sends none, and are never logged. Configured credentials answer a challenge
only when the upstream itself sent it (never a redirect target's), and go to a token realm
only if it is the realm the upstream's own ``/v2/`` challenge names and, when that realm is
plain http, only on the upstream's own host name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import yaml

from agent.config import Upstream
from agent.errors import RegistryError, UpstreamError
from core.failures import classify
from core.settings import ConfigError

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 << 10
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# How long the realm named by an upstream's /v2/ challenge is trusted before it is asked again.
_REALM_TTL = 300.0
# A challenge naming another realm re-reads /v2/ at most this often (the realm may have moved).
_REALM_RECHECK = 30.0
# Headers of an upstream's error answer that a client needs to act on it.
_RELAYED_HEADERS = (
    "WWW-Authenticate",
    "Retry-After",
    "Docker-Ratelimit-Source",
    "RateLimit-Limit",
    "RateLimit-Remaining",
)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def load_credentials(path: Path | None) -> dict[str, Credentials]:
    """Read ``NAME: {username, password}`` from a YAML file; errors never echo a secret."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"credentials-file {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"credentials-file {path}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"credentials-file {path}: expected a mapping of registry names")
    out: dict[str, Credentials] = {}
    for name, entry in data.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("username"), str)
            or not isinstance(entry.get("password"), str)
        ):
            raise ConfigError(
                f"credentials-file {path}: entry {name!r} needs string username and password"
            )
        out[str(name)] = Credentials(entry["username"], entry["password"])
    return out


class RelayedError(RegistryError):
    """An upstream's own error answer (401, 403, 404, 429...), passed to the client unchanged.

    Without a body of its own (the answer to a HEAD), ours names the code by the status and
    the kind of request (agent.errors.oci_code).
    """

    code = ""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(f"upstream answered {status}", status=status, headers=headers)
        self.raw_body = body

    def body(self, kind: str = "") -> bytes:
        return self.raw_body or super().body(kind)


_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _Realm:
    url: str | None
    fetched: float


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class UpstreamClient:
    """One aiohttp session for all upstreams, with per-upstream configured credentials."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstreams: Mapping[str, Upstream],
        credentials: Mapping[str, Credentials],
        *,
        connect_timeout: float,
        read_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.upstreams = dict(upstreams)
        self._credentials = dict(credentials)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._clock = clock
        # Tokens obtained with *configured* credentials (or anonymously for our own requests);
        # clients' tokens are never stored.
        self._tokens: dict[tuple[str, str], _Token] = {}
        # The token realm each upstream's own /v2/ challenge names (None: it names none).
        self._realms: dict[str, _Realm] = {}

    def has_credentials(self, upstream: str) -> bool:
        return upstream in self._credentials

    @contextlib.asynccontextmanager
    async def request(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        *,
        client_auth: str | None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        own_auth: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request upstream; yields the final response (after redirects).

        ``client_auth`` is the client's Authorization header, forwarded as is. Without it, the
        upstream's configured credentials answer a challenge; ``own_auth`` also lets the agent
        run an anonymous token flow for requests no client is waiting on (resume, preheat).
        Connection problems raise UpstreamError (503 unreachable, 504 timeout, 502 other).
        """
        url = upstream.url + path
        if query:
            url += "?" + urlencode(query)
        hdrs = dict(headers or {})
        scope = _scope_for(path)
        auth = client_auth
        if auth is None:
            tok = self._tokens.get((upstream.name, scope))
            if tok is not None and tok.expires > self._clock():
                auth = f"Bearer {tok.value}"
        resp = await self._send(upstream, method, url, hdrs, auth)
        try:
            if (
                resp.status == 401
                and client_auth is None
                and (upstream.name in self._credentials or own_auth)
                # Only the upstream's own challenge is answered: a 401 from a host a redirect
                # led to must not choose where our credentials go.
                and _origin(str(resp.url)) == _origin(upstream.url)
            ):
                new_auth = await self._answer_challenge(upstream, resp, scope)
                if new_auth is not None:
                    resp.release()
                    resp = await self._send(upstream, method, url, hdrs, new_auth)
            elif (
                resp.status == 401
                and client_auth is not None
                and client_auth[:6].lower() == "basic "
                and _origin(str(resp.url)) == _origin(upstream.url)
            ):
                # A client that answered the mirror's own Basic challenge (path-prefix mirror
                # entries) holds a login, not a token: trade it for one at the realm the
                # upstream's /v2/ names, as the client would have, and keep no copy.
                new_auth = await self._answer_challenge(
                    upstream, resp, scope, client_basic=client_auth
                )
                if new_auth is not None:
                    resp.release()
                    resp = await self._send(upstream, method, url, hdrs, new_auth)
            if resp.status >= 400 and _origin(str(resp.url)) != _origin(upstream.url):
                # A storage host a redirect led to refused (an expired signed URL, or a host
                # asking for credentials): that is the upstream failing, and relaying its
                # challenge would send our client's credentials to that host.
                raise UpstreamError(
                    f"upstream {upstream.name}: redirect target answered {resp.status}",
                    status=502,
                )
            yield resp
        finally:
            resp.release()

    async def _send(
        self, upstream: Upstream, method: str, url: str, headers: dict[str, str], auth: str | None
    ) -> aiohttp.ClientResponse:
        origin = _origin(upstream.url)
        for _ in range(_MAX_REDIRECTS + 1):
            hdrs = dict(headers)
            # Credentials go only to the upstream's own scheme, host and port, never to a
            # redirect target (blob storage back-ends use signed URLs and must not see the
            # client's token), nor over plain http after an https upstream redirected there.
            if auth is not None and _origin(url) == origin:
                hdrs["Authorization"] = auth
            try:
                resp = await self._session.request(
                    method, url, headers=hdrs, allow_redirects=False, timeout=self._timeout
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise connection_failure(upstream, exc) from exc
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                resp.release()
                if method == "POST":
                    method = "GET"
                continue
            return resp
        raise UpstreamError(f"upstream {upstream.name}: too many redirects")

    async def _answer_challenge(
        self,
        upstream: Upstream,
        resp: aiohttp.ClientResponse,
        scope: str,
        *,
        client_basic: str | None = None,
    ) -> str | None:
        """The Authorization that answers the upstream's challenge: configured credentials,
        or (``client_basic``) a client's Basic login traded for a token that is not kept."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(challenge)
        creds = self._credentials.get(upstream.name)
        if scheme == "basic":
            # A client's Basic login was sent already and refused.
            return creds.basic() if creds and client_basic is None else None
        if scheme != "bearer" or "realm" not in params:
            return None
        if not await self._realm_trusted(upstream, params["realm"]):
            return None
        query = {"service": params["service"]} if "service" in params else {}
        want_scope = params.get("scope") or scope
        if want_scope:
            query["scope"] = want_scope
        login = client_basic if client_basic is not None else creds.basic() if creds else None
        hdrs = {"Authorization": login} if login else {}
        try:
            async with self._session.get(
                params["realm"], params=query, headers=hdrs, timeout=self._timeout
            ) as tresp:
                if tresp.status != 200:
                    log.warning(
                        "token request failed upstream=%s status=%d", upstream.name, tresp.status
                    )
                    return None
                data: Any = await tresp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "token request failed upstream=%s realm=%s error=%s",
                upstream.name,
                params["realm"],
                classify(exc).cause,
            )
            return None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            return None
        if client_basic is not None:
            # A client's token: used for this one request, never stored.
            return f"Bearer {token}"
        ttl = data.get("expires_in", 60)
        ttl = float(ttl) if isinstance(ttl, int | float) else 60.0
        # Refresh a little early so a token never expires between check and use.
        self._tokens[(upstream.name, scope)] = _Token(token, self._clock() + max(ttl - 10, 1))
        return f"Bearer {token}"

    async def _realm_trusted(self, upstream: Upstream, realm: str) -> bool:
        """Is ``realm`` the token service the upstream's own ``/v2/`` challenge names?

        A challenge on a repository path could come from a compromised or confused route; the
        ``/v2/`` answer of the configured upstream URL is the one statement of where its
        tokens come from. A plain-http realm on another host would carry credentials in the
        clear to a third party, so it is refused even when named.
        """
        known = self._realms.get(upstream.name)
        now = self._clock()
        if (
            known is None
            or now - known.fetched > _REALM_TTL
            or (known.url != realm and now - known.fetched > _REALM_RECHECK)
        ):
            known = _Realm(await self._fetch_realm(upstream), now)
            self._realms[upstream.name] = known
        if known.url != realm:
            log.warning(
                "not answering a challenge from upstream=%s: its realm is not the one /v2/ names",
                upstream.name,
            )
            return False
        realm_parts = urlsplit(realm)
        if realm_parts.scheme.lower() != "https" and (
            realm_parts.scheme.lower() != "http"
            or (realm_parts.hostname or "") != (urlsplit(upstream.url).hostname or "")
        ):
            log.warning(
                "not answering a challenge from upstream=%s: plain-http token realm on another"
                " host",
                upstream.name,
            )
            return False
        return True

    async def _fetch_realm(self, upstream: Upstream) -> str | None:
        try:
            async with self._session.get(
                upstream.url + "/v2/", allow_redirects=False, timeout=self._timeout
            ) as resp:
                if resp.status != 401:
                    return None
                scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "could not read /v2/ challenge of upstream=%s url=%s: %s",
                upstream.name,
                upstream.url,
                classify(exc).cause,
            )
            return None
        return params.get("realm") if scheme == "bearer" else None


def _scope_for(path: str) -> str:
    # /v2/<name>/(manifests|blobs|tags)/... -> repository:<name>:pull
    m = re.match(r"^/v2/(.+)/(?:manifests|blobs|tags)/", path)
    return f"repository:{m.group(1)}:pull" if m else ""


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read a whole (small) body, refusing more than ``limit`` bytes."""
    length = resp.content_length
    if length is not None and length > limit:
        raise UpstreamError(f"upstream answer of {length} bytes exceeds limit {limit}")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 << 10):
        buf += chunk
        if len(buf) > limit:
            raise UpstreamError(f"upstream answer exceeds limit {limit}")
    return bytes(buf)


async def relay_error(resp: aiohttp.ClientResponse) -> RelayedError:
    """Turn an upstream 4xx into the same answer for our client."""
    try:
        body = await asyncio.wait_for(read_limited(resp, MAX_ERROR_BODY), timeout=10)
    except (UpstreamError, TimeoutError, aiohttp.ClientError):
        body = b""
    headers = {h: resp.headers[h] for h in _RELAYED_HEADERS if h in resp.headers}
    if body:
        headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
    return RelayedError(resp.status, body, headers)


def upstream_failure(upstream: str, status: int, where: str = "") -> UpstreamError:
    """``where``: the scheme, host and port that answered (never a path: signed URLs)."""
    at = f" at {where}" if where else ""
    return UpstreamError(f"upstream {upstream} answered {status}{at}", status=502, reason="status")


def connection_failure(upstream: Upstream, exc: BaseException) -> UpstreamError:
    """The UpstreamError for a call that got no usable answer: URL and root cause named."""
    failure = classify(exc)
    if failure.reason == "timeout":
        what, status = "timed out", 504
    elif failure.reason in ("tls", "refused", "dns", "unreachable", "disconnected"):
        what, status = "unreachable", 503
    else:
        what, status = "failed", 502
    return UpstreamError(
        f"upstream {upstream.name} ({upstream.url}) {what}: {failure.cause}",
        status=status,
        reason=failure.reason,
    )


# Upstream answers that are the client's business (auth, absence, rate limit): relayed as is.
RELAYED_STATUSES = (401, 403, 404, 429)


async def ensure_ok(resp: aiohttp.ClientResponse, upstream: str) -> None:
    """Return on 200; otherwise raise what the client should see: the upstream's own
    401/403/404/429 answer unchanged, or a 502 for anything else."""
    if resp.status == 200:
        return
    if resp.status in RELAYED_STATUSES:
        raise await relay_error(resp)
    raise upstream_failure(upstream, resp.status, str(resp.url.origin()))
