#!/usr/bin/env bash
# Run a vlaforge recipe on a SLURM allocation: one Ray head + one Ray worker per further node, token auth on.
#
#   sbatch --nodes=4 cluster/slurm.sh configs/bc_metaworld_mt10.yaml train.num_learners=8
#   bash cluster/slurm.sh --dry-run configs/quickstart.yaml      # print every command, run nothing
#
# Needs: the repository on a shared file system with `bash scripts/setup.sh` run once (every node uses
# the same .venv), runs/ on the shared file system (checkpoints are written from several nodes).
# The dry run works without SLURM: VLAFORGE_NODES="n1 n2" names the nodes, SLURM_JOB_ID the job.
#SBATCH --job-name=vlaforge
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
recipe=${1:?usage: sbatch cluster/slurm.sh [--dry-run] RECIPE [KEY=VALUE ...]}
shift
root=${VLAFORGE_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}
job=${SLURM_JOB_ID:-dryrun}
cpus=${SLURM_CPUS_PER_TASK:-16}
port=${VLAFORGE_RAY_PORT:-6379}
dash_port=${VLAFORGE_DASHBOARD_PORT:-8265}
run_dir=${VLAFORGE_RUN_DIR:-$root/runs/slurm-$job}
ray="$root/.venv/bin/ray"
vlaforge="$root/.venv/bin/vlaforge"

# run CMD...: print it (dry run) or run it; bg CMD...: the same, in the background
run() { if [ $dry = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }
bg() { if [ $dry = 1 ]; then printf '%q ' "$@"; echo '&'; else "$@" & fi; }
# wait (at most 120 s) until HOST:PORT accepts connections: the head is up before workers join
wait_port() {
  if [ $dry = 1 ]; then echo "wait_port $1 $2  # up to 120 s"; return; fi
  for _ in $(seq 120); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 1; done
  echo "Ray head $1:$2 did not come up within 120 s" >&2; return 1
}

if [ -n "${VLAFORGE_NODES:-}" ]; then
  read -r -a nodes <<< "$VLAFORGE_NODES"
else
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
fi
head=${nodes[0]}
if [ $dry = 1 ]; then
  echo "# nodes: ${nodes[*]}"
  head_ip="<ip of $head>"
else
  head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
fi

# One token per job, readable only by the user, on the shared file system: every node and the driver
# read it through RAY_AUTH_TOKEN_PATH (Ray 2.60 token authentication stays on).
token_file="$root/runs/.ray-token-$job"
run mkdir -p "$root/runs"
run bash -c "umask 077 && $root/.venv/bin/python -c 'import secrets; print(secrets.token_hex(32))' > $token_file"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
# on exit (success, failure or scancel): stop this job's Ray processes (the sruns) and drop the token
if [ $dry = 0 ]; then trap 'kill $(jobs -p) 2>/dev/null; rm -f "$token_file"' EXIT; fi

# head: GCS on the cluster network (workers must reach it), dashboard on its loopback only
bg srun --nodes=1 --ntasks=1 -w "$head" --export=ALL "$ray" start --head --block \
  --node-ip-address="$head_ip" --port="$port" --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
  --num-cpus="$cpus" --disable-usage-stats
wait_port "$head_ip" "$port"
for node in "${nodes[@]:1}"; do
  bg srun --nodes=1 --ntasks=1 -w "$node" --export=ALL "$ray" start --block --address="$head_ip:$port" \
    --num-cpus="$cpus" --disable-usage-stats
done
# the driver runs here (on the head node, inside the allocation) and joins the cluster
run env RAY_ADDRESS="$head_ip:$port" "$vlaforge" train "$recipe" "$@" ray.address=auto --run-dir "$run_dir"
if [ $dry = 1 ]; then echo "# on exit: kill the sruns above; rm -f $token_file"; fi
