"""Behaviour cloning: TensorDict (processor output + model output) in, TensorDict of losses out.

The loss is the action head's own (``head.bc_loss``, vlaforge/policies/heads/): the gaussian head's masked
MSE on the mean + likelihood of the std (mean detached), the token head's cross-entropy, the diffusion head's
noise prediction, the flow head's velocity regression. Everything is in the normalised action space; chunk
positions past the episode end (ACTION_PAD) count zero.
"""

from __future__ import annotations

import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import register_objective
from vlaforge.policies.heads import gaussian_bc_loss


class BCLoss(nn.Module):
    """No parameters of its own. ``head``: the policy's action head (None: the gaussian loss on ACTION_MEAN /
    ACTION_LOG_STD); ``std_coef`` scales the likelihood term of a std learned by BC (gaussian)."""

    def __init__(self, std_coef: float = 1.0, head: nn.Module | None = None):
        super().__init__()
        self.std_coef = float(std_coef)
        object.__setattr__(self, "_head", head)  # not a submodule: the policy owns (and DeepSpeed wraps) it

    def forward(self, td: TensorDictBase) -> TensorDict:
        if self._head is None:
            return gaussian_bc_loss(td, self.std_coef)
        return self._head.bc_loss(td, self.std_coef)


@register_objective("bc")
def make_bc(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return BCLoss(std_coef=train.bc_std_coef, head=getattr(policy, "head", None))
