#!/bin/bash
# The rm runs back to back in one hold of the shared heavy queue (deadline 12:00): the branch's HEAD is
# snapshotted when the lock is acquired; each run's command, commit, start/end and load go to NAME.meta; a
# run that would not end by 11:55 UTC (estimated minutes below) is skipped, and says so.
#   docs/rl-runs/rm-chain.sh      -> /tmp/rmruns/{rm-s0,rm-s1,rloo-s0}
mkdir -p /tmp/rmruns
exec flock /work/wt/heavy.lock bash -c '
  wt=/work/wt/rm
  commit=$(git -C $wt rev-parse HEAD)
  snap=/tmp/snap-rm-chain
  rm -rf $snap && mkdir -p $snap && git -C $wt archive HEAD | tar -x -C $snap && ln -sfn $wt/.venv $snap/.venv
  cd $snap && export PYTHONPATH=$snap
  stop=$(date -u -d "11:55" +%s)
  run() {
    name=$1; minutes=$2; shift 2
    out=/tmp/rmruns/$name
    if [ $(( $(date -u +%s) + minutes * 60 )) -gt $stop ]; then echo "skipped $(date -u +%FT%TZ): would not end by 11:55" > $out.meta; return; fi
    rm -rf $out
    { echo "commit $commit"; echo "command: vlaforge train $* --run-dir $out"; echo "start $(date -u +%FT%TZ) $(uptime)"; } > $out.meta
    nice -n 5 .venv/bin/vlaforge train "$@" --run-dir $out > $out.log 2>&1
    echo "exit $? end $(date -u +%FT%TZ) $(uptime)" >> $out.meta
  }
  run rm-s0 16 configs/ppo_metaworld_rm.yaml seed=0 train.seed=0
  run rm-s1 16 configs/ppo_metaworld_rm.yaml seed=1 train.seed=1
  run rloo-s0 14 configs/rloo_metaworld.yaml seed=0 train.seed=0
'
