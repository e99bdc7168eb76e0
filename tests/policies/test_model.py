"""VLAPolicy: shapes, distribution maths, registries, and that it can learn (overfit a tiny batch)."""

from __future__ import annotations

import time

import pytest
import torch
from torch.distributions import Normal

from vlaforge import keys
from vlaforge.policies import VISION_REGISTRY, PolicyConfig, PolicySpec, build_policy
from vlaforge.policies.registry import Registry


def test_forward_shapes(cfg, spec, processor, make_obs, tiny_cfg):
    policy = build_policy(tiny_cfg(value_head=True), spec)
    out = policy(processor(make_obs(3)))
    assert out[keys.ACTION_MEAN].shape == (3, 4, 4)
    assert out[keys.ACTION_LOG_STD].shape == (3, 4, 4)
    assert out[keys.VALUE].shape == (3, 1)
    assert all(torch.isfinite(v).all() for v in out.values())  # incl. the empty instruction (all padding)
    assert keys.VALUE not in build_policy(cfg, spec)(processor(make_obs(2))).keys()


def test_multi_camera_and_no_keypoints(tiny_cfg, processor, make_obs):
    spec = PolicySpec((2, 32, 32, 3), state_dim=7, action_dim=4)
    policy = build_policy(tiny_cfg(vision={"channels": [8], "keypoints": 0, "pool_grid": 3}), spec)
    assert policy.backbone.vision.num_tokens == 2 * 9
    assert policy(processor(make_obs(2, v=2)))[keys.ACTION_MEAN].shape == (2, 4, 4)


def test_default_config_size():
    policy = build_policy(PolicyConfig(), PolicySpec((1, 64, 64, 3), state_dim=39, action_dim=4))
    assert 0.5e6 <= policy.num_parameters() <= 2e6


def test_wrong_input_shapes_are_named(policy, processor, make_obs):
    td = processor(make_obs(2))
    bad = td.exclude(keys.PIXELS).set(keys.PIXELS, torch.zeros(2, 1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"pixels must be \(B, V=1, 3, H=32, W=32\)"):
        policy(bad)
    bad = td.exclude(keys.STATE_NORM).set(keys.STATE_NORM, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"state_norm must be \(B, S=7\)"):
        policy(bad)
    with pytest.raises(KeyError, match="run VLAProcessor first"):
        policy(make_obs(2))
    out = policy(td)
    with pytest.raises(ValueError, match=r"action chunk must be \(B, K, A\) = \(2, 4, 4\)"):
        policy.log_prob(out, torch.zeros(2, 4, 3))


def test_log_prob_and_entropy_match_torch_normal(policy, processor, make_obs):
    out = policy(processor(make_obs(3)))
    with torch.no_grad():  # a non-trivial std per (K, A)
        policy.head.log_std.copy_(torch.linspace(-2.0, 0.5, 16).view(4, 4))
    out = policy(processor(make_obs(3)))
    action = torch.randn(3, 4, 4)
    pad = torch.tensor([[False] * 4, [False, False, True, True], [True] * 4])
    dist = Normal(out[keys.ACTION_MEAN], out[keys.ACTION_LOG_STD].exp())
    per_pos = dist.log_prob(action).sum(-1)  # (B, K)
    expected = (per_pos * (~pad).float()).sum(-1)
    assert torch.allclose(policy.log_prob(out, action, pad), expected, atol=1e-5)
    assert torch.allclose(policy.log_prob(out, action), per_pos.sum(-1), atol=1e-5)
    assert policy.log_prob(out, action, pad)[2] == 0
    ent = (dist.entropy().sum(-1) * (~pad).float()).sum(-1)
    assert torch.allclose(policy.entropy(out, pad), ent, atol=1e-5)


def test_log_std_is_clamped_and_sampling(policy, processor, make_obs, cfg):
    with torch.no_grad():
        policy.head.log_std.fill_(10.0)
    out = policy(processor(make_obs(2)))
    assert (out[keys.ACTION_LOG_STD] == cfg.head.max_log_std).all()
    assert torch.equal(policy.sample(out, deterministic=True), out[keys.ACTION_MEAN])
    with torch.no_grad():
        policy.head.log_std.fill_(-1.0)
    out = policy(processor(make_obs(2)))
    draws = torch.stack([policy.sample(out, generator=torch.Generator().manual_seed(i)) for i in range(400)])
    std = (draws - out[keys.ACTION_MEAN]).std(dim=0)
    assert abs(std.mean().item() - torch.e**-1) < 0.02


def test_registries_name_the_choices(tiny_cfg, spec):
    with pytest.raises(KeyError, match=r"unknown vision backbone 'resnet'; registered: \['cnn', 'efficientnet_lite0'\]"):
        build_policy(tiny_cfg(vision={"type": "resnet"}), spec)
    reg: Registry = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(float)
    assert "cnn" in VISION_REGISTRY


def test_freeze_vision_trunk(tiny_cfg, spec):
    policy = build_policy(tiny_cfg(vision={"channels": [8, 16], "freeze": True}), spec)
    names = policy.named_trainable_parameters()
    assert not any(n.startswith("backbone.vision.trunk") for n in names)
    assert any(n.startswith("backbone.vision.pool_proj") for n in names)
    assert policy.num_parameters(trainable_only=True) < policy.num_parameters()


def test_overfits_a_tiny_batch(tiny_cfg, spec, stats, make_obs):
    from vlaforge.policies import VLAProcessor

    torch.manual_seed(0)
    cfg = tiny_cfg(image_augment="none")
    proc = VLAProcessor.from_stats(cfg, stats)
    policy = build_policy(cfg, spec)
    batch = proc(make_obs(8, with_chunk=True, seed=3), train=True)
    target, valid = batch[keys.TARGET_CHUNK], (~batch[keys.ACTION_PAD]).float()[..., None]
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=3e-3)
    t0, losses = time.perf_counter(), []
    for _ in range(100):
        out = policy(batch)
        mse = (((out[keys.ACTION_MEAN] - target) ** 2) * valid).sum() / (valid.sum() * target.shape[-1])
        # the std learns by likelihood around a detached mean (HeadConfig's recipe); MSE drives the mean
        detached = out.clone(recurse=False).set(keys.ACTION_MEAN, out[keys.ACTION_MEAN].detach())
        nll = -policy.log_prob(detached, target, batch[keys.ACTION_PAD]).mean()
        opt.zero_grad()
        (mse + 1e-3 * nll).backward()
        opt.step()
        losses.append(mse.item())
    assert time.perf_counter() - t0 < 20
    assert losses[-1] < 0.05 * losses[0], f"MSE {losses[0]:.3f} -> {losses[-1]:.4f}"
