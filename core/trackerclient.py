"""How an agent talks to the tracker: one Protocol, an HTTP client for remote replicas and a
local client for the embedded, in-process tracker. Both raise the classes of core.trackererrors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from core import trackererrors as errors
from core.failures import classify
from core.wire import (
    AGENT_ID_HEADER,
    AGENT_KEY_HEADER,
    AgentInfo,
    Announcement,
    HeartbeatReply,
    Invalidation,
    LayerProgress,
    LookupReply,
    Metainfo,
    PreheatJob,
    SegmentMeta,
)

log = logging.getLogger(__name__)


class TrackerClient(Protocol):
    """The tracker as one agent sees it; every call is bound to that agent's id and key.

    Raises ``UnknownAgent`` when the tracker does not know the agent alive (send a heartbeat,
    then re-announce), ``Forbidden`` when the id is alive under another key, ``InvalidRequest``
    for malformed input, ``Conflict`` for contradicting metainfo, and ``TrackerUnavailable``
    when no tracker answered in time.
    """

    agent_id: str

    async def heartbeat(self, info: AgentInfo) -> HeartbeatReply: ...

    async def announce(
        self,
        digest: str,
        state: str = "holding",
        *,
        progress_bytes: int = 0,
        total_bytes: int = 0,
    ) -> None: ...

    async def announce_many(self, items: Sequence[Announcement]) -> None: ...

    async def withdraw(self, digest: str) -> None: ...

    async def lookup(self, digest: str, named: Sequence[str] = ()) -> LookupReply:
        """Peers for ``digest``; ``named`` agent ids are vouched for too when alive."""
        ...

    async def put_metainfo(
        self, digest: str, total_size: int, segment: SegmentMeta
    ) -> Metainfo: ...

    async def get_metainfo(self, digest: str) -> Metainfo | None:
        """The published metainfo, or None when nothing was published for ``digest``."""
        ...

    async def report_bad_peer(self, peer_id: str, digest: str) -> None: ...

    async def tasks(self) -> list[PreheatJob]: ...

    async def invalidations(self, after: float) -> list[Invalidation]:
        """Tag invalidations created after ``after`` (the newest ``created`` seen), oldest first."""
        ...

    async def report_preheat(
        self, job_id: str, layers: Sequence[LayerProgress], state: str, *, error: str | None = None
    ) -> None: ...


_ERRORS: dict[str, type[errors.TrackerError]] = {
    "invalid_request": errors.InvalidRequest,
    "unauthorized": errors.Unauthorized,
    "forbidden": errors.Forbidden,
    "not_found": errors.NotFound,
    "unknown_agent": errors.UnknownAgent,
    "conflict": errors.Conflict,
}
# Rounds over the replicas while every one that answered was shedding load (429), and the
# longest Retry-After honoured: a shed call waits seconds, not as long as the overload lasts.
_BUSY_ROUNDS = 4
_MAX_RETRY_AFTER = 10.0


def _seconds(retry_after: str) -> float:
    """A Retry-After in seconds (our tracker sends whole seconds, never an HTTP date)."""
    try:
        value = float(retry_after)
    except ValueError:
        return 1.0
    return min(max(value, 0.1), _MAX_RETRY_AFTER)


_BY_STATUS: dict[int, type[errors.TrackerError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.InvalidRequest,
}


class HttpTrackerClient:
    """Talks to tracker replicas over HTTP, failing over between them.

    ``urls`` are replicas of one fleet (sharing a Redis store), tried in turn starting from
    the last one that answered; a replica that times out, refuses the connection or answers
    5xx is skipped. A 4xx answer is final: it would be the same on every replica, except 429
    (load shed): then the next replica is asked, and when every one that answered shed the
    call, it is tried again after their Retry-After times a random 0.5-1.5, a few times.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        token: str,
        agent_id: str,
        key: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``ssl_context``: for https replicas (the tracker's CA, and this agent's certificate
        when the tracker identifies agents by it); None uses the system's trust store."""
        raw = urls.split(",") if isinstance(urls, str) else list(urls)
        self._urls = [u.strip().rstrip("/") for u in raw if u.strip()]
        if not self._urls:
            raise ValueError("at least one tracker URL is needed")
        self._token = token
        self.agent_id = agent_id
        self._key = key
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._preferred = 0
        # Jitter for Retry-After: not a secret, only a spread.
        self._rng = rng or random.Random()  # noqa: S311

    async def _call(
        self, method: str, path: str, body: Any = None, *, agent_header: bool = False
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", AGENT_KEY_HEADER: self._key}
        if agent_header:
            headers[AGENT_ID_HEADER] = self.agent_id
        failures: list[str] = []
        n = len(self._urls)
        for busy_round in range(_BUSY_ROUNDS + 1):
            busy: float | None = None
            for i in range(n):
                idx = (self._preferred + i) % n
                base = self._urls[idx]
                try:
                    async with self._session.request(
                        method,
                        base + path,
                        json=body,
                        headers=headers,
                        timeout=self._timeout,
                        ssl=self._ssl,
                    ) as resp:
                        try:
                            payload = await resp.json(content_type=None)
                        except ValueError:
                            payload = None
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After", "")
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    failures.append(f"{base}: {classify(exc).cause}")
                    continue
                if status == 429:
                    # Shedding load: another replica may have room; else wait as told.
                    failures.append(f"{base}: busy")
                    busy = max(busy or 0.0, _seconds(retry_after))
                    continue
                if status >= 500:
                    failures.append(f"{base}: HTTP {status}")
                    continue
                self._preferred = idx
                if status >= 400:
                    message = payload.get("error", "") if isinstance(payload, dict) else ""
                    code = payload.get("code", "") if isinstance(payload, dict) else ""
                    cls = _ERRORS.get(code) or _BY_STATUS.get(status, errors.TrackerError)
                    raise cls(message or f"HTTP {status}")
                return payload
            if busy is None or busy_round == _BUSY_ROUNDS:
                break
            # Jitter, so a burst that was shed together does not come back together.
            await asyncio.sleep(busy * self._rng.uniform(0.5, 1.5))
        # Debug only: the caller decides how loudly to say it (the agent once per change).
        log.debug("no tracker replica answered path=%s failures=%s", path, failures)
        raise errors.TrackerUnavailable("no tracker answered: " + "; ".join(failures))

    def _agent(self, suffix: str) -> str:
        return f"/v1/agents/{self.agent_id}/{suffix}"

    async def heartbeat(self, info: AgentInfo) -> HeartbeatReply:
        if info.agent_id != self.agent_id:
            raise errors.InvalidRequest("heartbeat for another agent id")
        return HeartbeatReply.from_json(
            await self._call("POST", self._agent("heartbeat"), info.to_json())
        )

    async def announce(
        self,
        digest: str,
        state: str = "holding",
        *,
        progress_bytes: int = 0,
        total_bytes: int = 0,
    ) -> None:
        body = {
            "digest": digest,
            "state": state,
            "progress_bytes": progress_bytes,
            "total_bytes": total_bytes,
        }
        await self._call("POST", self._agent("announce"), body)

    async def announce_many(self, items: Sequence[Announcement]) -> None:
        body = {"holdings": [a.to_json() for a in items]}
        await self._call("POST", self._agent("announce"), body)

    async def withdraw(self, digest: str) -> None:
        await self._call("POST", self._agent("withdraw"), {"digest": digest})

    async def lookup(self, digest: str, named: Sequence[str] = ()) -> LookupReply:
        body: dict[str, Any] = {"digest": digest}
        if named:
            body["agents"] = list(named)
        return LookupReply.from_json(await self._call("POST", self._agent("lookup"), body))

    async def put_metainfo(self, digest: str, total_size: int, segment: SegmentMeta) -> Metainfo:
        body = {**segment.to_json(), "total_size": total_size}
        await self._call("PUT", f"/v1/metainfo/{digest}/{segment.index}", body, agent_header=True)
        meta = await self.get_metainfo(digest)
        if meta is None:
            raise errors.TrackerError(f"metainfo for {digest} vanished after publishing")
        return meta

    async def get_metainfo(self, digest: str) -> Metainfo | None:
        try:
            return Metainfo.from_json(await self._call("GET", f"/v1/metainfo/{digest}"))
        except errors.NotFound:
            return None

    async def report_bad_peer(self, peer_id: str, digest: str) -> None:
        await self._call("POST", self._agent("bad-peer"), {"peer_id": peer_id, "digest": digest})

    async def tasks(self) -> list[PreheatJob]:
        payload = await self._call("GET", self._agent("tasks"))
        return [PreheatJob.from_json(j) for j in payload["jobs"]]

    async def invalidations(self, after: float) -> list[Invalidation]:
        payload = await self._call("GET", f"/v1/invalidations?after={after!r}")
        return [Invalidation.from_json(i) for i in payload["invalidations"]]

    async def report_preheat(
        self, job_id: str, layers: Sequence[LayerProgress], state: str, *, error: str | None = None
    ) -> None:
        body = {"layers": [x.to_json() for x in layers], "state": state, "error": error}
        await self._call("POST", self._agent(f"preheat/{job_id}"), body)
