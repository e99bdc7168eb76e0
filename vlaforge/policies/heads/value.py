"""The critic of PPO, on the same backbone readout as the action head (any head type)."""

from __future__ import annotations

import torch
import torch.nn as nn


class ValueHead(nn.Module):
    """Mean of the readout tokens -> MLP -> (B, 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return self.net(readout.mean(dim=1))  # (B, K, dim) -> (B, 1)
