"""Objective ``latent_action``: the latent action model's loss. TensorDict (LAMProcessor output + LAM output) in,
TensorDict of loss_* terms and detached diagnostics out.

    loss_recon  MSE(predicted o_{t+k}, real o_{t+k}) over pixels in [0, 1]
    loss_quant  the quantizer's own term (vq_ema: commitment; nsvq / fsq: 0)
    copy_mse    MSE of the "nothing moves" prediction o_t: the forward model must beat it, by the codes
    recon_gain  copy_mse / recon mse (> 1: the codes carry the change)
    perplexity  exp(entropy) of this batch's code usage per position, mean over the N positions (1 = every pair
                gets the same code there, C = uniform)
    loss_action LAOM only (latent.model.action_loss_coef > 0): coef x MSE(action decoder, LAM_ACTIONS) on the
                labelled rows (LAM_HAS_ACTIONS); the video rows' reconstruction terms are unchanged
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import register_objective


def counts_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of histograms ``counts`` (..., C) -> (...): 1 = one code, C = uniform."""
    p = counts.float() / counts.float().sum(-1, keepdim=True).clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum(-1))


def perplexity(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over code positions of the perplexity of each position's codes; ``codes`` (B, N) in [0, size)."""
    return counts_perplexity(torch.nn.functional.one_hot(codes.reshape(len(codes), -1), size).sum(0)).mean()


class LatentActionLoss(nn.Module):
    def __init__(self, codebook_size: int, action_coef: float = 0.0):
        super().__init__()
        self.codebook_size, self.action_coef = int(codebook_size), float(action_coef)

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
        out = TensorDict({"loss_recon": recon, "loss_quant": aux, "copy_mse": copy,
                          "recon_gain": copy / recon.detach().clamp_min(1e-12), "perplexity": ppl}, batch_size=[])
        if self.action_coef > 0:
            labelled = td.get(keys.LAM_HAS_ACTIONS)  # (B,) bool
            err = (td.get(keys.LAM_ACTION_PRED).float() - td.get(keys.LAM_ACTIONS).float()).pow(2).mean(-1)  # (B,)
            mse = (err * labelled).sum() / labelled.sum().clamp_min(1)
            out.update({"loss_action": self.action_coef * mse, "action_mse": mse.detach()})
        return out


@register_objective("latent_action")
def make_latent_action(train: TrainConfig, model: nn.Module) -> nn.Module:
    return LatentActionLoss(model.cfg.codebook_size, model.cfg.action_loss_coef)
