"""The zero-cost synthetic env keeps the batched-env contract (shapes, partial resets, truncation)."""

from __future__ import annotations

import torch

from vlaforge import keys
from vlaforge.envs import EnvConfig, make_env


def test_contract_shapes_seeded_resets_and_truncation():
    cfg = EnvConfig(backend="synthetic", tasks=["reach-v3"], image_size=16, state="proprio_goal", max_episode_steps=3)
    env = make_env(cfg, ["reach-v3", "push-v3"], seed=0)
    assert env.spec.image_shape == (1, 16, 16, 3) and env.spec.state_dim == 7 and env.spec.action_dim == 4
    a = env.reset(seeds=[5, 6])
    b = make_env(cfg, ["reach-v3", "push-v3"], seed=1).reset(seeds=[5, 6])
    assert torch.equal(a[keys.STATE], b[keys.STATE])  # a seed fixes the initial state
    assert a[keys.IMAGE].dtype == torch.uint8 and a[keys.IMAGE].shape == (2, 1, 16, 16, 3)
    for t in range(3):
        nxt = env.step(torch.ones(2, 4))[keys.NEXT]
        assert nxt[keys.DONE].shape == (2, 1) and bool(nxt[keys.DONE].all()) == (t == 2)  # truncated at 3 steps
    assert not nxt[keys.SUCCESS].any() and float(nxt[keys.REWARD].abs().sum()) == 0.0
    env.reset(env_ids=[1], seeds=[9])
    assert env.elapsed_steps.tolist() == [3, 0]  # partial reset
    assert env.render([0]).shape == (1, 1, 16, 16, 3)
