"""Every error the agent turns into an HTTP answer, and the one place that does it.

Hierarchy::

    RegistryError                 an OCI error body with a status; raised anywhere, rendered once
    ├── NameInvalid               400 NAME_INVALID   bad repository name or ?ns= value
    ├── NameUnknown               404 NAME_UNKNOWN   repository (or registry) not served here
    ├── DigestInvalid             400 DIGEST_INVALID bad digest, or content that does not match it
    ├── ManifestUnknown           404 MANIFEST_UNKNOWN
    ├── ManifestInvalid           400/502 MANIFEST_INVALID
    ├── BlobUnknown               404 BLOB_UNKNOWN
    ├── RangeInvalid              416 (with Content-Range: bytes */size)
    ├── Unsupported               405 UNSUPPORTED    writes, catalog and other methods
    ├── Unauthorized / Denied     401 / 403, relayed from an upstream with its challenge
    ├── TooManyRequests           429 TOOMANYREQUESTS relayed from an upstream
    ├── UpstreamError             502/503/504 the upstream failed, timed out or is unreachable
    └── NoSpace                   503 UNAVAILABLE    no room on this node's disk to cache a blob

Upstream client errors (aiohttp) are translated into UpstreamError at the boundary in
agent/upstream.py; nothing else leaks out of a handler (see agent/server/middleware.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class RegistryError(Exception):
    status = 500
    code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        detail: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.detail = detail

    def body(self) -> bytes:
        err: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return json.dumps({"errors": [err]}).encode()


class NameInvalid(RegistryError):
    status = 400
    code = "NAME_INVALID"


class NameUnknown(RegistryError):
    status = 404
    code = "NAME_UNKNOWN"


class DigestInvalid(RegistryError):
    status = 400
    code = "DIGEST_INVALID"


class ManifestUnknown(RegistryError):
    status = 404
    code = "MANIFEST_UNKNOWN"


class ManifestInvalid(RegistryError):
    status = 400
    code = "MANIFEST_INVALID"


class BlobUnknown(RegistryError):
    status = 404
    code = "BLOB_UNKNOWN"


class RangeInvalid(RegistryError):
    status = 416
    code = "RANGE_INVALID"


class Unsupported(RegistryError):
    status = 405
    code = "UNSUPPORTED"


class Unauthorized(RegistryError):
    status = 401
    code = "UNAUTHORIZED"


class Denied(RegistryError):
    status = 403
    code = "DENIED"


class TooManyRequests(RegistryError):
    status = 429
    code = "TOOMANYREQUESTS"


class UpstreamError(RegistryError):
    """The upstream could not answer: 502 bad answer, 503 unreachable, 504 timed out.

    ``reason`` is one word of ``agent.failures.REASONS``, the label its error counter gets.
    """

    status = 502
    code = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        detail: object = None,
        reason: str = "other",
    ) -> None:
        super().__init__(message, status=status, headers=headers, detail=detail)
        self.reason = reason


class NoSpace(RegistryError):
    """This node's disk cannot take the blob (above its free-space reserve): refused before
    any byte is sent, so the client's runtime can fall back to the registry itself."""

    status = 503
    code = "UNAVAILABLE"


class BlobIntegrityError(Exception):
    """Downloaded bytes do not hash to the digest they were fetched for; never cached."""
