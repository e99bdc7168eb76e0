"""Held-out AUROC of the recipe's reward model with and without the state input, trained on the recipe's demos
alone (4 per task, 10 frames past success), 2 of the 8 episodes held out (one per task).

    PYTHONPATH=. nice -n 10 .venv/bin/python docs/rl-runs/rm-offline-check.py DEMO_DATASET
Measured 2026-12-02 10:13-10:18 UTC under load (load average 11-14), commit 2cbc76c:
    use_state True : rm_eval/auroc 0.993, accuracy 0.923, pos_prob 0.499, neg_prob 0.000 (130 frames, 20 positive), 137 s
    use_state False: rm_eval/auroc 0.714, accuracy 0.915, pos_prob 0.442, neg_prob 0.000, 166 s
"""
import sys

import torch, time
from vlaforge.platform.recipe import load_recipe
from vlaforge.learners.reward_data import episodes_from_dataset, split_episodes, build_success_set, build_eval_set
from vlaforge.learners.reward_model import train_reward_model, evaluate_reward_model
torch.set_num_threads(1)
r = load_recipe("configs/ppo_metaworld_rm.yaml")
eps = episodes_from_dataset(sys.argv[1])
print(len(eps), [ (e.task, len(e), e.success_frame) for e in eps])
for use_state in (True, False):
    cfg = r.reward_model.model_copy(update={"use_state": use_state})
    tr, he = split_episodes(eps, 0.25, 0)
    t0 = time.time()
    m, p, met = train_reward_model(build_success_set(tr, cfg), cfg, eval_data=build_eval_set(he))
    print(use_state, {k: round(v, 3) for k, v in met.items() if "eval" in k}, round(time.time() - t0, 1))
