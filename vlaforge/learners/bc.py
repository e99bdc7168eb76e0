"""Behaviour cloning: TensorDict (processor output + model output) in, TensorDict of losses out.

    loss_bc  = masked MSE(ACTION_MEAN, TARGET_CHUNK)                 trains the mean (the executed action)
    loss_std = masked Gaussian NLL(TARGET_CHUNK | mean.detach(), std) trains log_std by likelihood only

Detaching the mean in the NLL keeps the std term from re-weighting the mean's regression (a small std
would otherwise multiply the mean's gradient by 1/std^2, and a large one would mute it); the std still
becomes the calibrated spread RL fine-tuning starts exploring from. Everything is in the normalised
action space; chunk positions past the episode end (ACTION_PAD) count zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import register_objective

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class BCLoss(nn.Module):
    """No parameters of its own; ``std_coef`` scales the likelihood term of the std."""

    def __init__(self, std_coef: float = 1.0):
        super().__init__()
        self.std_coef = float(std_coef)

    def forward(self, td: TensorDictBase) -> TensorDict:
        need = (keys.ACTION_MEAN, keys.ACTION_LOG_STD, keys.TARGET_CHUNK)
        missing = [k for k in need if k not in td.keys()]
        if missing:
            raise KeyError(
                f"BCLoss needs {list(need)} (processor output with targets + model output); missing {missing}. "
                "Run the processor on a batch that holds ACTION_CHUNK, then merge the model output into it."
            )
        mean = td.get(keys.ACTION_MEAN).float()  # (B, K, A)
        log_std = td.get(keys.ACTION_LOG_STD).float()  # (B, K, A)
        target = td.get(keys.TARGET_CHUNK).float()  # (B, K, A)
        if mean.shape != target.shape or log_std.shape != mean.shape or mean.ndim != 3:
            raise ValueError(
                f"BCLoss: ACTION_MEAN {tuple(mean.shape)}, ACTION_LOG_STD {tuple(log_std.shape)} and TARGET_CHUNK "
                f"{tuple(target.shape)} must all be (B, K, A): policy chunk_size / action_dim must match the dataset"
            )
        b, k, a = mean.shape
        pad = td.get(keys.ACTION_PAD) if keys.ACTION_PAD in td.keys() else torch.zeros(b, k, dtype=torch.bool)
        if tuple(pad.shape) != (b, k):
            raise ValueError(f"BCLoss: ACTION_PAD must be (B, K) = {(b, k)}, got {tuple(pad.shape)}")
        valid = (~pad.bool()).to(mean.dtype).to(mean.device)  # (B, K) 1 = real action
        denom = (valid.sum() * a).clamp_min(1.0)  # number of real (position, dim) entries

        def masked_mean(x: torch.Tensor) -> torch.Tensor:  # (B, K, A) -> scalar over real entries
            return (x.sum(-1) * valid).sum() / denom

        loss_bc = masked_mean((mean - target).pow(2))
        inv_std = torch.exp(-log_std)
        nll_std = 0.5 * ((target - mean.detach()) * inv_std).pow(2) + log_std + _LOG_SQRT_2PI  # (B, K, A)
        loss_std = masked_mean(nll_std)
        with torch.no_grad():
            nll = masked_mean(0.5 * ((target - mean) * inv_std).pow(2) + log_std + _LOG_SQRT_2PI)
            log_std_mean = masked_mean(log_std)
            valid_frac = valid.mean()
        return TensorDict(
            {
                "loss_bc": loss_bc,
                "loss_std": self.std_coef * loss_std,
                "action_mse": loss_bc.detach(),
                "nll": nll,  # per (position, dim) entry
                "log_std_mean": log_std_mean,
                "valid_frac": valid_frac,  # share of chunk positions that are not padding
            },
            batch_size=[],
        )


@register_objective("bc")
def make_bc(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return BCLoss(std_coef=train.bc_std_coef)

