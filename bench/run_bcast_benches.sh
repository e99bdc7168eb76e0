#!/usr/bin/env bash
# The issue-11 broadcast / rollout / RL-iteration / scaling benches back to back (one heavy-queue slot).
#   flock /work/wt/heavy.lock nice -n 5 bash bench/run_bcast_benches.sh bench/results [deadline-epoch-s]
# A bench whose rough duration would pass the deadline (if given) is skipped and says so.
set -u
out=${1:-bench/results}
deadline=${2:-0}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
run() { local name=$1 minutes=$2; shift 2
        if [ "$deadline" -gt 0 ] && [ $(( $(date -u +%s) + minutes * 60 )) -gt "$deadline" ]; then
          echo "[$(date -u +%H:%M:%S)] $name skipped: ~$minutes min would pass the deadline" >&2; return; fi
        echo "[$(date -u +%H:%M:%S)] $name start, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        "$py" "$@" > "$out/$name.json" 2> "$out/$name.log"
        echo "[$(date -u +%H:%M:%S)] $name rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
run broadcast 5 bench/broadcast.py --no-pickle
run rl_iteration 8 bench/rl_iteration.py
run rollout 10 bench/rollout.py --actors 1 2
run scaling 7 bench/scaling.py
run rl_iteration_plain 4 bench/rl_iteration.py --render-backend plain --no-rllib
