"""VLAPolicy: prepared TensorDict (processor output) -> an action head's output over the normalised chunk (+ value).

    [K action queries | V*T vision tokens | L language tokens | 1 state token]
        -> fusion transformer (pre-norm; language padding masked)
        -> the K query outputs = readout (B, K, dim) -> head (policy.head.type, vlaforge/policies/heads/)
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
from vlaforge.policies.heads import ValueHead  # importing the package registers every head
from vlaforge.policies.language import encoder, safe_padding_mask
from vlaforge.policies.registry import (
    HEAD_REGISTRY,
    LANGUAGE_REGISTRY,
    POLICY_REGISTRY,
    VISION_REGISTRY,
    register_policy,
)
from vlaforge.policies.spec import PolicySpec

# Imported for their registrations ("cnn", "efficientnet_lite0"); the optional backbone's package is
# imported only when that backbone is built.
from vlaforge.policies import efficientnet as _efficientnet  # noqa: F401
from vlaforge.policies import vision as _vision  # noqa: F401

_GROUPS = 4  # token types: action query, vision, language, state


class StateEncoder(nn.Module):
    """float (B, S) -> one token (B, 1, dim)."""

    def __init__(self, state_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.state_dim = state_dim

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"{keys.STATE_NORM} must be (B, S={self.state_dim}), got {tuple(state.shape)}")
        return self.net(state).unsqueeze(1)


@register_policy("vla")
class VLAPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.vision = VISION_REGISTRY.get(cfg.vision.type)(cfg, spec)
        self.language = LANGUAGE_REGISTRY.get(cfg.language.type)(cfg)
        self.state = StateEncoder(spec.state_dim, cfg.dim)
        self.queries = nn.Parameter(torch.randn(cfg.chunk_size, cfg.dim) * 0.02)  # (K, dim)
        self.type_embed = nn.Parameter(torch.zeros(_GROUPS, cfg.dim))
        self.fusion = encoder(cfg.dim, cfg.heads, cfg.layers, cfg.dropout)
        self.head = HEAD_REGISTRY.get(cfg.head.type)(cfg, spec.action_dim)
        self.value = ValueHead(cfg.dim) if cfg.value_head else None

    def forward(self, td: TensorDictBase) -> TensorDict:
        """td: PIXELS (B, V, 3, H, W), STATE_NORM (B, S), TOKENS (B, L), TOKENS_MASK (B, L)."""
        missing = [k for k in (keys.PIXELS, keys.STATE_NORM, keys.TOKENS, keys.TOKENS_MASK) if k not in td.keys()]
        if missing:
            raise KeyError(f"VLAPolicy.forward needs the processor's output; missing {missing} (run VLAProcessor first)")
        pixels, state = td.get(keys.PIXELS), td.get(keys.STATE_NORM)
        tokens, mask = td.get(keys.TOKENS), td.get(keys.TOKENS_MASK)
        b = pixels.shape[0]

        te = self.type_embed
        vis = self.vision(pixels) + te[1]  # (B, V*T, dim)
        lang = self.language(tokens, mask) + te[2]  # (B, L, dim)
        st = self.state(state) + te[3]  # (B, 1, dim)
        q = (self.queries + te[0]).expand(b, -1, -1)  # (B, K, dim)
        x = torch.cat([q, vis, lang, st], dim=1)  # (B, K + V*T + L + 1, dim)

        pad = torch.zeros(b, x.shape[1], dtype=torch.bool, device=x.device)  # True = ignore this key
        k, n_vis = q.shape[1], vis.shape[1]
        pad[:, k + n_vis : k + n_vis + lang.shape[1]] = safe_padding_mask(mask)
        readout = self.fusion(x, src_key_padding_mask=pad)[:, :k]  # (B, K, dim)

        out = self.head(readout)
        if self.value is not None:
            out.set(keys.VALUE, self.value(readout))
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
