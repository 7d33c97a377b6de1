"""Why an upstream connection failed, in words an operator can act on and a bounded label.

aiohttp and the ssl module describe failures with class names and OpenSSL codes
(``ClientConnectorSSLError``, ``WRONG_VERSION_NUMBER``); neither may reach a log line or a
metric label. ``classify`` turns an exception into a ``Failure``: ``reason`` is one word from
``REASONS`` (a metric label), ``cause`` a short phrase with a hint where there is one.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

import aiohttp

# Every value the ``reason`` label of layerswarm_upstream_errors_total can take; shared by
# the agent, the tracker client and doctor (all import core.settings already).
REASONS = (
    "tls",
    "refused",
    "dns",
    "unreachable",
    "timeout",
    "disconnected",
    "truncated",
    "status",
    # The upstream asked us to come back later (agent/fetch.py retries these).
    "http_429",
    "http_503",
    "other",
)

_PLAIN_HTTP_MARKERS = ("wrong version number", "wrong_version_number", "packet length too long")


@dataclass(frozen=True)
class Failure:
    reason: str
    cause: str


def _tls(exc: BaseException) -> Failure:
    text = str(exc).lower()
    if any(m in text for m in _PLAIN_HTTP_MARKERS):
        return Failure("tls", "TLS handshake failed: plain-HTTP server? use http://")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return Failure("tls", "TLS certificate not trusted (wrong host, or a private CA?)")
    return Failure("tls", "TLS handshake failed")


def _os_error(exc: OSError) -> Failure:
    if exc.errno == errno.ECONNREFUSED:
        return Failure("refused", "connection refused (nothing listening there?)")
    reason = (exc.strerror or "connection failed").lower()
    return Failure("unreachable", reason)


def classify(exc: BaseException) -> Failure:
    """The reason and cause of one failed upstream call (connection, TLS, timeout, body)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return Failure("dns", "host name does not resolve")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _tls(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.__cause__ or exc.os_error
        if isinstance(cause, ssl.SSLError):
            return _tls(cause)
        return _os_error(exc.os_error)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return Failure("timeout", "timed out")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure("disconnected", "the server closed the connection without an answer")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Failure("truncated", "the response body was cut short")
    if isinstance(exc, aiohttp.ClientOSError):
        return _os_error(exc)
    if isinstance(exc, aiohttp.ClientResponseError):
        return Failure("other", "not a valid HTTP answer (an https:// server on an http:// URL?)")
    if isinstance(exc, OSError):
        return _os_error(exc)
    return Failure("other", "unexpected error")
