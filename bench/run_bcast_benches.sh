#!/usr/bin/env bash
# The issue-11 broadcast / rollout / RL-iteration / scaling benches back to back (one heavy-queue slot).
#   flock /work/wt/heavy.lock nice -n 5 bash bench/run_bcast_benches.sh bench/results
set -u
out=${1:-bench/results}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
run() { local name=$1; shift; echo "[$(date -u +%H:%M:%S)] $name start, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        "$py" "$@" > "$out/$name.json" 2> "$out/$name.log"; echo "[$(date -u +%H:%M:%S)] $name rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
run broadcast bench/broadcast.py --no-pickle
run scaling bench/scaling.py
run rl_iteration bench/rl_iteration.py
run rl_iteration_warp bench/rl_iteration.py --render-backend warp --no-rllib
run rollout_warp bench/rollout.py --render-backend warp --actors 1 2
