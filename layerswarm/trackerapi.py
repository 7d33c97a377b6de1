"""A small blocking client of the tracker's operator API, for the day-2 commands.

The commands (``preheat``, ``status``, ``doctor``) are short-lived and sequential, so a
blocking client with a timeout on every call is simpler than an event loop. Errors keep
their HTTP status (never collapsed into ``None``):

    TrackerAPIError          base
    ├── TrackerUnreachable   no replica answered (connection refused, timeout, DNS)
    └── TrackerRefused       a replica answered with an error status (``status``, ``message``)
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.fleettoken import read_fleet_token
from core.settings import ConfigError, parse_duration, parse_url_list, setting
from core.trackerclient import Replicas, Wait


class TrackerAPIError(Exception):
    """Base of the errors below; the message is one line for operators."""


class TrackerUnreachable(TrackerAPIError):
    """No tracker URL gave an HTTP answer in time."""


class TrackerRefused(TrackerAPIError):
    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.url = url


@dataclass(frozen=True)
class TrackerAccess:
    """Where the tracker is and how to prove we belong to the fleet.

    The setting names are the agent's (``LAYERSWARM_TRACKER``,
    ``LAYERSWARM_TRACKER_TOKEN_FILE``), so on a node the commands work with the agent's env.
    """

    tracker: str = field(
        default="",
        metadata=setting(
            "tracker URL(s), comma-separated replicas (tried in order)",
            parse=parse_url_list,
            metavar="URL[,URL...]",
        ),
    )
    tracker_token_file: Path | None = field(
        default=None,
        metadata=setting(
            "file holding the fleet's shared tracker token", parse=Path, metavar="FILE"
        ),
    )
    tracker_ca_file: Path | None = field(
        default=None,
        metadata=setting(
            "CA (PEM) that signed an https tracker's certificate, e.g. the fleet CA "
            "(default: the system's trust store)",
            parse=Path,
            metavar="FILE",
        ),
    )
    http_timeout: float = field(
        default=5.0,
        metadata=setting(
            "timeout of each request to the tracker", parse=parse_duration, metavar="DURATION"
        ),
    )

    def __post_init__(self) -> None:
        if not self.tracker:
            raise ConfigError("tracker is required: --tracker URL or LAYERSWARM_TRACKER")
        if self.tracker_token_file is None:
            raise ConfigError(
                "tracker-token-file is required: --tracker-token-file FILE or "
                "LAYERSWARM_TRACKER_TOKEN_FILE"
            )
        if self.http_timeout <= 0:
            raise ConfigError("http-timeout must be positive")

    def client(self) -> TrackerAPI:
        assert self.tracker_token_file is not None
        return TrackerAPI(
            self.tracker.split(","),
            read_fleet_token(self.tracker_token_file, "tracker-token-file"),
            self.http_timeout,
            ssl_context=fleet_ca_context(self.tracker_ca_file),
        )


def fleet_ca_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """Trust for an https tracker whose certificate the fleet CA signed: fleet certificates
    name nodes, not host names, so membership of the fleet is what is checked."""
    if ca_file is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tracker-ca-file {ca_file}: {exc}") from None
    ctx.check_hostname = False
    return ctx


def _no_proxy_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    # Fleet-internal traffic goes direct, as the agent's own client does: an http_proxy in an
    # operator's shell must not receive the fleet token.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
    max_body: int = 16 << 20,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One request; any HTTP status is a ``Response``, only no answer at all raises OSError."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    # The scheme was checked just above, so no file: or custom scheme reaches urllib.
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with _no_proxy_opener(context).open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(max_body), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        with exc:
            data = exc.read(max_body)
            return Response(exc.code, data, dict(exc.headers.items()))


class TrackerAPI:
    """The operator endpoints: preheat jobs, the fleet view, health."""

    def __init__(
        self,
        urls: list[str],
        token: str,
        timeout: float = 5.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._replicas = Replicas(urls)
        self.urls = self._replicas.urls
        self._token = token
        self._ssl = ssl_context
        self.timeout = timeout

    def _call(
        self, method: str, path: str, payload: Any = None, *, auth: bool = True
    ) -> tuple[Any, str]:
        """(decoded JSON, the replica's URL); replicas fail over as ``Replicas`` says, the
        agent's rule."""
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        call = self._replicas.call()
        refused: TrackerRefused | None = None
        for step in call:
            if isinstance(step, Wait):
                time.sleep(step.seconds)
                continue
            try:
                resp = http_request(
                    step.base + path,
                    method=method,
                    headers=headers,
                    body=body,
                    timeout=self.timeout,
                    context=self._ssl,
                )
            except (OSError, ValueError) as exc:
                step.no_answer(str(getattr(exc, "reason", None) or exc))
                refused = None
                continue
            if not step.answered(resp.status, resp.headers.get("Retry-After", "")):
                # Kept for when no later replica answers: its message beats "unreachable".
                refused = TrackerRefused(resp.status, _error_message(resp), step.base)
                continue
            if resp.status >= 400:
                raise TrackerRefused(resp.status, _error_message(resp), step.base)
            try:
                return resp.json(), step.base
            except ValueError:
                raise TrackerRefused(resp.status, "answer is not JSON", step.base) from None
        if refused is not None:
            raise refused
        raise TrackerUnreachable("no tracker answered: " + "; ".join(call.failures))

    def create_preheat(
        self, image: str, scope: str, zone: str | None = None, region: str | None = None
    ) -> str:
        payload: dict[str, str] = {"image": image, "scope": scope}
        if zone:
            payload["zone"] = zone
        if region:
            payload["region"] = region
        data, base = self._call("POST", "/preheat", payload)
        job_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(job_id, str):
            raise TrackerRefused(201, "answer has no job id", base)
        return job_id

    def invalidate(self, image: str) -> dict[str, Any]:
        data, base = self._call("POST", "/v1/invalidations", {"image": image})
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise TrackerRefused(201, "answer has no invalidation id", base)
        return data

    def preheat_status(self, job_id: str) -> dict[str, Any]:
        data, base = self._call("GET", f"/preheat/{job_id}")
        if not isinstance(data, dict):
            raise TrackerRefused(200, "job status is not an object", base)
        return data

    def fleet(self) -> dict[str, Any]:
        data, base = self._call("GET", "/v1/fleet")
        if not isinstance(data, dict):
            raise TrackerRefused(200, "fleet is not an object", base)
        return data

    def healthz(self) -> dict[str, Any]:
        data, _ = self._call("GET", "/healthz", auth=False)
        return data if isinstance(data, dict) else {}

    def check_token(self) -> None:
        """Raises TrackerRefused(401) when the token is wrong.

        ``GET /v1/fleet`` answers without a token, so it proves nothing; asking for a preheat
        job that cannot exist does: 401 for a wrong token, 404 once the token is accepted.
        """
        try:
            self._call("GET", "/preheat/layerswarm-doctor-probe")
        except TrackerRefused as exc:
            if exc.status != 404:
                raise


def _error_message(resp: Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.body[:200].decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return "no message"
