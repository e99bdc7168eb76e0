#!/usr/bin/env bash
# Start Ray inside a SLURM allocation and run a recipe:  sbatch cluster/slurm.sh configs/bc_metaworld_mt10.yaml
# Not exercised on the project machine (no SLURM there).
#SBATCH --job-name=vlaforge
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail
recipe=${1:?usage: sbatch cluster/slurm.sh RECIPE [overrides...]}; shift
source .venv/bin/activate
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
srun --nodes=1 --ntasks=1 -w "$head" ray start --head --node-ip-address="$head_ip" --port=6379 \
  --dashboard-host=127.0.0.1 --num-cpus="$SLURM_CPUS_PER_TASK" --block &
sleep 10
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$head_ip:6379" --num-cpus="$SLURM_CPUS_PER_TASK" --block &
done
sleep 10
vlaforge train "$recipe" ray.address=auto "$@" --run-dir "runs/slurm-$SLURM_JOB_ID"
