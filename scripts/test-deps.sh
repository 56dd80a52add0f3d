#!/usr/bin/env bash
# Installs, with apt-get, the tools the tests need on a fresh Debian
# machine: `make test` runs it first. As root it installs what is missing;
# otherwise it lists what is missing and how to get it, and the tests that
# need those tools fail saying so.
set -euo pipefail

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)                # cgo for go-nvml
command -v python3 >/dev/null || need+=(python3)                  # demo trainer, metrics helper
command -v git >/dev/null || need+=(git)                          # make lint lists tracked files
command -v protoc >/dev/null || need+=(protobuf-compiler)         # make proto (wants 3.21.12, bookworm's)
command -v chromium >/dev/null || need+=(chromium)                # dashboard browser test (e2e)
command -v ansible-playbook >/dev/null || need+=(ansible-core)    # Ansible rollout test (e2e)
command -v ansible-lint >/dev/null || need+=(ansible-lint)        # lint of deploy/ansible (e2e)
command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)    # one sshd per netns host (e2e)
command -v ssh-keygen >/dev/null || need+=(openssh-client)        # ssh, ssh-keygen (e2e)
command -v ip >/dev/null || need+=(iproute2)                      # network namespaces (e2e)
dpkg -s python3-numpy >/dev/null 2>&1 || need+=(python3-numpy)    # the metrics helper with numpy scalars (e2e)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing ${need[*]}; run 'make test' as root to install them (apt-get), or install them yourself." >&2
  echo "test-deps: the tests that need them will fail saying what they need." >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "test-deps: installing ${need[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
