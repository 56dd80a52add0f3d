#!/usr/bin/env bash
# What the tests need on a Debian machine, checked before any test runs
# (`make test` and .ci/run run this first), so that a missing tool stops
# the run at its start, saying what to install, never halfway through.
#
#   scripts/test-deps.sh          as root: install what is missing with
#                                 apt-get; as anyone else: like --check
#   scripts/test-deps.sh --check  install nothing: list what is missing, with
#                                 the apt-get line that installs it
#
# Exits 1 when something required is still missing. Optional packages only
# turn some tests into skips that say so (strace: a benchmark store test;
# protoc: make proto); their absence is reported but does not stop the run.
set -euo pipefail

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

required=() # Debian packages
optional=()
why=()      # one line per missing package, for the report
go_missing=""

has() { command -v "$1" >/dev/null 2>&1; }

# Python modules are looked for where the tests look (python/python_test.go,
# e2e/metrics_helper_test.go): python3 on PATH, then Debian's
# /usr/bin/python3, where apt's python3-* packages go.
pyhas() {
  local py
  for py in python3 /usr/bin/python3; do
    has "$py" && "$py" -c "import $1" >/dev/null 2>&1 && return 0
  done
  return 1
}

# need KIND PACKAGE WHY: PACKAGE is missing; KIND is required or optional.
need() {
  local p
  if [ "$1" = required ]; then
    for p in "${required[@]}"; do [ "$p" = "$2" ] && return; done
    required+=("$2")
    why+=("  $2: $3")
  else
    optional+=("$2")
    why+=("  $2 (optional): $3")
  fi
}

scan() {
  required=() optional=() why=() go_missing=""
  # Go is not apt's: Debian's golang is older than go.mod's.
  has go || go_missing="Go $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod") or later, from https://go.dev/dl/ (then put its bin/ on PATH)"
  has gcc || need required gcc "cgo, which the race detector and go-nvml need"
  has gcc || need required libc6-dev "C headers for cgo"
  has git || need required git "make lint lists the tracked files"
  has python3 || need required python3 "the demo trainer and the metrics helper's tests"
  pyhas numpy || need required python3-numpy "the metrics helper with numpy values (python/, e2e)"
  # setuptools before pip: imported after pip, Debian's setuptools trips
  # over the distutils pip loaded.
  pyhas setuptools || need required python3-setuptools "pip install ./python (python/python_test.go)"
  pyhas wheel || need required python3-wheel "setuptools before 70 builds wheels with it (pip install ./python)"
  pyhas pip || need required python3-pip "pip install ./python (python/python_test.go)"
  has /usr/bin/chromium || need required chromium "the dashboard browser test (e2e)"
  has ansible-playbook || need required ansible-core "the Ansible rollout test (e2e)"
  has ansible-lint || need required ansible-lint "lint of deploy/ansible (e2e)"
  { has prometheus && has promtool; } || need required prometheus "prometheus and promtool: the fleet metrics test scrapes a controller and runs the Grafana dashboard's queries (e2e)"
  has /usr/sbin/sshd || need required openssh-server "one sshd per netns host (e2e)"
  { has ssh && has ssh-keygen; } || need required openssh-client "ssh and ssh-keygen (e2e)"
  has setpriv || need required util-linux "setpriv (the rollout test)"
  has ip || need required iproute2 "network namespaces (e2e)"
  pyhas torch || need required python3-torch "torchrun for the multi-node e2e tests, and the torch tests of python/"
  has strace || need optional strace "bench/logstore's fsync count (skipped without it)"
  # Only .ci/run needs protoc (make proto); make test does not.
  has protoc || need optional protobuf-compiler "make proto, which .ci/run runs (wants 3.21.12, bookworm's)"
}

report() {
  if [ -n "$go_missing" ]; then
    echo "test-deps: missing go: install $go_missing" >&2
  fi
  if [ ${#why[@]} -gt 0 ]; then
    echo "test-deps: missing Debian packages:" >&2
    printf '%s\n' "${why[@]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo "
    echo "test-deps: install them with:" >&2
    echo "  ${sudo}apt-get install -y --no-install-recommends ${required[*]} ${optional[*]}" >&2
    echo "  (or, as root: make test-deps)" >&2
  fi
}

# done_or_fail: exit 1 when something required is missing, else 0.
done_or_fail() {
  if [ -n "$go_missing" ] || [ ${#required[@]} -gt 0 ]; then
    echo "test-deps: not running the tests: required tools are missing (above)." >&2
    exit 1
  fi
  exit 0
}

scan
if [ ${#why[@]} -eq 0 ] && [ -z "$go_missing" ]; then
  exit 0
fi
if [ "$check_only" = 1 ] || [ "$(id -u)" -ne 0 ] || ! has apt-get || [ ${#why[@]} -eq 0 ]; then
  report
  done_or_fail
fi

export DEBIAN_FRONTEND=noninteractive
echo "test-deps: installing ${required[*]} ${optional[*]}"
# A failing apt-get does not end the script: the check below reports what
# is still missing, in the same words as ever.
apt-get update -qq || echo "test-deps: apt-get update failed" >&2
if [ ${#required[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${required[@]}" || echo "test-deps: apt-get install failed" >&2
fi
# One by one: an optional package this release lacks must not stop the rest.
for p in "${optional[@]}"; do
  apt-get install -y -qq --no-install-recommends "$p" || echo "test-deps: could not install optional $p" >&2
done
scan
report
done_or_fail
