"""BC objective, objective registry, DeepSpeed config / LR schedule and the resumable shard stream (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.learners import OBJECTIVES, build_objective, register_objective
from vlaforge.learners.bc import BCLoss
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.engine import ds_config, lr_factor, optimizer_checksum, param_checksum
from vlaforge.learners.registry import total_loss
from vlaforge.learners.stream import ShardStream


def _batch(b=4, k=3, a=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, k, a, generator=g, requires_grad=True)
    log_std = torch.full((b, k, a), -0.5, requires_grad=True)
    target = torch.randn(b, k, a, generator=g)
    pad = torch.zeros(b, k, dtype=torch.bool)
    pad[:, -1] = True  # the last chunk position is past the episode end
    td = TensorDict({keys.ACTION_MEAN: mean, keys.ACTION_LOG_STD: log_std, keys.TARGET_CHUNK: target,
                     keys.ACTION_PAD: pad}, batch_size=[b])
    return td, mean, log_std, target, pad


def test_bc_values_mask_and_gradient_routing():
    td, mean, log_std, target, pad = _batch()
    out = BCLoss()(td)
    valid = ~pad
    expected_mse = ((mean - target) ** 2)[valid].mean()
    assert torch.allclose(out["loss_bc"], expected_mse)
    z = (target - mean) / log_std.exp()
    expected_nll = (0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi))[valid].mean()
    assert torch.allclose(out["loss_std"], expected_nll) and torch.allclose(out["nll"], expected_nll)
    assert torch.allclose(out["log_std_mean"], torch.tensor(-0.5)) and out["valid_frac"] == pytest.approx(2 / 3)
    for k in ("action_mse", "nll", "log_std_mean"):
        assert not out[k].requires_grad

    # Padded positions do not count: changing their targets changes nothing.
    td2 = td.clone()
    td2.get(keys.TARGET_CHUNK)[:, -1] += 100.0
    assert torch.allclose(BCLoss()(td2)["loss_bc"], out["loss_bc"])

    # loss_std trains only the std (mean detached); loss_bc only the mean.
    out["loss_std"].backward(retain_graph=True)
    assert mean.grad is None and log_std.grad is not None and log_std.grad.abs().sum() > 0
    log_std.grad = None
    out["loss_bc"].backward()
    assert mean.grad.abs().sum() > 0 and log_std.grad is None
    assert torch.all(mean.grad[:, -1] == 0)  # no gradient from padding
    assert torch.allclose(total_loss(out), out["loss_bc"] + out["loss_std"])


def test_bc_errors_name_the_problem():
    td, *_ = _batch()
    with pytest.raises(KeyError, match="missing"):
        BCLoss()(td.exclude(keys.TARGET_CHUNK))
    bad = td.clone()
    bad.set(keys.TARGET_CHUNK, torch.zeros(4, 3, 5))
    with pytest.raises(ValueError, match="chunk_size / action_dim"):
        BCLoss()(bad)
    with pytest.raises(ValueError, match="no loss_"):
        total_loss(TensorDict({"nll": torch.tensor(1.0)}, batch_size=[]))


def test_objective_registry():
    assert "bc" in OBJECTIVES
    obj = build_objective("bc", TrainConfig(bc_std_coef=0.5), torch.nn.Linear(1, 1))
    assert isinstance(obj, BCLoss) and obj.std_coef == 0.5
    with pytest.raises(KeyError, match="unknown objective 'ppo2'.*registered"):
        build_objective("ppo2", TrainConfig(), torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="already registered"):
        register_objective("bc")(lambda train, policy: BCLoss())


def test_ds_config_and_lr_schedule():
    cfg = ds_config(TrainConfig(batch_size=64, lr=1e-3, deepspeed={"zero_stage": 2, "precision": "bf16"}), 4)
    assert cfg["train_batch_size"] == 64 and cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ValueError, match="divisible by the number of learner ranks"):
        ds_config(TrainConfig(batch_size=10), 4)
    # Linear warmup over 4 steps, cosine to 0 at the last step; "constant" holds after warmup.
    assert [lr_factor(s, 4, 100, "cosine") for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_factor(4, 4, 100, "cosine") == 1.0 and lr_factor(100, 4, 100, "cosine") == pytest.approx(0.0)
    assert lr_factor(52, 4, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(90, 4, 100, "constant") == 1.0 and lr_factor(0, 0, 10, "constant") == 1.0


def test_checksums_see_every_bit():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    before = param_checksum(m)
    with torch.no_grad():
        m[1].bias.add_(1e-7)
    assert param_checksum(m) != before
    opt = torch.optim.AdamW(m.parameters())
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    s = optimizer_checksum(opt)
    opt.state[m[0].weight]["exp_avg"][0, 0] += 1e-6
    assert optimizer_checksum(opt) != s


def _stream(rank, world=2, n=21, bs=3, seed=0):
    return ShardStream(n, lambda idx: torch.as_tensor(idx).tolist(), bs, rank, world, seed)


def test_shard_stream_disjoint_equal_and_resumable():
    s0, s1 = _stream(0), _stream(1)
    assert s0.batches_per_epoch == s1.batches_per_epoch == 3  # 21 // 2 = 10 per rank -> 3 batches of 3
    e0 = sum((s0.next() for _ in range(3)), [])
    e1 = sum((s1.next() for _ in range(3)), [])
    assert not set(e0) & set(e1) and len(e0) == len(e1) == 9
    nxt = s0.next()  # epoch 1 begins: a new permutation
    assert s0.state_dict()["epoch"] == 1 and s0.state_dict()["offset"] == 1
    state = s0.state_dict()
    ahead = [s0.next() for _ in range(5)]
    again = _stream(0)
    again.load_state_dict(state)
    assert [again.next() for _ in range(5)] == ahead and nxt not in ahead[:2]
    with pytest.raises(ValueError, match="batch_size=3, this run has 2"):
        _stream(0, bs=2).load_state_dict(state)
    with pytest.raises(ValueError, match="lower train.batch_size"):
        _stream(0, n=5, bs=3)
