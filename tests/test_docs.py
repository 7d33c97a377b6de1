"""Documentation that is generated must match its generator."""

from __future__ import annotations

from pathlib import Path

from layerswarm.docgen import render

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_page_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "run `make docs` (python -m layerswarm.docgen) and commit"


def test_configuration_page_lists_the_contract_flags() -> None:
    page = render()
    for flag in (
        "--listen",
        "--data-dir",
        "--upstream",
        "--default-upstream",
        "--cache-size",
        "--tracker",
        "--tracker-token-file",
        "--zone",
        "--region",
        "--role",
        "--peer-listen",
        "--advertise-address",
    ):
        assert f"`{flag} " in page or f"`{flag}`" in page, flag
