#!/usr/bin/env bash
# Runs the README's two commands, `make demo` and `make test`, on a fresh
# Debian 12 root file system made with debootstrap: what a new user's
# machine has is Debian itself plus what the README asks for (Go, gcc,
# python3, make, git). Everything else must come from `make test`
# installing it. Needs root; takes a clone of this repository's HEAD.
#
#   sudo scripts/fresh-debian-check.sh            # rootfs in /var/tmp/gantry-fresh-bookworm
#   FRESH_ROOT=/somewhere KEEP_ROOT=1 sudo ...    # keep the rootfs afterwards
#
# The Debian mirror is the one this host's apt uses, and the chroot's apt
# gets the host's sources, so the check runs wherever apt does.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${FRESH_ROOT:-/var/tmp/gantry-fresh-bookworm}"

if [ "$(id -u)" != 0 ]; then
  echo "fresh-debian-check: needs root (debootstrap, chroot, mounts)" >&2
  exit 2
fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
goroot="$(go env GOROOT 2>/dev/null || true)"
if [ -z "$goroot" ] || [ ! -x "$goroot/bin/go" ]; then
  echo "fresh-debian-check: needs Go on PATH (it is copied into the rootfs, as a user would install it)" >&2
  exit 2
fi

mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)"
  fi
  echo "$m"
}

start=$(date +%s)
if [ ! -x "$root/usr/bin/apt-get" ]; then
  echo "==> debootstrap bookworm into $root"
  debootstrap --variant=minbase bookworm "$root" "$(mirror)" >/dev/null
fi
echo "==> rootfs ready after $(( $(date +%s) - start ))s"

# The host's apt sources (same mirror), resolver and Go toolchain.
rm -f "$root/etc/apt/sources.list"
mkdir -p "$root/etc/apt/sources.list.d"
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2>/dev/null ||
  cp /etc/apt/sources.list "$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Local CAs the host trusts (a proxy on the way to the Go module proxy,
# say) are part of the network the machine sits on, not of Gantry.
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
rm -rf "$root/usr/local/go"
cp -a "$goroot" "$root/usr/local/go"
rm -rf "$root/root/gantry"
git clone -q "$repo" "$root/root/gantry"

mounts=("" proc sys dev dev/pts run)
cleanup() {
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "$root/${mounts[$i]}" 2>/dev/null || true; done
  if [ -z "${KEEP_ROOT:-}" ]; then rm -rf "$root"; fi
}
trap cleanup EXIT
# The rootfs bound onto itself: inside the chroot "/" is then a mount
# point, as on a real machine (ip netns makes it a slave mount).
mount --bind "$root" "$root"
mount --make-private "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts" 2>/dev/null || true
mount -t tmpfs tmpfs "$root/run"

chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/usr/local/go/bin:/root/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  GOPROXY="$(go env GOPROXY)" /bin/bash -euo pipefail -c '
    export DEBIAN_FRONTEND=noninteractive
    echo "==> the README prerequisites: make, gcc, git, python3"
    t=$(date +%s)
    apt-get update -qq && apt-get install -y -qq make gcc libc6-dev git python3 ca-certificates >/dev/null
    update-ca-certificates >/dev/null
    echo "    $(( $(date +%s) - t ))s"
    cd /root/gantry
    echo "==> make demo"
    t=$(date +%s)
    DEMO_STEPS=60 make demo
    echo "==> make demo took $(( $(date +%s) - t ))s"
    echo "==> make test"
    t=$(date +%s)
    make test
    echo "==> make test took $(( $(date +%s) - t ))s"
  '
echo "==> fresh Debian check passed in $(( $(date +%s) - start ))s"
