"""Vision backbones: pixels (B, V, 3, H, W) in [0, 1] -> tokens (B, V*T, dim).

Every camera goes through the SAME trunk (shared weights, cameras folded into the batch); each camera's
T tokens are pool_grid**2 average-pooled feature tokens plus (keypoints > 0) one spatial-softmax keypoint
token, then a learned (camera, token) embedding tells the fusion transformer which camera/slot it sees.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.registry import register_vision
from vlaforge.policies.spec import PolicySpec


class SpatialSoftmax(nn.Module):
    """Levine et al. 2016 (arXiv:1504.00702): per keypoint map, the softmax-weighted mean (x, y) in [-1, 1].

    features (N, C, h, w) -> keypoints (N, P, 2)
    """

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, kernel_size=1)
        # Shape (1,), not (): DeepSpeed broadcasts parameters as uint8 views, which fails on 0-dim tensors.
        self.log_temperature = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        logits = self.proj(features).flatten(2) / self.log_temperature.exp()  # (N, P, h*w)
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=features.dtype)  # bf16 under DeepSpeed
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=features.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)  # (h*w, 2)
        return attn @ grid  # (N, P, 2)


class TokenizedVision(nn.Module):
    """Shared per-camera trunk -> pooled + keypoint tokens. Subclasses build ``self.trunk`` (N,3,H,W)->(N,C,h,w)."""

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec, trunk: nn.Module, trunk_channels: int):
        super().__init__()
        self.trunk = trunk
        self.cameras = spec.num_cameras
        self.image_hw = spec.image_shape[1:3]
        self.grid = cfg.vision.pool_grid
        self.pool_proj = nn.Linear(trunk_channels, cfg.dim)
        self.keypoints = SpatialSoftmax(trunk_channels, cfg.vision.keypoints) if cfg.vision.keypoints else None
        self.kp_proj = nn.Linear(2 * cfg.vision.keypoints, cfg.dim) if cfg.vision.keypoints else None
        self.tokens_per_camera = self.grid**2 + (1 if cfg.vision.keypoints else 0)
        self.embed = nn.Parameter(torch.randn(self.cameras, self.tokens_per_camera, cfg.dim) * 0.02)
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.vision.freeze:
            self.trunk.requires_grad_(False)

    @property
    def num_tokens(self) -> int:
        return self.cameras * self.tokens_per_camera

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = pixels.shape
        if (v, h, w) != (self.cameras, *self.image_hw) or c != 3:
            raise ValueError(
                f"pixels must be (B, V={self.cameras}, 3, H={self.image_hw[0]}, W={self.image_hw[1]}) "
                f"as in the PolicySpec, got {tuple(pixels.shape)}"
            )
        feats = self.trunk(pixels.reshape(b * v, c, h, w))  # (B*V, C, h', w')
        pooled = F.adaptive_avg_pool2d(feats, self.grid).flatten(2).transpose(1, 2)  # (B*V, G*G, C)
        tokens = [self.pool_proj(pooled)]  # (B*V, G*G, dim)
        if self.keypoints is not None:
            kp = self.keypoints(feats).flatten(1)  # (B*V, 2P)
            tokens.append(self.kp_proj(kp).unsqueeze(1))  # (B*V, 1, dim)
        x = torch.cat(tokens, dim=1).reshape(b, v, self.tokens_per_camera, -1) + self.embed  # (B, V, T, dim)
        return self.norm(x.reshape(b, v * self.tokens_per_camera, -1))  # (B, V*T, dim)


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: no running statistics, so train/eval and rollout/learner behave the same.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.GELU(),
    )


@register_vision("cnn")
class CNNVision(TokenizedVision):
    """Small from-scratch conv net: a stride-2 block per entry of cfg.vision.channels (64 px -> 8x8 with
    the default [32, 64, 128]) plus one stride-1 block at the end for a larger receptive field."""

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        chans = list(cfg.vision.channels)
        layers, cin = [], 3
        for cout in chans:
            layers.append(_conv_block(cin, cout, stride=2))
            cin = cout
        layers.append(_conv_block(cin, cin, stride=1))
        super().__init__(cfg, spec, nn.Sequential(*layers), trunk_channels=cin)
