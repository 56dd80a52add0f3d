#!/usr/bin/env bash
# A stand-in for systemd for the local try-out of deploy/ansible (see
# scripts/ansible-local-inventory.sh): runs each rendered unit's
# ExecStart= as its User=/Group= with its EnvironmentFile=, in the
# background, with a pid file and a log under the host's prefix.
#
#   ansible-local-service.sh start DIR     # every unit under DIR/hosts/*
#   ansible-local-service.sh stop DIR      # SIGTERM to each (jobs keep running, as with KillMode=process)
#   ansible-local-service.sh restart-unit  # gantry_restart_command: GANTRY_PREFIX and GANTRY_UNIT set by the role
set -euo pipefail

# start_unit PREFIX UNIT starts one unit and records its pid.
start_unit() {
  local prefix=$1 unit=$2
  local file="$prefix/etc/systemd/system/$unit"
  mkdir -p "$prefix/run" "$prefix/log"
  # Join the continuation lines, then pick the [Service] settings used.
  local text
  text=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$file")
  local exec user group envfile
  exec=$(sed -n 's/^ExecStart=//p' <<<"$text")
  user=$(sed -n 's/^User=//p' <<<"$text")
  group=$(sed -n 's/^Group=//p' <<<"$text")
  envfile=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' <<<"$text")
  local -a argv
  read -r -a argv <<<"$exec"
  (
    set -a
    # shellcheck disable=SC1090
    [ -n "$envfile" ] && . "$envfile"
    set +a
    exec setsid setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs -- "${argv[@]}" \
      >>"$prefix/log/$unit.log" 2>&1 </dev/null
  ) &
  echo $! >"$prefix/run/$unit.pid"
  echo "started $unit in $prefix (pid $!)"
}

# stop_unit PREFIX UNIT sends SIGTERM and waits up to 30 s for the exit.
stop_unit() {
  local pidfile="$1/run/$2.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
}

case ${1:-} in
start | stop)
  [ $# -eq 2 ] || { echo "usage: $0 $1 DIR" >&2; exit 2; }
  # Controllers first on start (agents find them through serf), last on stop.
  order="gantry-controller.service gantry-agent.service"
  [ "$1" = stop ] && order="gantry-agent.service gantry-controller.service"
  for unit in $order; do
    for prefix in "$2"/hosts/*; do
      [ -f "$prefix/etc/systemd/system/$unit" ] || continue
      if [ "$1" = stop ]; then
        stop_unit "$prefix" "$unit"
      elif ! { [ -f "$prefix/run/$unit.pid" ] && kill -0 "$(cat "$prefix/run/$unit.pid")" 2>/dev/null; }; then
        start_unit "$prefix" "$unit"
      fi
    done
  done
  ;;
restart-unit)
  : "${GANTRY_PREFIX:?set by the role}" "${GANTRY_UNIT:?set by the role}"
  stop_unit "$GANTRY_PREFIX" "$GANTRY_UNIT"
  start_unit "$GANTRY_PREFIX" "$GANTRY_UNIT"
  ;;
*)
  echo "usage: $0 start DIR | stop DIR | restart-unit" >&2
  exit 2
  ;;
esac
