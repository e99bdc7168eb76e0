"""PolicyRunner: chunk queues, re-planning cadence, partial resets, and the RL outputs."""

from __future__ import annotations

import pytest
import torch

from vlaforge import keys
from vlaforge.policies import PolicyRunner


@pytest.fixture
def counted(policy):
    """Record the batch size of every forward pass."""
    sizes: list[int] = []
    policy.register_forward_hook(lambda mod, args, out: sizes.append(out.batch_size[0]))
    return policy, sizes


def test_replans_every_n_action_steps(counted, processor, make_obs):
    policy, sizes = counted
    runner = PolicyRunner(policy, processor, n_action_steps=3)
    obs = make_obs(4)
    replanned = [runner.step(obs)[keys.REPLANNED].all().item() for _ in range(7)]
    assert replanned == [True, False, False, True, False, False, True]
    assert sizes == [4, 4, 4] and runner.num_forward == 3


def test_actions_are_the_unnormalised_clipped_chunk(policy, processor, make_obs):
    runner = PolicyRunner(policy, processor, n_action_steps=3)
    obs = make_obs(2)
    steps = [runner.step(obs) for _ in range(3)]
    with torch.no_grad():
        policy.eval()
        mean = policy(processor(obs))[keys.ACTION_MEAN]  # deterministic runner: the mean
    expected = processor.unnormalize_action(mean[:, :3]).clamp(-1, 1)  # (B, 3, A)
    got = torch.stack([s[keys.ACTION] for s in steps], dim=1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert [s[keys.CHUNK_STEP].tolist() for s in steps] == [[0, 0], [1, 1], [2, 2]]
    assert got.abs().max() <= 1.0


def test_partial_reset_replans_only_those_envs(counted, processor, make_obs):
    policy, sizes = counted
    runner = PolicyRunner(policy, processor, n_action_steps=2)
    obs = make_obs(5)
    runner.step(obs)
    runner.reset(torch.tensor([False, True, False, True, False]))
    s = runner.step(obs)
    assert s[keys.REPLANNED].tolist() == [False, True, False, True, False]
    assert s[keys.CHUNK_STEP].tolist() == [1, 0, 1, 0, 1]
    assert sizes == [5, 2]  # one batched forward over the two reset envs only
    s = runner.step(obs)  # envs 0, 2, 4 ran out: replan those three together
    assert s[keys.REPLANNED].tolist() == [True, False, True, False, True]
    assert sizes == [5, 2, 3]
    runner.reset([0])  # env 0 mid-chunk; envs 1 and 3 run out now as well
    assert runner.step(obs)[keys.REPLANNED].tolist() == [True, True, False, True, False]
    assert sizes == [5, 2, 3, 3]


def test_partial_replan_uses_the_right_envs(policy, processor, make_obs):
    runner = PolicyRunner(policy, processor, n_action_steps=2)
    a, b = make_obs(3, seed=0), make_obs(3, seed=1)
    runner.step(a)
    runner.reset([2])
    mixed = runner.step(b)[keys.ACTION]  # env 2 replans on b; envs 0, 1 continue a's chunk
    fresh = PolicyRunner(policy, processor, n_action_steps=2)
    assert torch.allclose(mixed[2], fresh.act(b)[2], atol=1e-6)
    fresh.reset()
    fresh.act(a)
    assert torch.allclose(mixed[:2], fresh.act(a)[:2], atol=1e-6)


def test_rl_outputs_and_stochastic_log_prob(tiny_cfg, spec, processor, make_obs):
    from vlaforge.policies import build_policy

    policy = build_policy(tiny_cfg(value_head=True), spec)
    runner = PolicyRunner(policy, processor, n_action_steps=2, deterministic=False, generator=torch.Generator().manual_seed(0))
    obs = make_obs(3)
    s0 = runner.step(obs)
    assert policy.training  # the runner restored the mode it found
    assert s0[keys.ACTION_CHUNK].shape == (3, 4, 4) and s0[keys.VALUE].shape == (3, 1)
    assert s0[keys.ACTION_PAD].tolist() == [[False, False, True, True]] * 3
    # A learner recomputes the same log_prob from the stored chunk and pad.
    with torch.no_grad():
        out = policy.eval()(processor(obs))
    lp = policy.log_prob(out, s0[keys.ACTION_CHUNK], s0[keys.ACTION_PAD])
    assert torch.allclose(lp, s0[keys.LOG_PROB], atol=1e-5)
    assert torch.allclose(out[keys.VALUE], s0[keys.VALUE], atol=1e-6)
    s1 = runner.step(obs)  # same chunk carried while it executes
    assert torch.equal(s1[keys.ACTION_CHUNK], s0[keys.ACTION_CHUNK]) and torch.equal(s1[keys.LOG_PROB], s0[keys.LOG_PROB])
    s2 = runner.step(obs)  # new sample
    assert not torch.equal(s2[keys.ACTION_CHUNK], s0[keys.ACTION_CHUNK])
    assert not s2[keys.ACTION].is_inference()  # usable in autograd-side code later


def test_batch_change_and_bad_steps(policy, processor, make_obs):
    with pytest.raises(ValueError, match=r"n_action_steps must be in \[1, chunk_size=4\]"):
        PolicyRunner(policy, processor, n_action_steps=5)
    runner = PolicyRunner(policy, processor, n_action_steps=2)
    runner.act(make_obs(2))
    with pytest.raises(ValueError, match="batch size changed from 2 to 3"):
        runner.act(make_obs(3))
    runner.reset()
    assert runner.act(make_obs(3)).shape == (3, 4)
