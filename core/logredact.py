"""Secrets never reach a log line: Authorization, Cookie and agent keys are redacted from every
record a handler writes, including aiohttp's own errors about malformed requests (which quote
the raw header bytes a client sent).

Installed on the handlers, not on a logger: a filter on a logger sees only records logged on
that very logger, while handlers see everything that propagates to them.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"

# "Authorization: Bearer x", "'Cookie': 'a=b'", "authorization=..." and the like.
_HEADER_RE = re.compile(
    r"(?i)\b((?:proxy-)?authorization|(?:set-)?cookie|x-layerswarm-agent-key)"
    r"(['\"]?\s*[:=,]\s*['\"]?)([^\r\n'\"]*)"
)
# Credentials without their header name (a parser quoting just the value).
_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
# Signed storage URLs (S3, GCS, CDNs) a redirect may name: their signature is a credential.
_SIGNED_RE = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|signature|sig|token|access_token)=)[^&\s'\"]+"
)


def redact(text: str) -> str:
    text = _HEADER_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _SIGNED_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _SCHEME_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback with secrets removed; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_http_parser_error(exc):
            # aiohttp's parser errors quote whatever bytes the client sent (an oversized
            # cookie is quoted without its header name): keep the kind of error, not the data.
            record.msg = "%s: malformed request (%s)"
            record.args = (_redacted_message(record), type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
            return True
        record.msg = redact(_redacted_message(record))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _is_http_parser_error(exc: BaseException) -> bool:
    # By name, so the CLI does not import aiohttp for commands that never serve HTTP.
    return any(
        c.__name__ == "HttpProcessingError" and c.__module__.startswith("aiohttp")
        for c in type(exc).__mro__
    )


def _redacted_message(record: logging.LogRecord) -> str:
    try:
        return redact(record.getMessage())
    except (TypeError, ValueError):
        return redact(str(record.msg))


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root logger by default)."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
