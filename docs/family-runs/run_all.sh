#!/usr/bin/env bash
# The family table's runs: 4 heads x 2 seeds, ONE at a time, niced. Each result is committed as it comes.
#   nohup docs/family-runs/run_all.sh > docs/family-runs/run_all.log 2>&1 &
set -u
cd /work/wt/heads
# Runs import a frozen copy of the code at the current commit (edits to the worktree during the ~80 min of
# runs must not reach a run's Ray workers half-way through).
COMMIT=$(git rev-parse --short HEAD)
SNAP=/tmp/heads/snap-$COMMIT
mkdir -p $SNAP && git archive HEAD vlaforge configs | tar -x -C $SNAP
export PYTHONPATH=$SNAP
# Ray puts the driver's working directory first on its workers' sys.path: run from the snapshot too (a run
# started from the worktree had its eval workers import a later merge and fail to load its checkpoint).
ORDER=${ORDER:-"gaussian:0 tokens:0 diffusion:0 flow:0 gaussian:1 tokens:1 diffusion:1 flow:1"}
for item in $ORDER; do
  head=${item%%:*}; seed=${item##*:}
  run=/work/wt/heads/runs/family-$head-s$seed
  [ -f docs/family-runs/$head-s$seed.json ] && continue
  cmd="nice -n 10 /work/wt/heads/.venv/bin/vlaforge train $SNAP/configs/family.yaml policy.head.type=$head seed=$seed train.seed=$seed --run-dir $run"
  echo "$(date -u +%FT%TZ) start $head seed $seed: $cmd"
  start=$(date +%s)
  (cd $SNAP && $cmd) > /tmp/heads/family-$head-s$seed.log 2>&1
  rc=$?
  wall=$(( $(date +%s) - start ))
  echo "$(date -u +%FT%TZ) end $head seed $seed rc=$rc wall=${wall}s"
  tail -n 25 /tmp/heads/family-$head-s$seed.log > docs/family-runs/$head-s$seed.tail.txt
  if [ $rc -eq 0 ]; then
    .venv/bin/python docs/family-runs/summarize.py $run $head $seed \
      | .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); d['wall_s']=$wall; d['command']='$cmd'; d['commit']='$COMMIT'; print(json.dumps(d, indent=1))" \
      > docs/family-runs/$head-s$seed.json
  fi
  for i in 1 2 3 4 5; do
    git add docs/family-runs && git commit -qm "family table: $head seed $seed (rc=$rc, ${wall}s)" -- docs/family-runs && break
    sleep 5
  done
done
echo "$(date -u +%FT%TZ) all done"
