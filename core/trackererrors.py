"""Every exception the tracker raises, in one place.

    TrackerError                  base of everything below
    ├── InvalidRequest            malformed input: bad JSON, digest, field or size (HTTP 400)
    ├── Unauthorized              missing or wrong fleet token (HTTP 401)
    ├── Forbidden                 the agent id is alive under another agent key (HTTP 403)
    ├── NotFound                  no such preheat job or metainfo (HTTP 404)
    │   └── UnknownAgent          the agent never registered or has expired: heartbeat first
    ├── Conflict                  metainfo that contradicts what was already published (HTTP 409)
    ├── StoreUnavailable          the backing store (Redis) did not answer (HTTP 503)
    └── TrackerUnavailable        client side: no tracker replica answered in time

The HTTP server maps these to JSON error bodies in exactly one place (tracker/server/errors.py);
the HTTP client maps status codes back to the same classes, so code using a ``TrackerClient``
sees the same exceptions whether the tracker is embedded or remote.
"""

from __future__ import annotations


class TrackerError(Exception):
    """Base class; ``status`` is the HTTP status the server answers with."""

    status = 500


class InvalidRequest(TrackerError):
    status = 400


class Unauthorized(TrackerError):
    status = 401


class Forbidden(TrackerError):
    status = 403


class NotFound(TrackerError):
    status = 404


class UnknownAgent(NotFound):
    pass


class Conflict(TrackerError):
    status = 409


class StoreUnavailable(TrackerError):
    status = 503


class TrackerUnavailable(TrackerError):
    status = 503
