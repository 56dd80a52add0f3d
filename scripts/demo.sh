#!/usr/bin/env bash
# make demo: a dev-mode controller with a local agent and mock GPUs, one
# demo training run submitted with `gantry run` and watched live, its final
# metrics printed, then everything stopped.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/bin"
port="${GANTRY_DEMO_PORT:-7480}"
steps="${DEMO_STEPS:-300}"
addr="http://127.0.0.1:$port"
data="$(mktemp -d "${TMPDIR:-/tmp}/gantry-demo.XXXXXX")"
ctl_pid=""

cleanup() {
  if [ -n "$ctl_pid" ] && kill -0 "$ctl_pid" 2>/dev/null; then
    kill -TERM "$ctl_pid" 2>/dev/null || true
    wait "$ctl_pid" 2>/dev/null || true
  fi
  echo "demo stopped; controller log and state kept in $data"
}
trap cleanup EXIT

command -v python3 >/dev/null || { echo "the demo trainer needs python3" >&2; exit 1; }

echo "==> starting dev controller + local agent with 2 mock GPUs ($addr, state in $data)"
"$bin/gantry-controller" -dev -data-dir "$data" -http-addr "127.0.0.1:$port" \
  -quic-addr 127.0.0.1:0 -raft-addr 127.0.0.1:0 -fake-gpus 2 >"$data/controller.log" 2>&1 &
ctl_pid=$!

export GANTRY_ADDR="$addr"
for _ in $(seq 1 100); do
  if ! kill -0 "$ctl_pid" 2>/dev/null; then
    echo "controller exited; its log:" >&2; cat "$data/controller.log" >&2; exit 1
  fi
  if "$bin/gantry" nodes 2>/dev/null | grep -q " up"; then break; fi
  sleep 0.1
done
"$bin/gantry" nodes

# The demo is a project directory as it would be on a laptop: the trainer
# and its spec side by side. `gantry run` ships the directory to the GPU
# host (here the local agent), which unpacks it as the job's user, so the
# spec runs `python3 train.py` from the job's own copy. (gantry_metrics
# needs no copy either: the agent puts it on the job's PYTHONPATH.)
project="$data/project"
mkdir -p "$project"
cp "$repo/scripts/demo/train.py" "$project/train.py"
cat >"$project/demo-job.yaml" <<YAML
name: demo-train
run: python3 train.py --steps $steps
resources:
  gpus: 1
kill_grace: 10s
YAML

echo "==> gantry run $project/demo-job.yaml"
set +e
"$bin/gantry" run "$project/demo-job.yaml"
rc=$?
set -e
echo
echo "==> jobs on this controller (API at $addr):"
"$bin/gantry" ps
echo
echo "To keep a controller running and explore the API yourself:"
echo "  $bin/gantry-controller -dev -data-dir $data -fake-gpus 2 -http-addr 127.0.0.1:$port &"
echo "  export GANTRY_ADDR=$addr"
echo "  $bin/gantry ps; $bin/gantry status <id>; curl $addr/v1/nodes"
exit $rc
