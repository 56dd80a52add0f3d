#!/usr/bin/env bash
# Installs the side-by-side peers of `make bench` from Debian packages when
# they are missing: etcd (3-node Raft key-value store, compared at equal
# batching) and Mosquitto (MQTT broker with a WebSockets listener, compared
# for fan-out). The benchmark is not part of CI; this runs only from
# `make bench`.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v mosquitto >/dev/null 2>&1 && [ -x "$(command -v mosquitto)" ] || need+=(mosquitto)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-peers: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-peers: installing ${need[*]}"
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start their own services on systems with an init; the
# benchmark runs its own instances on other ports, so stop any that started.
for svc in etcd mosquitto; do
  if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
