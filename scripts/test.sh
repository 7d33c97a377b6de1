#!/usr/bin/env bash
# The full test suite: set-up, lint (ruff + mypy), then every test, unit and integration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/lint.sh
exec .venv/bin/python -m pytest "$@"
