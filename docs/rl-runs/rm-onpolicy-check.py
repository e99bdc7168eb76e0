"""Does the recipe's reward model track TRUE success on a BC policy's own rollouts (the states RL rewards)?

Rolls out a BC policy in-process (one RolloutWorker, whole-episode rows, no Ray), trains the RM of
configs/ppo_metaworld_rm.yaml on its demos -- alone ("demos"), or with the first half of the rollout batches
labelled by the simulator ("demos+rollouts", what the reward_model stage does) -- scores every decision of
the LAST batch (never trained on) as the RL stage does (RewardScorer.annotate) and prints the reward/*
diagnostics of those decisions.

    PYTHONPATH=. nice -n 19 .venv/bin/python docs/rl-runs/rm-onpolicy-check.py DEMO_DATASET BC_POLICY_DIR \
        [RM_STEPS] [BATCHES] [USE_STATE: 1 | 0 | both] [DATA: demos | demos+rollouts | both]
"""

import sys
import time

import torch

from vlaforge import keys
from vlaforge.actors.reward import RewardScorer, reward_metrics
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs import resolve_tasks
from vlaforge.learners.reward_data import build_success_set, episodes_from_dataset
from vlaforge.learners.reward_model import train_reward_model
from vlaforge.platform.recipe import load_recipe, stage_recipe

torch.set_num_threads(1)


class Frozen:
    """A weights subscriber that never loads: the BC policy as exported."""
    version = 0

    def maybe_load(self, module, handle) -> bool:
        return False


def main() -> None:
    demos, policy = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 250
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    states = {"1": (True,), "0": (False,), "both": (True, False)}[sys.argv[5] if len(sys.argv) > 5 else "both"]
    sources = {"both": ("demos", "demos+rollouts")}.get(sys.argv[6] if len(sys.argv) > 6 else "demos",
                                                         (sys.argv[6] if len(sys.argv) > 6 else "demos",))
    r = load_recipe("configs/ppo_metaworld_rm.yaml")
    ppo = stage_recipe(r, [s.name for s in r.stages].index("ppo"))
    t0 = time.time()
    worker = RolloutWorker(ppo.envs, PolicySource.from_dir(policy), ppo.rollout, resolve_tasks(ppo.envs.tasks), Frozen(), rank=0)
    batches = [worker.sample().data for _ in range(n)]  # n x B whole episodes
    worker.close()
    print(f"rollouts: {sum(b.batch_size[0] for b in batches)} episodes, {time.time() - t0:.0f} s")
    from vlaforge.envs import ALL_TASKS
    from vlaforge.learners.reward_data import episodes_from_rollouts

    for use_state, source in [(u, s) for u in states for s in sources]:
        eps = episodes_from_dataset(demos)
        if source == "demos+rollouts":
            eps += episodes_from_rollouts([b.clone() for b in batches[: n // 2]], list(ALL_TASKS))
        cfg = r.reward_model.model_copy(update={"use_state": use_state, "steps": steps})
        t0 = time.time()
        model, proc, _ = train_reward_model(build_success_set(eps, cfg), cfg)
        scorer = RewardScorer(model, proc, cfg=cfg)
        levels, flags, per_task = [], [], {}
        for b in batches[-1:]:  # the last batch: never trained on
            scorer.annotate(b, ppo.train.ppo.gamma)
            lv, ok = b.get((keys.NEXT, keys.RM_LEVEL)), b.get((keys.NEXT, keys.SUCCESS))
            levels.append(lv)
            flags.append(ok)
            for i, task in enumerate(worker.tasks):
                per_task.setdefault(task, ([], []))
                per_task[task][0].append(lv[i])
                per_task[task][1].append(ok[i])
        m = reward_metrics(torch.cat(levels), torch.cat(flags))
        print(f"{source}, use_state={use_state} (RM {steps} steps, {time.time() - t0:.0f} s): " +
              ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in m.items()))
        for task, (lv, ok) in per_task.items():
            mt = reward_metrics(torch.cat(lv), torch.cat(ok))
            print(f"    {task}: " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in mt.items()))


if __name__ == "__main__":
    main()
