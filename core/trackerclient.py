"""How an agent talks to the tracker: one Protocol, an HTTP client for remote replicas and a
local client for the embedded, in-process tracker. Both raise the classes of core.trackererrors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> LookupReply:
        """Peers for ``digest``; ``named`` agent ids are vouched for too when alive; with
        ``assign`` the tracker also chooses a relay parent (``LookupReply.parent``)."""
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


@dataclass(frozen=True)
class Wait:
    """Every replica that answered shed the call: sleep this long, then go round again."""

    seconds: float


class Attempt:
    """One replica to ask in a call; tell it what came back."""

    def __init__(self, call: Call, index: int, base: str) -> None:
        self._call = call
        self._index = index
        self.base = base

    def no_answer(self, cause: str) -> None:
        """No HTTP answer (refused, timed out, TLS): the next replica is asked."""
        self._call.failures.append(f"{self.base}: {cause}")

    def answered(self, status: int, retry_after: str = "") -> bool:
        """True when this answer is the call's (use it); False when the next replica is asked:
        5xx (this replica's store is down) and 429 (it sheds load). Any other status is the
        same on every replica, so it is final."""
        if status == 429:
            self._call.failures.append(f"{self.base}: busy")
            self._call.busy = max(self._call.busy or 0.0, _seconds(retry_after))
            return False
        if status >= 500:
            self._call.failures.append(f"{self.base}: HTTP {status}")
            return False
        self._call.replicas.preferred = self._index
        return True


class Call:
    """The steps of one call over the replicas: iterate, and do each ``Attempt`` or ``Wait``.

    When the iteration ends without an answer, ``failures`` says what each replica did."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.failures: list[str] = []
        self.busy: float | None = None

    def __iter__(self) -> Iterator[Attempt | Wait]:
        urls = self.replicas.urls
        n = len(urls)
        for busy_round in range(_BUSY_ROUNDS + 1):
            self.busy = None
            start = self.replicas.preferred
            for i in range(n):
                idx = (start + i) % n
                yield Attempt(self, idx, urls[idx])
            if self.busy is None or busy_round == _BUSY_ROUNDS:
                return
            # Jitter, so a burst that was shed together does not come back together.
            yield Wait(self.busy * self.replicas.rng.uniform(0.5, 1.5))


class Replicas:
    """The tracker replicas of one fleet (sharing a Redis store), and the one failover rule
    every client of the tracker follows, the agent's and the operator commands' alike.

    Replicas are tried in turn starting from the last one that answered; one that gives no
    answer or answers 5xx is skipped. A 4xx answer is final: it would be the same on every
    replica, except 429 (load shed): then the next replica is asked, and when every one that
    answered shed the call, the round is tried again after their Retry-After times a random
    0.5-1.5, a few times.
    """

    def __init__(self, urls: Sequence[str] | str, *, rng: random.Random | None = None) -> None:
        raw = urls.split(",") if isinstance(urls, str) else list(urls)
        self.urls = [u.strip().rstrip("/") for u in raw if u.strip()]
        if not self.urls:
            raise ValueError("at least one tracker URL is needed")
        self.preferred = 0
        # Jitter for Retry-After: not a secret, only a spread.
        self.rng = rng or random.Random()  # noqa: S311

    def call(self) -> Call:
        return Call(self)


_BY_STATUS: dict[int, type[errors.TrackerError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.InvalidRequest,
}


class HttpTrackerClient:
    """Talks to tracker replicas over HTTP, failing over between them as ``Replicas`` says."""

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
        self._replicas = Replicas(urls, rng=rng)
        self._token = token
        self.agent_id = agent_id
        self._key = key
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def _call(
        self, method: str, path: str, body: Any = None, *, agent_header: bool = False
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", AGENT_KEY_HEADER: self._key}
        if agent_header:
            headers[AGENT_ID_HEADER] = self.agent_id
        call = self._replicas.call()
        for step in call:
            if isinstance(step, Wait):
                await asyncio.sleep(step.seconds)
                continue
            try:
                async with self._session.request(
                    method,
                    step.base + path,
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
                step.no_answer(classify(exc).cause)
                continue
            if not step.answered(status, retry_after):
                continue
            if status >= 400:
                message = payload.get("error", "") if isinstance(payload, dict) else ""
                code = payload.get("code", "") if isinstance(payload, dict) else ""
                cls = _ERRORS.get(code) or _BY_STATUS.get(status, errors.TrackerError)
                raise cls(message or f"HTTP {status}")
            return payload
        # Debug only: the caller decides how loudly to say it (the agent once per change).
        log.debug("no tracker replica answered path=%s failures=%s", path, call.failures)
        raise errors.TrackerUnavailable("no tracker answered: " + "; ".join(call.failures))

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

    async def lookup(
        self, digest: str, named: Sequence[str] = (), *, assign: bool = False
    ) -> LookupReply:
        body: dict[str, Any] = {"digest": digest}
        if named:
            body["agents"] = list(named)
        if assign:
            body["assign"] = True
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
