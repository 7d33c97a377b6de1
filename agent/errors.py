"""Every error the agent turns into an HTTP answer, and the one place that does it.

Hierarchy::

    RegistryError                 an OCI error body with a status; raised anywhere, rendered once
    ├── NameInvalid               400 NAME_INVALID   bad repository name or ?ns= value
    ├── NameUnknown               404 NAME_UNKNOWN   repository (or registry) not served here
    ├── DigestInvalid             400 DIGEST_INVALID bad digest, or content that does not match it
    ├── ManifestInvalid           400/502 MANIFEST_INVALID
    ├── BlobUnknown               404 BLOB_UNKNOWN   (BlobNotVouched, agent/access.py)
    ├── RangeInvalid              416 (with Content-Range: bytes */size)
    ├── Unsupported               405 UNSUPPORTED    writes, catalog and other methods
    ├── Unauthorized              401 UNAUTHORIZED   a challenge of the mirror's own
    ├── RelayedError              an upstream's own 401/403/404/429, in agent/upstream.py
    ├── UpstreamError             502/503/504 the upstream failed, timed out or is unreachable
    └── NoSpace                   503 UNAVAILABLE    no room on this node's disk to cache a blob

Upstream client errors (aiohttp) are translated into UpstreamError at the boundary in
agent/upstream.py; nothing else leaks out of a handler (see agent/server/middleware.py).
An answer known only by its status (an upstream's relayed without a body of its own,
aiohttp's own) gets its OCI code from ``oci_code``, the one table of them.
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

    def body(self, kind: str = "") -> bytes:
        """The OCI error body; ``kind`` (manifest, blob...) is the request's, for an error
        whose code depends on what was asked (``code`` empty)."""
        code = self.code or oci_code(self.status, kind)
        err: dict[str, object] = {"code": code, "message": self.message}
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


# Codes of the OCI distribution spec for answers known only by their status; a 404 names
# what is unknown by the kind of request.
_CODE_BY_STATUS = {
    401: Unauthorized.code,
    403: "DENIED",
    404: NameUnknown.code,
    405: Unsupported.code,
    413: "SIZE_INVALID",
    429: "TOOMANYREQUESTS",
}
_UNKNOWN_BY_KIND = {"manifest": "MANIFEST_UNKNOWN", "blob": BlobUnknown.code}


def oci_code(status: int, kind: str = "") -> str:
    """The OCI error code for an answer known only by its ``status``, to a request of
    ``kind``; statuses the spec has no code for get distribution's ``UNKNOWN``."""
    if status == 404:
        return _UNKNOWN_BY_KIND.get(kind, NameUnknown.code)
    return _CODE_BY_STATUS.get(status, RegistryError.code)
