from __future__ import annotations

import pytest

from agent.errors import DigestInvalid, NameInvalid, RangeInvalid
from agent.oci import ByteRange, parse_digest, parse_range, validate_name, validate_reference

HEX = "a" * 64


@pytest.mark.parametrize("name", ["alpine", "library/alpine", "a/b/c", "my-org/my_app.v2", "a__b"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "UPPER", "a//b", "../etc", "a/../b", "-a", "a-", "a" * 256, "a/b/"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)


def test_digests() -> None:
    d = parse_digest(f"sha256:{HEX}")
    assert (d.algorithm, d.hex, str(d)) == ("sha256", HEX, f"sha256:{HEX}")
    for bad in [f"sha256:{HEX[:-1]}", f"sha256:{HEX.upper()}", f"md5:{HEX}", "sha256:../../x", "x"]:
        with pytest.raises(DigestInvalid):
            parse_digest(bad)


def test_references() -> None:
    assert validate_reference("v1.2_3-rc") == "v1.2_3-rc"
    with pytest.raises(NameInvalid):
        validate_reference(".hidden")
    with pytest.raises(DigestInvalid):
        validate_reference("sha256:nothex")


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-", 100, ByteRange(90, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=95-200", 100, ByteRange(95, 99)),
        ("bytes=0-1,5-6", 100, None),
        ("bytes=-500", 100, ByteRange(0, 99)),
        ("bytes=3-7", None, ByteRange(3, 7)),
    ],
)
def test_ranges(header: str | None, size: int | None, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=5-2", 100),
        ("items=0-1", 100),
        ("bytes=-0", 100),
        ("bytes=-", 100),
        ("bytes=3-", None),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int | None) -> None:
    with pytest.raises(RangeInvalid):
        parse_range(header, size)
