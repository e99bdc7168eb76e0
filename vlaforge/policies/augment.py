"""Training-time image augmentation on prepared pixels (float (N, 3, H, W))."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(pixels: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ random shift (Kostrikov et al. 2020, arXiv:2004.13649): replicate-pad by ``pad``, then crop a
    random H x W window per image. Translations of up to +-pad pixels; the shape is unchanged.

    pixels: float (N, 3, H, W) -> float (N, 3, H, W)
    """
    if pad <= 0:
        return pixels
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (pad, pad, pad, pad), mode="replicate")  # (N, 3, H+2p, W+2p)
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(pixels.device)  # (N, 2): dy, dx
    rows = off[:, 0:1] + torch.arange(h, device=pixels.device)  # (N, H)
    cols = off[:, 1:2] + torch.arange(w, device=pixels.device)  # (N, W)
    idx = torch.arange(n, device=pixels.device)[:, None, None]
    # Advanced indices separated by a slice move to the front: (N, H, W, 3).
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
