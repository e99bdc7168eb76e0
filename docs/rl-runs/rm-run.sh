#!/bin/bash
# One measured run of a recipe from a snapshot of the branch's HEAD, through the shared heavy queue.
#   docs/rl-runs/rm-run.sh NAME RECIPE [KEY=VALUE ...]     -> /tmp/rmruns/NAME (run dir), NAME.log, NAME.meta
set -u
name=$1; recipe=$2; shift 2
wt=/work/wt/rm
commit=$(git -C $wt rev-parse HEAD)
snap=/tmp/snap-rm-$name
rm -rf $snap && mkdir -p $snap /tmp/rmruns
git -C $wt archive HEAD | tar -x -C $snap
ln -sfn $wt/.venv $snap/.venv
out=/tmp/rmruns/$name
{
  echo "commit $commit"; echo "command: vlaforge train $recipe --run-dir $out $*"
  echo "queued $(date -u +%FT%TZ) $(uptime)"
} > $out.meta
flock /work/wt/heavy.lock bash -c "
  echo \"start \$(date -u +%FT%TZ) \$(uptime)\" >> $out.meta
  cd $snap && PYTHONPATH=$snap nice -n 5 .venv/bin/vlaforge train $recipe --run-dir $out $* > $out.log 2>&1
  echo \"exit \$? end \$(date -u +%FT%TZ) \$(uptime)\" >> $out.meta
"
