"""``gaussian``: a diagonal Gaussian per chunk position (the baseline head).

BC:  loss_bc  = masked MSE(ACTION_MEAN, TARGET_CHUNK)                 trains the mean (the executed action)
     loss_std = masked Gaussian NLL(TARGET_CHUNK | mean.detach(), std) trains log_std by likelihood only
Detaching the mean in the NLL keeps the std term from re-weighting the mean's regression (a small std would
otherwise multiply the mean's gradient by 1/std^2, and a large one would mute it); the std still becomes the
calibrated spread RL fine-tuning starts exploring from. Positions factorise: log_prob masks padding exactly.

``head.std: state`` makes log_std a linear map of each position's readout (a state-dependent std); in both
modes it is clamped to [min_log_std, max_log_std] (min_log_std is the exploration floor).
``head.clip_actions``: a CLIPPED Gaussian on the normalised box [-1, 1] (what the env executes: the rollout
clamps every action to the env's bounds, and Meta-World's experts saturate at +-1). Samples are clamped to
the box and the log-prob is that of the clamped value: the Normal density inside, and at a bound the whole
mass beyond it, log Phi((-1 - mean) / std) or log Phi((mean - 1) / std). So the stored log-prob is the
probability of the action that ran, not of an unexecuted pre-clamp sample, and PPO's ratio compares the two
policies on what was executed (Fujita & Maeda 2018, "Clipped Action Policy Gradient").
Entropy and the analytic KL stay the unclipped Gaussian's: the entropy bonus is a stand-in, and the KL of
the clipped distributions is at most that of the Gaussians (clipping is a deterministic map: data processing).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads.base import LOG_SQRT_2PI, ActionHead, bc_inputs, packed, valid_mask
from vlaforge.policies.registry import register_head


def gaussian_bc_loss(td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
    """TensorDict with ACTION_MEAN, ACTION_LOG_STD, TARGET_CHUNK (B, K, A) [+ ACTION_PAD (B, K)] -> losses."""
    target, valid = bc_inputs(td, (keys.ACTION_MEAN, keys.ACTION_LOG_STD), "gaussian")
    mean = td.get(keys.ACTION_MEAN).float()  # (B, K, A)
    log_std = td.get(keys.ACTION_LOG_STD).float()  # (B, K, A)
    if mean.shape != target.shape or log_std.shape != mean.shape:
        raise ValueError(
            f"BCLoss: ACTION_MEAN {tuple(mean.shape)}, ACTION_LOG_STD {tuple(log_std.shape)} and TARGET_CHUNK "
            f"{tuple(target.shape)} must all be (B, K, A): policy chunk_size / action_dim must match the dataset"
        )
    valid = valid.to(mean.device)
    denom = (valid.sum() * mean.shape[-1]).clamp_min(1.0)  # number of real (position, dim) entries

    def masked_mean(x: torch.Tensor) -> torch.Tensor:  # (B, K, A) -> scalar over real entries
        return (x.sum(-1) * valid).sum() / denom

    loss_bc = masked_mean((mean - target).pow(2))
    inv_std = torch.exp(-log_std)
    loss_std = masked_mean(0.5 * ((target - mean.detach()) * inv_std).pow(2) + log_std + LOG_SQRT_2PI)
    with torch.no_grad():
        nll = masked_mean(0.5 * ((target - mean) * inv_std).pow(2) + log_std + LOG_SQRT_2PI)
        log_std_mean = masked_mean(log_std)
    return TensorDict(
        {
            "loss_bc": loss_bc,
            "loss_std": float(std_coef) * loss_std,
            "action_mse": loss_bc.detach(),
            "nll": nll,  # per (position, dim) entry
            "log_std_mean": log_std_mean,
            "valid_frac": valid.mean(),  # share of chunk positions that are not padding
        },
        batch_size=[],
    )


_AT_BOUND = 1e-6  # a clamped action sits exactly on the bound; float tolerance of that test


@register_head("gaussian")
class GaussianHead(ActionHead):
    """Mean from the readout token, a learned state-independent log_std per (K, A), clamped to
    [min_log_std, max_log_std]."""

    has_analytic_kl = True

    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__(cfg.chunk_size, action_dim)
        hc = cfg.head
        self.mean = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, action_dim))
        if hc.std == "state":  # per-position linear map of the readout, starting as the constant init_log_std
            self.log_std = nn.Linear(cfg.dim, action_dim)
            nn.init.zeros_(self.log_std.weight)
            nn.init.constant_(self.log_std.bias, float(hc.init_log_std))
        else:
            self.log_std = nn.Parameter(torch.full((cfg.chunk_size, action_dim), float(hc.init_log_std)))
        self.min_log_std, self.max_log_std = hc.min_log_std, hc.max_log_std
        self.clip_actions = bool(hc.clip_actions)

    def forward(self, readout: torch.Tensor) -> TensorDict:
        mean = self.mean(readout)  # (B, K, A)
        raw = self.log_std(readout) if isinstance(self.log_std, nn.Linear) else self.log_std.expand_as(mean)
        log_std = raw.clamp(self.min_log_std, self.max_log_std)  # (B, K, A)
        return TensorDict({keys.ACTION_MEAN: mean, keys.ACTION_LOG_STD: log_std}, batch_size=readout.shape[:1])

    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
        return gaussian_bc_loss(td, std_coef)

    def _check(self, action: torch.Tensor, out: TensorDictBase) -> None:
        expected = tuple(out.get(keys.ACTION_MEAN).shape)
        if tuple(action.shape) != expected:
            raise ValueError(f"action chunk must be (B, K, A) = {expected} (normalised), got {tuple(action.shape)}")

    def log_prob(self, out: TensorDictBase, action: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:
        """Sum over chunk positions and action dims of the Normal log-density; pad positions count 0. -> (B,)"""
        self._check(action, out)
        mean, log_std = out.get(keys.ACTION_MEAN), out.get(keys.ACTION_LOG_STD)
        z = (action - mean) * torch.exp(-log_std)
        lp = -0.5 * z.pow(2) - log_std - LOG_SQRT_2PI  # (B, K, A)
        if self.clip_actions:  # mass beyond the bound for actions at it: log Phi((-1 - mean)/std), log Phi((mean - 1)/std)
            inv = torch.exp(-log_std)
            low = torch.special.log_ndtr((-1.0 - mean) * inv)
            high = torch.special.log_ndtr((mean - 1.0) * inv)
            lp = torch.where(action <= -1.0 + _AT_BOUND, low, torch.where(action >= 1.0 - _AT_BOUND, high, lp))
        return (lp.sum(-1) * valid_mask(pad, mean)).sum(-1)  # (B,)

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:
        log_std = out.get(keys.ACTION_LOG_STD)
        ent = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)  # (B, K)
        return (ent * valid_mask(pad, log_std)).sum(-1)  # (B,)

    def sample(self, out: TensorDictBase, deterministic: bool = False,
               generator: torch.Generator | None = None) -> TensorDict:
        mean = out.get(keys.ACTION_MEAN)
        if deterministic:
            chunk = mean
        else:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            chunk = mean + noise * out.get(keys.ACTION_LOG_STD).exp()  # (B, K, A)
        if self.clip_actions:  # the action that runs (the env clamps to its box as well)
            chunk = chunk.clamp(-1.0, 1.0)
        return packed(chunk, self.log_prob(out, chunk))

    def analytic_kl(self, out: TensorDictBase, ref_out: TensorDictBase, pad: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, std) || N(ref_mean, ref_std)) summed over A and the executed positions -> (B,)."""
        mean, log_std = out.get(keys.ACTION_MEAN).float(), out.get(keys.ACTION_LOG_STD).float()
        ref_mean, ref_log_std = ref_out.get(keys.ACTION_MEAN).float(), ref_out.get(keys.ACTION_LOG_STD).float()
        var_ratio = torch.exp(2 * (log_std - ref_log_std))
        kl = ref_log_std - log_std + 0.5 * (var_ratio + ((mean - ref_mean) * torch.exp(-ref_log_std)).pow(2)) - 0.5
        return (kl.sum(-1) * valid_mask(pad, mean)).sum(-1)

    def reference_keys(self) -> tuple[str, ...]:
        return (keys.ACTION_MEAN, keys.ACTION_LOG_STD)

