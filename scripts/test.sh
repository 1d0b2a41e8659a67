#!/usr/bin/env bash
# The whole test suite in one command, on a machine with only the Rust toolchain:
#
#   scripts/test.sh [ARGS...]
#
# 1. scripts/test-deps.sh: installs every tool of tests/tools.txt that is missing, from
#    package registries only (Debian through apt-get, as root or with sudo; PyPI into the
#    venv target/test-venv; npm into target/test-node), then checks them all. When one
#    cannot be installed it names the tool and how to get it, and this script stops with
#    its non-zero status, before building anything.
# 2. cargo test --workspace ARGS...: every test, with nothing to export (the tests find the
#    tools where step 1 put them). ARGS go to cargo test: a test binary (--test ha), a
#    name filter, or harness flags after `--`.
#
# It runs every test: with any GATEHOUSE_SKIP_* variable set it refuses to start (those
# variables are for running `cargo test` by hand without some tools; see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

skips=$(compgen -e | grep '^GATEHOUSE_SKIP_' || true)
if [ -n "$skips" ]; then
  echo "error: scripts/test.sh runs every test: unset ${skips//$'\n'/ }" \
    "(to skip tests by hand, run cargo test with it set instead)" >&2
  exit 2
fi

printf '==> test tools (tests/tools.txt): scripts/test-deps.sh\n'
bash scripts/test-deps.sh
printf '\n==> cargo test --workspace %s\n' "$*"
exec cargo test --workspace "$@"
