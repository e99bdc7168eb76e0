"""VLAPolicy: prepared TensorDict (processor output) -> an action head's output over the normalised chunk (+ value).

    prepared inputs -> backbone (policy.backbone.type: "vlaforge" fusion | "hf" VLM; policies/backbones/)
        -> readout (B, K, dim) -> head (policy.head.type, vlaforge/policies/heads/)
                                    gaussian: ACTION_MEAN, ACTION_LOG_STD (B, K, A)
                                    tokens / diffusion / flow: HEAD_FEATURES (B, K, dim)
                               -> value head (optional) -> VALUE (B, 1)
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads import value as _value  # importing the package registers every head
from vlaforge.policies.registry import BACKBONE_REGISTRY, HEAD_REGISTRY, POLICY_REGISTRY, register_policy
from vlaforge.policies.spec import PolicySpec

# Imported for their registrations (backbones "vlaforge", "hf"; vision "cnn", "efficientnet_lite0"; language
# "hashed", "minilm"); optional packages (transformers, peft, ...) are imported only when built.
from vlaforge.policies import backbones as _backbones  # noqa: F401
from vlaforge.policies.backbones.fusion import StateEncoder  # noqa: F401  (re-export: reward_model.py)


@register_policy("vla")
class VLAPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.backbone = BACKBONE_REGISTRY.get(cfg.backbone.type)(cfg, spec)
        self.head = HEAD_REGISTRY.get(cfg.head.type)(cfg, spec.action_dim)
        self.value = _value.build_critic(cfg.critic, cfg.dim, spec.state_dim) if cfg.value_head else None

    def forward(self, td: TensorDictBase) -> TensorDict:
        """td: the processor's output for this backbone (PIXELS/TOKENS or VLM_INPUTS, + STATE_NORM)."""
        readout = self.backbone(td)  # (B, K, dim)
        out = self.head(readout)
        if self.value is not None:
            out.set(keys.VALUE, self.value(readout, td))  # (B, 1)
        return out

    # -- distribution helpers (delegate to the head; all in the normalised action space) -------------
    def act(self, out: TensorDictBase, deterministic: bool = False, generator: torch.Generator | None = None) -> TensorDict:
        """-> TensorDict [B]: ACTION_CHUNK (B, K, A), LOG_PROB (B,) of the whole chunk, HEAD_EXTRAS (what
        log_prob needs besides the chunk; the rollout stores it)."""
        return self.head.sample(out, deterministic, generator)

    def sample(self, out: TensorDictBase, deterministic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The chunk only (B, K, A) (evaluation); RL rollouts use ``act`` to keep the head's extras."""
        return self.act(out, deterministic, generator).get(keys.ACTION_CHUNK)

    def log_prob(self, out: TensorDictBase, action_chunk: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:
        return self.head.log_prob(out, action_chunk, pad, extras)  # (B,)

    def log_prob_terms(self, action_chunk: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.log_prob_terms(action_chunk, pad)  # (B,)

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:
        return self.head.entropy(out, pad, extras)  # (B,)

    # -- what learners optimise and broadcast ---------------------------------------------------------
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = self.trainable_parameters() if trainable_only else list(self.parameters())
        return sum(p.numel() for p in params)


def build_policy(cfg: PolicyConfig, spec: PolicySpec) -> nn.Module:
    return POLICY_REGISTRY.get(cfg.type)(cfg, spec)
