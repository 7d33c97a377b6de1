#!/usr/bin/env bash
# Installs everything layerswarm and its test suite need on Debian 12, idempotently:
# the Debian packages for the real parts the tests drive, and a virtualenv at .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: only for promtool, which checks deploy/prometheus; its service is disabled below.
# docker.io: dockerd and the docker CLI for tests/runtime, which start their own daemon (own
# socket and data root); the packaged service is disabled below like prometheus's.
# chromium: headless, for tests/tracker/test_page.py (the fleet page in a real browser).
DEBS=(python3 python3-venv python3-pip docker-registry skopeo umoci podman containerd
      redis-server iproute2 iperf3 systemd prometheus make git ca-certificates
      wrk docker.io chromium strace)  # wrk: load generator for bench/tracker_load.py; docker.io: tests/runtime
# strace: tests/agent/test_durable_writes.py watches the agent's fsyncs and renames.
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # On a host booted with systemd the package starts a Prometheus server; we need none.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service || true
  fi
  if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now docker.service docker.socket || true
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.layerswarm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
