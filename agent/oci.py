"""OCI distribution vocabulary: names, references, digests, media types and byte ranges."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agent.errors import DigestInvalid, NameInvalid, RangeInvalid
from core.digest import digest_problem

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_NAME = 255

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DEFAULT_ACCEPT = ", ".join(MANIFEST_TYPES)


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}")
    return name


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(raw: str) -> Digest:
    problem = digest_problem(raw)
    if problem is not None:
        raise DigestInvalid(problem)
    algo, _, hexpart = raw.partition(":")
    return Digest(algo, hexpart)


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


def validate_reference(reference: str) -> str | Digest:
    """A manifest reference is a tag or a digest; returns the tag or the parsed digest."""
    if is_digest_reference(reference):
        return parse_digest(reference)
    if not TAG_RE.match(reference):
        raise NameInvalid(f"invalid tag {reference[:200]!r}")
    return reference


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


# 2**63 has 19 digits: larger offsets name no byte of any blob.
_MAX_RANGE_DIGITS = 19
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.ASCII)


def parse_range(header: str | None, size: int | None) -> ByteRange | None:
    """Parse a single-range ``Range`` header against a known or unknown size.

    Returns None when the whole entity should be sent (no header, or a multi-range request,
    which RFC 9110 lets a server answer with the full representation). Raises RangeInvalid
    (416) for a range that cannot be satisfied.
    """
    if not header:
        return None
    if "," in header:
        return None
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeInvalid(f"malformed Range header {header[:100]!r}")
    first, last = m.group(1), m.group(2)
    if len(first) > _MAX_RANGE_DIGITS or len(last) > _MAX_RANGE_DIGITS:
        # No blob is that large; int() of thousands of digits would also raise, not answer.
        raise RangeInvalid("range number out of bounds")
    if not first:
        # Suffix range: the last N bytes.
        suffix = int(last)
        if size is None:
            raise RangeInvalid("suffix range on an entity of unknown size")
        if suffix == 0:
            raise RangeInvalid("empty suffix range")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        raise RangeInvalid(f"range end before start in {header[:100]!r}")
    if size is not None:
        if start >= size:
            raise RangeInvalid(f"range starts at {start}, size is {size}")
        end = size - 1 if end is None else min(end, size - 1)
    elif end is None:
        raise RangeInvalid("open-ended range on an entity of unknown size")
    return ByteRange(start, end)
