"""Objective ``latent_pretrain``: the VLA's latent head predicts the latent action model's codes of (o_t, o_{t+k})
from o_t and the instruction alone. TensorDict (processor output + LATENT_CODES + model output) in:

    loss_latent    cross-entropy of LATENT_LOGITS (B, N, C) against LATENT_CODES (B, N), mean over N
    code_accuracy  share of the N codes predicted exactly (argmax)
    chance         share the most frequent code of the batch would get (what accuracy must beat)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import register_objective


class LatentPretrainLoss(nn.Module):
    def forward(self, td: TensorDictBase) -> TensorDict:
        missing = [k for k in (keys.LATENT_LOGITS, keys.LATENT_CODES) if k not in td.keys()]
        if missing:
            raise KeyError(f"latent_pretrain loss needs the latent head's output and the LAM's codes; missing {missing} "
                           "(policy.head must be 'latent' and the batch labelled by the latent action model)")
        logits, codes = td.get(keys.LATENT_LOGITS).float(), td.get(keys.LATENT_CODES).long()
        if logits.shape[:2] != codes.shape:
            raise ValueError(f"{keys.LATENT_LOGITS} {tuple(logits.shape)} does not match {keys.LATENT_CODES} "
                             f"{tuple(codes.shape)}: the latent head and the latent action model disagree on N")
        loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == codes).float().mean()
            chance = torch.bincount(codes.flatten()).max().float() / codes.numel()
        return TensorDict({"loss_latent": loss, "code_accuracy": acc, "chance": chance}, batch_size=[])


@register_objective("latent_pretrain")
def make_latent_pretrain(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return LatentPretrainLoss()
