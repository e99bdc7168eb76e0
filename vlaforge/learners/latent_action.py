"""Objective ``latent_action``: the latent action model's loss. TensorDict (LAMProcessor output + LAM output) in,
TensorDict of loss_* terms and detached diagnostics out.

    loss_recon  MSE(predicted o_{t+k}, real o_{t+k}) over pixels in [0, 1]
    loss_quant  the quantizer's own term (vq_ema: commitment; nsvq / fsq: 0)
    copy_mse    MSE of the "nothing moves" prediction o_t: the forward model must beat it, by the codes
    recon_gain  copy_mse / recon mse (> 1: the codes carry the change)
    perplexity  exp(entropy) of this batch's code usage (1 = one code, C = uniform)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import register_objective


def perplexity(codes: torch.Tensor, size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram of ``codes`` (any shape, values in [0, size))."""
    p = torch.bincount(codes.reshape(-1), minlength=size).float()
    p = p / p.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class LatentActionLoss(nn.Module):
    def __init__(self, codebook_size: int):
        super().__init__()
        self.codebook_size = int(codebook_size)

    def forward(self, td: TensorDictBase) -> TensorDict:
        missing = [k for k in (keys.LAM_PRED, keys.LAM_FRAMES, keys.LAM_NEXT_FRAMES, keys.LATENT_CODES) if k not in td.keys()]
        if missing:
            raise KeyError(f"latent_action loss needs the LAMProcessor output merged with the LAM output; missing {missing}")
        target = td.get(keys.LAM_NEXT_FRAMES).float()
        recon = F.mse_loss(td.get(keys.LAM_PRED).float(), target)
        aux = td.get(keys.LAM_AUX_LOSS).float().mean() if keys.LAM_AUX_LOSS in td.keys() else recon * 0.0
        with torch.no_grad():
            copy = F.mse_loss(td.get(keys.LAM_FRAMES).float(), target)
            ppl = perplexity(td.get(keys.LATENT_CODES), self.codebook_size)
        return TensorDict({"loss_recon": recon, "loss_quant": aux, "copy_mse": copy,
                           "recon_gain": copy / recon.detach().clamp_min(1e-12), "perplexity": ppl}, batch_size=[])


@register_objective("latent_action")
def make_latent_action(train: TrainConfig, model: nn.Module) -> nn.Module:
    return LatentActionLoss(model.cfg.codebook_size)
