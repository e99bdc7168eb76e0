"""The critics of PPO, by name in CRITIC_REGISTRY (``policy.critic``); each maps (readout, prepared inputs) -> (B, 1).

"readout": an MLP on the mean of the backbone's action-query readout -- the trunk is shared with the actor, so
  the value loss moves the actor's features unless the learner detaches them (train.ppo.value_backbone_grad).
"state": its own MLP trunk on the processor's normalised state vector (Meta-World's 39-d observation holds
  the hand, object and goal positions, everything the return depends on): the critic shares no parameter
  with the actor, can use its own learning rate (train.ppo.critic_lr) and cannot disturb the BC features.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.policies.registry import Registry

CRITIC_REGISTRY: Registry = Registry("critic", fill=None)  # filled below, in this module
register_critic = CRITIC_REGISTRY.register


@register_critic("readout")
class ValueHead(nn.Module):
    """Mean of the readout tokens -> MLP -> (B, 1)."""

    def __init__(self, dim: int, state_dim: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, readout: torch.Tensor, td: TensorDictBase | None = None) -> torch.Tensor:
        return self.net(readout.mean(dim=1))  # (B, K, dim) -> (B, 1)


@register_critic("state")
class StateValueHead(nn.Module):
    """Normalised state (B, S) -> 2 x 256 tanh MLP -> (B, 1); ignores the readout (no shared parameters)."""

    hidden = 256

    def __init__(self, dim: int, state_dim: int):
        super().__init__()
        h = self.hidden
        self.net = nn.Sequential(nn.Linear(state_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))

    def forward(self, readout: torch.Tensor, td: TensorDictBase | None = None) -> torch.Tensor:
        if td is None or keys.STATE_NORM not in td.keys():
            raise KeyError(f"critic 'state' reads {keys.STATE_NORM!r} from the processor output (B, S); "
                           "pass the prepared TensorDict")
        return self.net(td.get(keys.STATE_NORM).to(self.net[0].weight.dtype))  # (B, 1)


def build_critic(name: str, dim: int, state_dim: int) -> nn.Module:
    return CRITIC_REGISTRY.get(name)(dim, state_dim)
