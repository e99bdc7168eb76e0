"""Chunk PPO loss on crafted batches: diagnostics (clip fraction, approx KL), clipping gradients, masked
chunk positions, value clipping, reference KL (analytic vs k3), critic warm-up, shape guards."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.learners.config import PPOConfig, TrainConfig
from vlaforge.learners.ppo import ChunkClipLoss, PPOObjective
from vlaforge.learners.registry import build_objective
from vlaforge.policies import PolicyConfig, PolicySpec, build_policy

B, K, A, N_EXEC = 8, 4, 3, 2
POLICY = PolicyConfig(dim=16, layers=1, heads=2, chunk_size=K, n_action_steps=N_EXEC, value_head=True,
                      vision={"channels": [4], "keypoints": 0, "pool_grid": 1}, language={"layers": 0})


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return build_policy(POLICY, PolicySpec(image_shape=(1, 16, 16, 3), state_dim=2, action_dim=A))


def batch(policy, shift: torch.Tensor | None = None, advantage: torch.Tensor | None = None) -> TensorDict:
    """Model output + a chunk sampled from it; LOG_PROB = the same policy's log-prob (+ shift)."""
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(B, K, A, generator=g).requires_grad_()
    log_std = torch.full((B, K, A), -0.5).requires_grad_()
    pad = torch.arange(K).expand(B, K) >= N_EXEC  # (B, K)
    out = TensorDict({keys.ACTION_MEAN: mean, keys.ACTION_LOG_STD: log_std}, batch_size=[B])
    chunk = policy.sample(out.detach(), generator=g)
    old = policy.log_prob(out.detach(), chunk, pad) + (0 if shift is None else shift)
    td = out.clone(recurse=False)
    td.update({keys.ACTION_CHUNK: chunk, keys.ACTION_PAD: pad, keys.LOG_PROB: old,
               keys.ADVANTAGE: (torch.ones(B) if advantage is None else advantage).unsqueeze(-1),
               keys.VALUE: torch.zeros(B, 1, requires_grad=True), keys.VALUE_TARGET: torch.ones(B, 1),
               keys.OLD_VALUE: torch.zeros(B, 1)})
    return td


def test_ratio_one_gives_no_clipping_and_zero_kl(policy):
    loss = build_objective("ppo", TrainConfig(objective="ppo"), policy)
    out = loss(batch(policy))
    assert set(out.keys()) >= {"loss_objective", "loss_critic", "loss_entropy", "loss_kl", "clip_fraction",
                               "approx_kl", "entropy", "explained_variance", "ratio_mean", "ratio_max"}
    assert float(out["clip_fraction"]) == 0.0
    assert abs(float(out["approx_kl"])) < 1e-6
    assert float(out["ratio_mean"]) == pytest.approx(1.0) and float(out["ratio_max"]) == pytest.approx(1.0)
    assert float(out["loss_objective"].detach()) == pytest.approx(-1.0)  # -mean(ratio * A), A = 1
    # Entropy over the 2 executed positions x 3 dims of a Gaussian with log_std -0.5.
    assert float(out["entropy"]) == pytest.approx(N_EXEC * A * (0.5 + 0.5 * math.log(2 * math.pi) - 0.5), rel=1e-5)
    for k in ("clip_fraction", "approx_kl", "entropy", "ratio_mean", "explained_variance"):
        assert not out[k].requires_grad


def test_shifted_log_probs_clip_as_expected(policy):
    loss = ChunkClipLoss(policy, PPOConfig(clip_epsilon=0.2))
    shift = torch.tensor([0.5, -0.5, 0.05, -0.05] * 2)  # old - new: ratio e^-0.5, e^0.5, ~0.95, ~1.05
    td = batch(policy, shift=shift, advantage=torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]))
    out = loss(td)
    assert float(out["clip_fraction"]) == pytest.approx(0.5)  # |log ratio| = 0.5 -> outside [0.8, 1.2]
    r = torch.exp(-shift)
    assert float(out["approx_kl"]) == pytest.approx(float(((r - 1) - torch.log(r)).mean()), rel=1e-5)
    assert float(out["ratio_max"]) == pytest.approx(math.exp(0.5), rel=1e-5)
    out["loss_objective"].backward()
    grad = td.get(keys.ACTION_MEAN).grad.abs().sum((1, 2))  # (B,)
    # Clipped with no gradient: ratio e^0.5 with A > 0 (sample 1) and e^-0.5 with A < 0 (sample 4).
    # Not clipped by min(): e^-0.5 with A > 0 (sample 0) and e^0.5 with A < 0 (sample 5) keep their gradient.
    assert grad[1] == 0 and grad[4] == 0
    assert grad[0] > 0 and grad[5] > 0 and grad[2] > 0 and grad[3] > 0


def test_unexecuted_positions_do_not_count(policy):
    loss = ChunkClipLoss(policy, PPOConfig())
    td = batch(policy)
    td.get(keys.ACTION_MEAN).data[:, N_EXEC:] += 10.0  # move only positions that never ran
    out = loss(td)
    assert float(out["clip_fraction"]) == 0.0 and abs(float(out["approx_kl"])) < 1e-6


def test_value_loss_clipping_by_hand(policy):
    loss = ChunkClipLoss(policy, PPOConfig(), value_coef=0.5, value_clip=0.2)
    loss.uses_critic = True
    td = batch(policy)
    td.set(keys.VALUE, torch.tensor([[1.0]] * B))  # new value moved 1.0 from the old 0.0; target 1.0
    out = loss(td)
    # unclipped error 0, clipped error (0.2 - 1)^2 = 0.64 -> max = 0.64 ; 0.5 * 0.5 * 0.64 = 0.16
    assert float(out["loss_critic"]) == pytest.approx(0.16)
    loss.value_clip = None
    assert float(loss(td)["loss_critic"]) == pytest.approx(0.0)


def test_reference_kl_analytic_and_k3(policy):
    td = batch(policy)
    mean, log_std = td.get(keys.ACTION_MEAN).detach(), td.get(keys.ACTION_LOG_STD).detach()
    td.set(keys.REF_ACTION_MEAN, mean + 0.3)
    td.set(keys.REF_ACTION_LOG_STD, log_std)
    analytic = ChunkClipLoss(policy, PPOConfig(kl_coef=0.1, kl_estimator="analytic"))(td)
    # KL of equal-std Gaussians = d^2 / (2 s^2) per dim, over 2 executed positions x 3 dims.
    expected = N_EXEC * A * 0.3**2 / (2 * math.exp(-1.0))
    assert float(analytic["kl_ref"]) == pytest.approx(expected, rel=1e-5)
    assert float(analytic["loss_kl"].detach()) == pytest.approx(0.1 * expected, rel=1e-5)
    # k3 at chunks sampled from the policy is an unbiased estimate of the same KL.
    n = 20000
    out = TensorDict({keys.ACTION_MEAN: mean[:1].expand(n, K, A), keys.ACTION_LOG_STD: log_std[:1].expand(n, K, A)},
                     batch_size=[n])
    chunk = policy.sample(out, generator=torch.Generator().manual_seed(3))
    pad = torch.arange(K).expand(n, K) >= N_EXEC
    ref = TensorDict({keys.ACTION_MEAN: mean[:1].expand(n, K, A) + 0.3, keys.ACTION_LOG_STD: log_std[:1].expand(n, K, A)},
                     batch_size=[n])
    big = out.clone()
    # k3 reads the reference's log-prob of the stored chunk (the RL learner precomputes it once per update)
    big.update({keys.ACTION_CHUNK: chunk, keys.ACTION_PAD: pad, keys.LOG_PROB: policy.log_prob(out, chunk, pad),
                keys.ADVANTAGE: torch.zeros(n, 1), keys.REF_LOG_PROB: policy.log_prob(ref, chunk, pad)})
    k3 = ChunkClipLoss(policy, PPOConfig(kl_coef=0.1, kl_estimator="k3"))(big)
    assert float(k3["kl_ref"]) == pytest.approx(expected, rel=0.1)
    # "auto" is the analytic KL for the gaussian head
    auto = ChunkClipLoss(policy, PPOConfig(kl_coef=0.1))(td)
    assert float(auto["kl_ref"]) == pytest.approx(expected, rel=1e-5)
    same = policy.head.analytic_kl(td, td, pad=torch.zeros(B, K, dtype=torch.bool))
    assert float(same.detach().abs().max()) < 1e-6


def test_critic_warmup_detaches_policy_terms_and_backbone(policy):
    obj = PPOObjective(policy, PPOConfig(critic_warmup_updates=1, entropy_coef=0.01))
    obj.set_update(0)
    out = obj(batch(policy))
    assert not out["loss_objective"].requires_grad and float(out["loss_objective"]) == 0.0
    assert not out["loss_entropy"].requires_grad and out["loss_critic"].requires_grad
    assert obj.detach_value_input  # the value head sees a detached readout during warm-up
    readout = torch.randn(2, K, POLICY.dim, requires_grad=True)
    policy.value(readout).sum().backward()
    assert readout.grad is None
    obj.set_update(1)
    assert obj.policy_enabled and not obj.detach_value_input
    assert obj(batch(policy))["loss_objective"].requires_grad


def test_shape_guards_explain_the_fix(policy):
    loss = build_objective("ppo", TrainConfig(objective="ppo"), policy)
    td = batch(policy)
    td.set(keys.LOG_PROB, td.get(keys.LOG_PROB).unsqueeze(-1))
    with pytest.raises(ValueError, match=r"action_log_prob must be \(8,\)"):
        loss(td)
    td = batch(policy).exclude(keys.ADVANTAGE)
    with pytest.raises(KeyError, match="prepare"):
        loss(td)
    td = batch(policy)
    td.set(keys.ACTION_PAD, torch.zeros(B, K + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="action_is_pad"):
        loss(td)
    no_critic = build_policy(POLICY.model_copy(update={"value_head": False}),
                             PolicySpec(image_shape=(1, 16, 16, 3), state_dim=2, action_dim=A))
    with pytest.raises(ValueError, match="value_head"):
        build_objective("ppo", TrainConfig(objective="ppo"), no_critic)


def test_k3_kl_is_bounded_per_sample(policy):
    """A chain log-prob can move tens of nats in one step: exp() of that must not swamp the loss."""
    td = batch(policy)
    lp = td.get(keys.LOG_PROB)
    td.set(keys.REF_LOG_PROB, lp + torch.tensor([30.0, 0.0] * (B // 2)))  # reference far more likely on half
    out = ChunkClipLoss(policy, PPOConfig(kl_coef=0.1, kl_estimator="k3"))(td)
    assert float(out["kl_ref"]) == pytest.approx(10.0 / 2, rel=1e-5)  # clamped at 10 on half, 0 on the rest


def test_mean_ratio_is_the_length_normalised_log_ratio_and_both_are_logged(policy):
    """ratio: mean divides the chunk log-ratio by its executed positions x A; the diagnostics of both ratio
    definitions come from the same minibatch whichever one trains, and approx_kl stays the chunk-level KL."""
    shift = torch.tensor([0.5, -0.5, 0.05, -0.05] * 2)  # old - new per chunk
    td = batch(policy, shift=shift)
    chunk_out = ChunkClipLoss(policy, PPOConfig(ratio="chunk"))(td)
    mean_out = ChunkClipLoss(policy, PPOConfig(ratio="mean"))(td)
    terms = N_EXEC * A  # 2 executed positions x 3 dims
    assert float(mean_out["ratio_max"]) == pytest.approx(math.exp(0.5 / terms), rel=1e-5)
    assert float(mean_out["clip_fraction"]) == 0.0 and float(chunk_out["clip_fraction"]) == pytest.approx(0.5)
    for k in ("clip_fraction_chunk", "clip_fraction_mean", "approx_kl_chunk", "approx_kl_mean", "approx_kl"):
        assert float(mean_out[k]) == pytest.approx(float(chunk_out[k]), abs=1e-7), k
    assert float(mean_out["approx_kl"]) == pytest.approx(float(mean_out["approx_kl_chunk"]))
    assert float(mean_out["approx_kl_mean"]) < float(mean_out["approx_kl_chunk"]) / terms
    # a row cut short counts only its executed terms
    pad = td.get(keys.ACTION_PAD).clone()
    pad[0, 1] = True
    assert policy.log_prob_terms(td.get(keys.ACTION_CHUNK), pad).tolist() == [A] + [terms] * (B - 1)
