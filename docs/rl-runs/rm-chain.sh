#!/bin/bash
# The rm runs back to back in one hold of the shared heavy queue (deadline 12:00): the branch's HEAD is
# snapshotted when the lock is acquired; each run's command, commit, start/end and load go to NAME.meta.
#   docs/rl-runs/rm-chain.sh      -> /tmp/rmruns/{rm-s0,rm-s1,rloo-s0}
set -u
wt=/work/wt/rm
mkdir -p /tmp/rmruns
exec flock /work/wt/heavy.lock bash -c '
  wt=/work/wt/rm
  commit=$(git -C $wt rev-parse HEAD)
  snap=/tmp/snap-rm-chain
  rm -rf $snap && mkdir -p $snap && git -C $wt archive HEAD | tar -x -C $snap && ln -sfn $wt/.venv $snap/.venv
  cd $snap && export PYTHONPATH=$snap
  run() {
    name=$1; shift
    out=/tmp/rmruns/$name
    rm -rf $out
    { echo "commit $commit"; echo "command: vlaforge train $* --run-dir $out"; echo "start $(date -u +%FT%TZ) $(uptime)"; } > $out.meta
    nice -n 5 .venv/bin/vlaforge train "$@" --run-dir $out > $out.log 2>&1
    echo "exit $? end $(date -u +%FT%TZ) $(uptime)" >> $out.meta
  }
  run rm-s0 configs/ppo_metaworld_rm.yaml seed=0 train.seed=0
  run rm-s1 configs/ppo_metaworld_rm.yaml seed=1 train.seed=1
  run rloo-s0 configs/rloo_metaworld.yaml seed=0 train.seed=0
'
