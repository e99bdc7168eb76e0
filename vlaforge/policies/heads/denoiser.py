"""The network the diffusion and flow heads share: (noisy chunk, time, readout) -> (B, K, A).

    h = W_in x (B, K, dim) + readout (B, K, dim) + MLP(sin/cos(t)) (B, 1, dim)
      -> bidirectional transformer over the K chunk positions -> LayerNorm -> W_out -> (B, K, A)
Adding the readout per position (rather than cross-attending to the whole prefix) keeps the denoiser small:
the backbone already fused image, language and state into the K readout tokens once per decision, and the
S denoising steps only rerun this block (pi0's "action expert" is the same idea at scale).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlaforge.policies.heads.base import sinusoidal


class ChunkDenoiser(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, action_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(action_dim, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x (B, K, A), t float (B,) in [0, 1], features (B, K, dim) -> (B, K, A) (float32)."""
        temb = self.time(sinusoidal(t, self.dim).to(features.dtype))[:, None]  # (B, 1, dim)
        h = self.inp(x.to(features.dtype)) + features + temb
        return self.out(self.body(h)).float()
