"""Language backbones: tokens (B, L) int64 + mask (B, L) bool -> language tokens (B, L, dim)."""

from __future__ import annotations

import torch
import torch.nn as nn

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.registry import register_language


def safe_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """Attention key-padding mask (True = ignore) from a token mask (True = real token).

    A row with no real token (empty instruction) would mask every key and make softmax return NaN:
    let it attend to its first (pad) position instead.
    """
    mask = mask.clone()
    mask[:, 0] |= ~mask.any(dim=1)
    return ~mask


def encoder(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
    )
    # enable_nested_tensor=False: the nested-tensor fast path only works with post-norm and warns otherwise.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_language("hashed")
class HashedLanguage(nn.Module):
    """Embeddings of hashed word ids (processor's HashedTokenizer) + `layers` masked transformer layers."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        lc = cfg.language
        self.embed = nn.Embedding(lc.vocab_size, cfg.dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(lc.max_tokens, cfg.dim) * 0.02)
        self.encoder = encoder(cfg.dim, cfg.heads, lc.layers, cfg.dropout) if lc.layers > 0 else None
        self.norm = nn.LayerNorm(cfg.dim)
        self.vocab_size, self.max_tokens = lc.vocab_size, lc.max_tokens
        if lc.freeze:  # embeddings + encoder fixed; the output LayerNorm still trains
            for m in (self.embed, self.encoder):
                if m is not None:
                    m.requires_grad_(False)
            self.pos.requires_grad_(False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length = tokens.shape
        if length > self.max_tokens or tokens.dtype != torch.int64 or mask.shape != tokens.shape:
            raise ValueError(
                f"tokens must be int64 (B, L<={self.max_tokens}) with a bool mask of the same shape, "
                f"got {tokens.dtype} {tuple(tokens.shape)} / mask {tuple(mask.shape)}"
            )
        x = self.embed(tokens) + self.pos[:length]  # (B, L, dim)
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=safe_padding_mask(mask))
        return self.norm(x)  # (B, L, dim)
