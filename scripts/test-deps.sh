#!/usr/bin/env bash
# Installs what the integration tests use besides the Rust toolchain, from package
# registries only:
#   - Debian: etcd-server, etcd-client (the state store and HA tests run a real etcd),
#     prometheus (promtool checks the /metrics output), python3-venv;
#   - PyPI, into target/test-venv: oteltest (a real OTLP/gRPC receiver for the trace
#     tests) and prometheus-client (its OpenMetrics parser), pinned in
#     tests/requirements.txt.
# Idempotent; needs root (or sudo) only for what is missing from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
[ -x /usr/bin/etcdctl ] || missing+=(etcd-client)
command -v promtool >/dev/null || missing+=(prometheus)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  # --no-install-recommends: prometheus is wanted for promtool only.
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

venv=target/test-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
"$venv/bin/python" -c 'import oteltest.sink, prometheus_client.openmetrics.parser'
echo "test dependencies ready (venv: $venv)"
