#!/usr/bin/env bash
# Issue 7 pilot: N = 5 labelled demos per task, 1 seed, arms (a) BC, (b) lam + latent_pretrain + BC,
# (c) visual_ssl + BC on configs/latent_metaworld.yaml (5 tasks, 100 unlabeled noisy-expert episodes per task),
# then the codes -> true actions linear probe of arm (b)'s LAM. Cheap budgets: 500 steps per stage, 10 eval
# episodes per task. Run it from a snapshot, in the heavy-job queue:
#   git archive HEAD | tar -x -C /tmp/snap-video-1
#   cd /tmp/snap-video-1 && PYTHONPATH=$PWD flock /work/wt/heavy.lock nice -n 5 bash docs/latent-runs/pilot.sh OUT
set -euo pipefail
OUT=${1:-docs/latent-runs/pilot}
mkdir -p "$OUT"
echo "start $(date -u +%FT%TZ) load: $(uptime)" | tee "$OUT/times.txt"
python scripts/latent_ablation.py --n 5 --seeds 0 --arms bc latent --bc-steps 500 --pretrain-steps 500 \
  --eval-episodes 10 --out "$OUT" || echo "ablation exit $?" | tee -a "$OUT/times.txt"
echo "arms a, b end $(date -u +%FT%TZ) load: $(uptime)" | tee -a "$OUT/times.txt"
python scripts/latent_probe.py --run "$OUT/latent-N5-s0" --out "$OUT/probe.json" || echo "probe failed" | tee -a "$OUT/times.txt"
# (c) last: the table is rewritten with all three arms (finished runs are reused, not re-run)
python scripts/latent_ablation.py --n 5 --seeds 0 --arms bc latent ssl --bc-steps 500 --pretrain-steps 500 \
  --eval-episodes 10 --out "$OUT" || echo "ablation exit $?" | tee -a "$OUT/times.txt"
echo "end $(date -u +%FT%TZ) load: $(uptime)" | tee -a "$OUT/times.txt"
