"""The learner side meets the REAL rollout actor output (in-process RolloutWorker on Meta-World, 32 px):
PPO recomputes exactly the stored chunk log-probs (ratio 1), bootstraps truncated chunks from the terminal
observation's value, and GRPO reads the actor's group ids."""

from __future__ import annotations

import pytest
import torch

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs import EnvConfig
from vlaforge.learners.config import GRPOConfig, PPOConfig
from vlaforge.learners.grpo import GRPOObjective
from vlaforge.learners.ppo import PPOObjective, RLContext
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # fixture: tests/conftest.py

S, A, N_EXEC, K = 4, 4, 3, 4
TASKS = ["reach-v3", "push-v3"]
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=K, n_action_steps=N_EXEC, value_head=True,
                      vision={"channels": [8, 16], "keypoints": 4}, language={"layers": 0})
STATS = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S}, "action": {"min": [-1.0] * A, "max": [1.0] * A}}


class Version0:
    version = 0

    def maybe_load(self, module, handle) -> bool:
        return False


def worker(**over) -> RolloutWorker:
    env = EnvConfig(image_size=32, tasks=TASKS, state="proprio", max_episode_steps=7, terminate_on_success=False)
    cfg = RolloutConfig(**{"envs_per_actor": 2, "steps_per_sample": 4, "seed": 5, **over})
    source = PolicySource.from_parts(POLICY, PolicySpec((1, 32, 32, 3), S, A), VLAProcessor.from_stats(POLICY, STATS))
    return RolloutWorker(env, source, cfg, TASKS, Version0(), rank=0)




def test_ppo_on_real_rollouts_ratio_one_and_bootstrap():
    w = worker()
    try:
        batch = w.sample().data  # [2, 4]: 7-step episodes, 3 actions per chunk -> a chunk cut to 1 step
        policy, processor = w.policy, w.processor
    finally:
        w.close()
    assert bool((batch.get(keys.EXEC_STEPS) < N_EXEC).any()) and bool(batch.get((keys.NEXT, keys.TRUNCATED)).any())

    asked = []

    def value_fn(obs):
        asked.append(obs.batch_size[0])
        with torch.no_grad():
            return policy(processor(obs, train=False)).get(keys.VALUE)

    obj = PPOObjective(policy, PPOConfig(normalize_advantage=False))
    samples, metrics = obj.prepare(batch, RLContext(value_fn=value_fn))
    assert samples.batch_size[0] == 8 and asked and metrics["bootstrap_frac"] > 0
    # The bootstrap value of a truncated chunk is V(its terminal observation), from the learner's forward.
    trunc = batch.get((keys.NEXT, keys.TRUNCATED)).squeeze(-1)
    b, t = trunc.nonzero()[0].tolist()
    terminal = batch.get(keys.NEXT)[b : b + 1, t].select(keys.OBS)
    with torch.no_grad():
        v_term = policy(processor(terminal, train=False)).get(keys.VALUE)
    delta = batch.get((keys.NEXT, keys.REWARD))[b, t] + PPOConfig().gamma ** int(batch.get(keys.EXEC_STEPS)[b, t]) * v_term[0]
    advantage = samples.get(keys.ADVANTAGE).reshape(2, 4, 1)[b, t]
    torch.testing.assert_close(advantage, delta - batch.get(keys.VALUE)[b, t], atol=1e-5, rtol=1e-5)

    inp = processor(samples.select(keys.OBS), train=False)
    inp.update(samples.exclude(keys.OBS))
    out = obj(inp.update(policy(inp)))
    assert float(out["clip_fraction"]) == 0.0
    assert float(out["approx_kl"]) < 1e-6 and float(out["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)


def test_grpo_reads_the_actor_groups():
    w = worker(group_size=2, envs_per_actor=4, steps_per_sample=3)
    try:
        batch = w.sample().data  # [4, 3], rows (0, 1) and (2, 3) start from the same states
        policy = w.policy
    finally:
        w.close()
    gid = batch.get(keys.GROUP_ID)
    assert gid.shape == (4, 3) and gid[0, 0] == gid[1, 0] != gid[2, 0] == gid[3, 0]
    obj = GRPOObjective(policy, GRPOConfig(score="return", dynamic_sampling=False), "grpo")
    samples, metrics = obj.prepare(batch, RLContext())
    assert metrics["groups"] == 2 and samples.batch_size[0] > 0
    assert torch.equal(batch.get((keys.OBS, keys.STATE[1]))[0, 0], batch.get((keys.OBS, keys.STATE[1]))[1, 0])
