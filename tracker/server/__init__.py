"""The tracker's HTTP API, one module per group of endpoints; shared request helpers live here."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from core.trackererrors import Forbidden, InvalidRequest, Unauthorized
from core.wire import AGENT_KEY_HEADER
from tracker.metrics import TrackerMetrics
from tracker.service import Tracker

TRACKER = web.AppKey("tracker", Tracker)
METRICS = web.AppKey("metrics", TrackerMetrics)
TOKEN = web.AppKey("token", str)
# True when agents must prove their id with a certificate from the fleet CA (--agent-ca-file).
AGENT_CERTS = web.AppKey("agent_certs", bool)


def require_token(request: web.Request, *, allow_basic: bool = False) -> None:
    """The fleet token as ``Bearer TOKEN``; with ``allow_basic`` also as the password of
    HTTP Basic, so a browser can open the fleet page (it prompts once)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    token = request.app[TOKEN]
    offered = value.strip()
    if allow_basic and scheme.lower() == "basic":
        try:
            offered = base64.b64decode(offered, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            offered = ""
        scheme = "bearer"
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.encode(), token.encode()):
        raise Unauthorized("missing or wrong fleet token")


def agent_credentials(request: web.Request, agent_id: str | None = None) -> tuple[str, str]:
    """(agent id, agent key) of an agent request, after checking the fleet token."""
    require_token(request)
    key = request.headers.get(AGENT_KEY_HEADER)
    if not key:
        raise Unauthorized(f"missing {AGENT_KEY_HEADER} header")
    aid = agent_id if agent_id is not None else request.match_info.get("id", "")
    if request.app.get(AGENT_CERTS, False):
        named = certificate_name(request)
        if named is None:
            raise Unauthorized("agent requests need a certificate from the fleet CA")
        if named != aid:
            # The token and even a stolen key are not enough: the id is the certificate's.
            raise Forbidden(f"the certificate names agent {named}, not {aid}")
    return aid, key


def certificate_name(request: web.Request) -> str | None:
    """The common name of the client's verified certificate, or None without one."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def read_json(request: web.Request) -> Mapping[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


def field_str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"field {name!r} must be a string")
    return value


def reply(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
