"""Every action head behind the one interface (vlaforge/policies/heads/): BC loss falls on a fixed batch, the
sampled log-prob is what log_prob recomputes, PPO / GRPO ratios are 1 before a step (the real objectives on a
rollout-shaped [B, T] batch), deterministic sampling, checkpoint round trip, token round trip bounds."""

from __future__ import annotations

import math

import pytest
import torch

from vlaforge import keys
from vlaforge.learners.config import GRPOConfig, PPOConfig, TrainConfig
from vlaforge.learners.grpo import GRPOObjective
from vlaforge.learners.ppo import PPOObjective, RLContext
from vlaforge.learners.registry import build_objective, total_loss
from vlaforge.learners.synthetic import synthetic_rollout
from vlaforge.policies import VLAProcessor, build_policy, load_pretrained, save_pretrained
from vlaforge.policies.heads.action_tokenizers import BinTokenizer, DCTTokenizer

HEADS = {  # name -> policy.head override (small settings: tests run on 2 shared cores)
    "gaussian": {"type": "gaussian"},
    "gaussian_clip_state": {"type": "gaussian", "std": "state", "clip_actions": True, "init_log_std": 0.3},
    "tokens_bins": {"type": "tokens", "tokens": {"tokenizer": "bins", "num_bins": 32}},
    "tokens_dct": {"type": "tokens", "tokens": {"tokenizer": "dct", "dct_keep": 3, "dct_scale": 8.0}},
    "diffusion": {"type": "diffusion", "diffusion": {"train_steps": 20, "inference_steps": 3}},
    "diffusion_eps": {"type": "diffusion", "diffusion": {"train_steps": 20, "inference_steps": 3, "prediction": "epsilon"}},
    "flow": {"type": "flow", "flow": {"inference_steps": 3}},
}


@pytest.fixture(params=sorted(HEADS))
def head_cfg(request, tiny_cfg):
    return tiny_cfg(head=HEADS[request.param], value_head=True)


def _built(cfg, spec, stats, seed=0):
    torch.manual_seed(seed)
    return build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats)


def test_bc_loss_falls_on_a_fixed_batch(head_cfg, spec, stats, make_obs):
    policy, proc = _built(head_cfg, spec, stats)
    loss_fn = build_objective("bc", TrainConfig(), policy)
    batch = proc(make_obs(8, with_chunk=True), train=False)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(0)  # the same noise / timesteps every step: a fixed objective
        out = loss_fn(batch.clone(recurse=False).update(policy(batch)))
        loss = total_loss(out)
        assert all(k.startswith("loss_") or not v.requires_grad for k, v in out.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_sampled_log_prob_is_recomputed_and_sampling_is_reproducible(head_cfg, spec, stats, make_obs):
    policy, proc = _built(head_cfg, spec, stats)
    policy.eval()
    with torch.no_grad():
        out = policy(proc(make_obs(5)))
        act = policy.act(out, generator=torch.Generator().manual_seed(1))
        chunk, extras = act[keys.ACTION_CHUNK], act[keys.HEAD_EXTRAS]
        assert chunk.shape == (5, 4, 4) and act[keys.LOG_PROB].shape == (5,)
        recomputed = policy.log_prob(out, chunk, None, extras)
        assert torch.isfinite(recomputed).all()
        assert torch.allclose(recomputed, act[keys.LOG_PROB], atol=1e-4, rtol=1e-5)
        again = policy.act(out, generator=torch.Generator().manual_seed(1))
        assert torch.equal(again[keys.ACTION_CHUNK], chunk)
        other = policy.act(out, generator=torch.Generator().manual_seed(2))
        assert not torch.equal(other[keys.ACTION_CHUNK], chunk)
        d1, d2 = policy.act(out, deterministic=True), policy.act(out, deterministic=True)
        assert torch.equal(d1[keys.ACTION_CHUNK], d2[keys.ACTION_CHUNK])
        assert torch.isfinite(policy.entropy(out, None, extras)).all()
        # masking: executed-position heads count fewer terms; whole-chain heads ignore pad by design
        pad = torch.arange(4).expand(5, 4) >= 2
        masked = policy.log_prob(out, chunk, pad, extras)
        if policy.head.masks_positions:
            assert not torch.allclose(masked, recomputed)
        else:
            assert torch.equal(masked, recomputed)


def _rl_step_ratio(policy, proc, objective, batch, ctx):
    """The RL learner's exact path on one minibatch: prepare -> processor -> forward -> loss."""
    samples, _ = objective.prepare(batch, ctx)
    inp = proc(samples.select(keys.OBS), train=False)
    inp.update(samples.exclude(keys.OBS))
    return objective(inp.update(policy(inp)))


def test_ppo_and_grpo_ratio_is_one_before_the_first_step(head_cfg, spec, stats):
    policy, proc = _built(head_cfg, spec, stats)
    policy.eval()
    batch = synthetic_rollout(policy, proc, spec, batch=4, steps=3, n_action_steps=2, seed=3, group_size=2)
    assert keys.HEAD_EXTRAS in batch.keys()

    def value_fn(obs):
        with torch.no_grad():
            return policy(proc(obs, train=False)).get(keys.VALUE)

    ppo = PPOObjective(policy, PPOConfig())
    out = _rl_step_ratio(policy, proc, ppo, batch, RLContext(value_fn=value_fn))
    assert float(out["ratio_mean"]) == pytest.approx(1.0, abs=1e-4) and float(out["ratio_max"]) == pytest.approx(1.0, abs=1e-4)
    assert float(out["approx_kl"]) < 1e-7 and float(out["clip_fraction"]) == 0.0
    total_loss(out).backward()  # gradients reach the head through its log-prob
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.head.parameters())
    policy.zero_grad()
    # critic-free GRPO with the k3 reference KL (auto for non-gaussian heads) on the same stored extras
    grpo = GRPOObjective(policy, GRPOConfig(kl_coef=0.1, kl_estimator="k3", dynamic_sampling=False), "grpo")
    samples, _ = grpo.prepare(batch, RLContext())
    inp = proc(samples.select(keys.OBS), train=False)
    inp.update(samples.exclude(keys.OBS))
    out = policy(inp)
    inp.update(out)
    inp.set(keys.REF_LOG_PROB, policy.log_prob(out, inp[keys.ACTION_CHUNK], inp[keys.ACTION_PAD],
                                              inp[keys.HEAD_EXTRAS]).detach())
    res = grpo(inp)
    assert float(res["ratio_max"]) == pytest.approx(1.0, abs=1e-4) and float(res["kl_ref"]) < 1e-6


def test_analytic_kl_only_where_defined(head_cfg, spec, stats):
    from vlaforge.learners.ppo import kl_mode

    policy, _ = _built(head_cfg, spec, stats)
    assert kl_mode(policy, "k3") == "k3"
    if policy.head.has_analytic_kl:
        assert kl_mode(policy, "auto") == "analytic"
    else:
        assert kl_mode(policy, "auto") == "k3"
        with pytest.raises(ValueError, match="kl_estimator k3"):
            kl_mode(policy, "analytic")


def test_checkpoint_round_trip_keeps_samples(head_cfg, spec, stats, make_obs, tmp_path):
    policy, proc = _built(head_cfg, spec, stats)
    path = save_pretrained(tmp_path / "p", policy, proc, head_cfg, spec)
    policy2, proc2, cfg2, _, _ = load_pretrained(path)
    assert cfg2.head == head_cfg.head
    obs = make_obs(3)
    policy.eval()
    with torch.no_grad():
        a = policy.act(policy(proc(obs)), deterministic=True)
        b = policy2.act(policy2(proc2(obs)), deterministic=True)
    assert torch.equal(a[keys.ACTION_CHUNK], b[keys.ACTION_CHUNK])


def test_missing_extras_error_names_the_key(tiny_cfg, spec, stats, make_obs):
    policy, proc = _built(tiny_cfg(head=HEADS["flow"]), spec, stats)
    with torch.no_grad():
        out = policy(proc(make_obs(2)))
    with pytest.raises(KeyError, match="denoise_chain"):
        policy.log_prob(out, torch.zeros(2, 4, 4))


# -- tokenizers --------------------------------------------------------------------------------------
def test_bin_tokenizer_round_trip_error_is_half_a_bin():
    tok = BinTokenizer(8, 4, num_bins=256, token_range=1.0)
    x = torch.rand(64, 8, 4) * 2 - 1
    t = tok.encode(x)
    assert t.shape == (64, 32) and int(t.min()) >= 0 and int(t.max()) < 256
    assert float((tok.decode(t) - x).abs().max()) <= 1.0 / 256 + 1e-6
    assert torch.equal(tok.encode(tok.decode(t)), t)  # decoded centres re-encode to the same tokens
    assert tok.token_position.tolist()[:5] == [0, 0, 0, 0, 1]  # time order: prefixes of positions


def test_dct_tokenizer_round_trip_bounds():
    k, a, scale = 8, 4, 10.0
    x = torch.rand(64, k, a) * 2 - 1
    full = DCTTokenizer(k, a, keep=None, scale=scale, max_abs=40, token_range=1.0)
    err = (full.decode(full.encode(x)) - x).pow(2).sum(1).sqrt()  # per-dim L2 over time (B, A)
    assert float(err.max()) <= math.sqrt(k) * 0.5 / scale + 1e-5  # orthonormal transform of the rounding error
    # keep < K: rounding error of the kept coefficients + the energy of the dropped ones (triangle inequality)
    tt = torch.linspace(-1, 1, k)[None, :, None]
    smooth = (0.5 * tt * torch.rand(16, 1, a) + 0.3 * torch.rand(16, 1, a)).clamp(-1, 1)  # ramps, as demos are
    short = DCTTokenizer(k, a, keep=3, scale=scale, max_abs=40, token_range=1.0)
    assert short.seq_len == 12
    dropped = torch.einsum("fk,bka->bfa", full.d, smooth)[:, 3:].pow(2).sum(1).sqrt()  # (B, A)
    err = (short.decode(short.encode(smooth)) - smooth).pow(2).sum(1).sqrt()
    assert bool((err <= math.sqrt(3) * 0.5 / scale + dropped + 1e-5).all())
    assert float(err.max()) < 0.15  # a ramp's energy sits in the first coefficients
    with pytest.raises(ValueError, match="dct_max_abs"):
        DCTTokenizer(k, a, keep=None, scale=scale, max_abs=10, token_range=1.0)


@torch.no_grad()
def test_clipped_gaussian_log_prob_is_that_of_the_executed_action(tiny_cfg, spec, stats, make_obs):
    """head.clip_actions: sampled chunks are clamped to [-1, 1]; the stored log-prob (what sample() returns)
    equals the recomputed one and is the boundary mass Phi at a bound, the Normal density inside; the mass
    at a bound matches the share of samples clamped there; the state std is floored at min_log_std."""
    cfg = tiny_cfg(head={"type": "gaussian", "std": "state", "clip_actions": True, "init_log_std": 0.5,
                         "min_log_std": -1.0})
    policy, processor = _built(cfg, spec, stats)
    out = policy(processor(make_obs(64), device="cpu"))
    act = policy.act(out, generator=torch.Generator().manual_seed(1))
    chunk, stored = act.get(keys.ACTION_CHUNK), act.get(keys.LOG_PROB)
    assert float(chunk.abs().max()) <= 1.0 and bool((chunk.abs() == 1.0).any())  # some actions were clamped
    pad = torch.zeros(chunk.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(policy.log_prob(out, chunk, pad), stored)
    mean, std = out.get(keys.ACTION_MEAN), out.get(keys.ACTION_LOG_STD).exp()
    normal = torch.distributions.Normal(mean, std)
    expected = torch.where(chunk >= 1.0, torch.log1p(-normal.cdf(torch.ones_like(mean))),
                           torch.where(chunk <= -1.0, normal.cdf(-torch.ones_like(mean)).log(), normal.log_prob(chunk)))
    torch.testing.assert_close(stored, expected.sum((-1, -2)), rtol=1e-4, atol=1e-4)
    # Monte Carlo: the boundary mass is the probability of executing exactly the bound
    one = out[:1]
    draws = torch.stack([policy.act(one, generator=torch.Generator().manual_seed(s)).get(keys.ACTION_CHUNK)[0]
                         for s in range(400)])  # (400, K, A)
    p_high = 1.0 - torch.distributions.Normal(one.get(keys.ACTION_MEAN)[0], std[0]).cdf(torch.ones_like(std[0]))
    assert float(((draws >= 1.0).float().mean(0) - p_high).abs().max()) < 0.1
    assert float(out.get(keys.ACTION_LOG_STD).min()) >= -1.0  # the floor
    # the unclipped head keeps the plain density (same weights)
    plain = tiny_cfg(head={"type": "gaussian", "std": "state", "init_log_std": 0.5, "min_log_std": -1.0})
    unclipped, _ = _built(plain, spec, stats)
    unclipped.load_state_dict(policy.state_dict())
    torch.testing.assert_close(unclipped.log_prob(out, chunk, pad), normal.log_prob(chunk).sum((-1, -2)))
