#!/usr/bin/env bash
# Writes an Ansible inventory for trying deploy/ansible on this one
# machine: three controllers and two GPU hosts that are only directories
# (gantry_prefix) with their own loopback addresses (127.0.0.11-13 and
# 127.0.0.21-22, which Linux routes to lo without any setup), reached
# with the local connection, agents with mock GPUs, no systemd.
#
#   scripts/ansible-local-inventory.sh [DIR]     # default /tmp/gantry-local
#
# It prints the commands that deploy, start, use, upgrade and stop that
# cluster; scripts/ansible-local-service.sh stands in for systemd.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/tmp/gantry-local}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

{
  echo "# Made by scripts/ansible-local-inventory.sh: every host is a directory"
  echo "# under $dir/hosts on this machine."
  echo "[controllers]"
  for i in 1 2 3; do
    echo "ctl-$i ansible_host=127.0.0.1$i gantry_prefix=$dir/hosts/ctl-$i"
  done
  echo
  echo "[gpu_hosts]"
  for i in 1 2; do
    echo "gpu-$i ansible_host=127.0.0.2$i gantry_prefix=$dir/hosts/gpu-$i"
  done
  echo
  echo "[all:vars]"
  echo "ansible_connection=local"
  echo "ansible_python_interpreter=\"{{ ansible_playbook_python }}\""
  echo "gantry_binary_dir=$root/bin"
  echo "gantry_manage_service=False"
  echo "gantry_restart_command='$root/scripts/ansible-local-service.sh restart-unit'"
  echo "gantry_agent_fake_gpus=2"
} >"$dir/inventory.ini"

cat <<EOF
Wrote $dir/inventory.ini. As root (the roles create the gantry user and
chown files; -f 1 because the five "hosts" share one /etc/passwd):

  make build
  ansible-playbook -f 1 -i $dir/inventory.ini deploy/ansible/site.yml
  scripts/ansible-local-service.sh start $dir
  GANTRY_ADDR=http://127.0.0.11:7480 GANTRY_TOKEN=\$(cat $dir/.gantry-secrets/api.token) bin/gantry nodes
  make build    # after a change, then roll it out one host at a time:
  ansible-playbook -i $dir/inventory.ini deploy/ansible/upgrade.yml
  scripts/ansible-local-service.sh stop $dir
EOF
