"""Head "latent": the VLA predicts the latent action model's codes (latent pretraining, LAPA).

    readout (B, K, dim) -> N learned queries cross-attend to it -> LayerNorm -> Linear -> LATENT_LOGITS (B, N, C)

It emits no env actions: the bc stage after latent pretraining keeps the backbone and replaces this head by
policy.head (policies/latent_action/transfer.py). Sampling, log-probs and BC on actions are errors that say so.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads.base import ActionHead
from vlaforge.policies.registry import register_head

_NO_ACTIONS = ("the 'latent' head predicts latent action codes, not env actions: fine-tune the policy with a bc "
               "stage (which replaces the head by policy.head) before {what}")


@register_head("latent")
class LatentHead(ActionHead):
    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__(cfg.chunk_size, action_dim)
        lc = cfg.head.latent
        self.num_codes, self.codebook_size = lc.num_codes, lc.codebook_size
        self.queries = nn.Parameter(torch.randn(lc.num_codes, cfg.dim) * 0.02)  # (N, dim)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)
        self.logits = nn.Linear(cfg.dim, lc.codebook_size)

    def forward(self, readout: torch.Tensor) -> TensorDict:
        q = self.queries[None].expand(len(readout), -1, -1).to(readout.dtype)  # (B, N, dim)
        h, _ = self.attn(q, readout, readout, need_weights=False)
        logits = self.logits(self.norm(h + q))  # (B, N, C)
        return TensorDict({keys.LATENT_LOGITS: logits}, batch_size=readout.shape[:1])

    def codes(self, out: TensorDictBase) -> torch.Tensor:
        """The most likely latent action (B, N)."""
        return out.get(keys.LATENT_LOGITS).argmax(-1)

    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
        raise ValueError(_NO_ACTIONS.format(what="behaviour cloning on actions (train it with objective "
                                            "'latent_pretrain' in a latent_pretrain stage)"))

    def sample(self, out, deterministic=False, generator=None):
        raise ValueError(_NO_ACTIONS.format(what="acting in an environment"))

    def log_prob(self, out, chunk, pad=None, extras=None):
        raise ValueError(_NO_ACTIONS.format(what="RL"))

    def entropy(self, out, pad=None, extras=None):
        raise ValueError(_NO_ACTIONS.format(what="RL"))
