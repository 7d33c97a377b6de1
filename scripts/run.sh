#!/usr/bin/env bash
# Set-up, then one agent with the embedded tracker, mirroring Docker Hub by default.
# Extra arguments go to `layerswarm agent` (see docs/configuration.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/layerswarm agent "$@"
