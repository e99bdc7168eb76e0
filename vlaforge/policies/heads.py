"""Action heads (readout features (B, K, dim) -> an action distribution) and the optional value head.

Everything lives in the NORMALISED action space (processor.normalize_action); the runner unnormalises.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.registry import register_head

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _valid_mask(pad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, K) float: 1 on real chunk positions, 0 on padding (dataset pads past the episode end)."""
    if pad is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    if pad.shape != like.shape[:2]:
        raise ValueError(f"pad must be (B, K) = {tuple(like.shape[:2])}, got {tuple(pad.shape)}")
    return (~pad.bool()).to(like.dtype)


@register_head("gaussian")
class GaussianHead(nn.Module):
    """Diagonal Gaussian per chunk position: mean from the readout token, a learned state-independent
    log_std per (K, A), clamped to [min_log_std, max_log_std]."""

    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__()
        hc = cfg.head
        self.mean = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, action_dim))
        self.log_std = nn.Parameter(torch.full((cfg.chunk_size, action_dim), float(hc.init_log_std)))
        self.min_log_std, self.max_log_std = hc.min_log_std, hc.max_log_std
        self.chunk_size, self.action_dim = cfg.chunk_size, action_dim

    def forward(self, readout: torch.Tensor) -> TensorDict:
        mean = self.mean(readout)  # (B, K, A)
        log_std = self.log_std.clamp(self.min_log_std, self.max_log_std).expand_as(mean)  # (B, K, A)
        return TensorDict({keys.ACTION_MEAN: mean, keys.ACTION_LOG_STD: log_std}, batch_size=readout.shape[:1])

    def _check(self, action: torch.Tensor, out: TensorDict) -> None:
        expected = tuple(out.get(keys.ACTION_MEAN).shape)
        if tuple(action.shape) != expected:
            raise ValueError(f"action chunk must be (B, K, A) = {expected} (normalised), got {tuple(action.shape)}")

    def log_prob(self, out: TensorDict, action: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over chunk positions and action dims of the Normal log-density; pad positions count 0. -> (B,)"""
        self._check(action, out)
        mean, log_std = out.get(keys.ACTION_MEAN), out.get(keys.ACTION_LOG_STD)
        z = (action - mean) * torch.exp(-log_std)
        lp = -0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI  # (B, K, A)
        return (lp.sum(-1) * _valid_mask(pad, mean)).sum(-1)  # (B,)

    def entropy(self, out: TensorDict, pad: torch.Tensor | None = None) -> torch.Tensor:
        log_std = out.get(keys.ACTION_LOG_STD)
        ent = (0.5 + _LOG_SQRT_2PI + log_std).sum(-1)  # (B, K)
        return (ent * _valid_mask(pad, log_std)).sum(-1)  # (B,)

    def sample(self, out: TensorDict, deterministic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = out.get(keys.ACTION_MEAN)
        if deterministic:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise * out.get(keys.ACTION_LOG_STD).exp()  # (B, K, A)


class ValueHead(nn.Module):
    """Critic on the shared backbone: mean of the readout tokens -> MLP -> (B, 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return self.net(readout.mean(dim=1))  # (B, K, dim) -> (B, 1)
