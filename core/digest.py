"""The one digest rule, shared by the agent's registry API and the tracker's.

The OCI image spec's grammar (``algorithm:encoded``) with its registered algorithms only:
``sha256`` and ``sha512``, lowercase hex of their exact length. An algorithm the grammar
allows but the spec does not register is refused: nothing in the fleet could verify it, so
no agent may cache, serve or announce such a blob.
"""

from __future__ import annotations

import re

# Registered algorithms and the length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

_GRAMMAR = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_LOWER_HEX = re.compile(r"^[a-f0-9]+$")


def digest_problem(raw: str) -> str | None:
    """Why ``raw`` is not a digest this fleet accepts (one line, for an error body), or None."""
    m = _GRAMMAR.match(raw)
    if not m:
        return f"invalid digest {raw[:200]!r}"
    algo, encoded = m.group(1), m.group(2)
    want = ALGORITHMS.get(algo)
    if want is None:
        return f"unsupported digest algorithm {algo!r}"
    if len(encoded) != want or not _LOWER_HEX.match(encoded):
        return f"invalid {algo} digest {raw[:200]!r}"
    return None


def valid_digest(raw: str) -> bool:
    return digest_problem(raw) is None
