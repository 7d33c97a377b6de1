"""Authorization and Cookie values never reach a log line, aiohttp's own errors about malformed
requests included. The agent runs as operators run it (the CLI, a real
process); requests are written on a raw socket so they can be as malformed as an attacker's."""

from __future__ import annotations

import logging
import socket

import pytest

from core.logredact import RedactingFilter, redact
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory

SECRET = "s3cr3t-TOKEN-value"


def raw_request(host: str, port: int, head: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.integration
def test_agent_log_never_holds_credentials(
    registry: Registry, agent_proc: AgentProcFactory
) -> None:
    agent = agent_proc(registry)
    requests = [
        # Longer than aiohttp's header line limit: its parser error quotes the value.
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"A" * 9000
        + b"\r\nConnection: close\r\n\r\n",
        # A cookie with a control character: the parser quotes the whole line.
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nCookie: sess=" + SECRET.encode() + b"\x01x\r\n\r\n",
        # An oversized cookie is quoted without its header name.
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nCookie: s=" + SECRET.encode() + b"C" * 9000 + b"\r\n\r\n",
        # A well-formed request with credentials.
        b"GET /v2/x/y/manifests/latest HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
        + SECRET.encode()
        + b"\r\nConnection: close\r\n\r\n",
    ]
    for head in requests:
        raw_request(agent.host, agent.port, head)
    log = agent.proc.log_tail(2000) if agent.proc is not None else ""
    assert "malformed request" in log, log[-2000:]
    assert SECRET not in log, log[-3000:]


def test_redact_forms() -> None:
    for text in (
        f"Authorization: Bearer {SECRET}",
        f"{{'Authorization': 'Basic {SECRET}'}}",
        f"cookie={SECRET}",
        f"X-Layerswarm-Agent-Key: {SECRET}",
        f"got b'Bearer {SECRET}'",
        f"Set-Cookie: a={SECRET}; Path=/",
        f"redirect to https://s3.example/blob?X-Amz-Signature={SECRET}&X-Amz-Expires=60",
        f"GET /x?sig={SECRET}",
    ):
        assert SECRET not in redact(text), text


def test_filter_redacts_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("tracker", logging.ERROR, __file__, 1, "hdrs %s", (SECRET,), None)
    record.msg = "Authorization: %s"
    try:
        raise ValueError(f"Bearer {SECRET}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "<redacted>" in text
