"""``tokens``: the chunk as discrete tokens (OpenVLA binning or a FAST-style DCT code), decoded autoregressively.

    tokens (B, N) = tokenizer.encode(chunk)                  vlaforge/policies/heads/action_tokenizers.py
    logits_i     = decoder(BOS, t_0 .. t_{i-1} | readout)    causal transformer, cross-attention to (B, K, dim)
    BC           = cross-entropy of the teacher-forced logits (bins: padded positions' tokens count 0)
    sample       = N decoding steps: softmax(logits / temperature) (rollouts) or argmax (deterministic), with
                   a key/value cache over the decoder's own layers (one token per step instead of
                   rerunning the prefix: ~N/2 x less work; the same function as the teacher-forced pass)
    log_prob     = sum_i log softmax(logits_i / temperature)[t_i] at the STORED tokens (HEAD_EXTRAS /
                   ACTION_TOKENS): exact, from the token distribution; bins count only executed positions
                   (the sequence is in time order, so that is the exact marginal of the executed prefix);
                   DCT coefficients mix all positions, so every token counts.
    entropy      = sum_i H(softmax(logits_i / temperature)) along the stored sequence (the standard
                   per-token entropy of autoregressive policies; its expectation is the sequence entropy).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads.action_tokenizers import BinTokenizer, DCTTokenizer
from vlaforge.policies.heads.base import ActionHead, bc_inputs, packed, valid_mask
from vlaforge.policies.registry import register_head

TOKENIZERS = {
    "bins": lambda k, a, c: BinTokenizer(k, a, c.num_bins, c.token_range),
    "dct": lambda k, a, c: DCTTokenizer(k, a, c.dct_keep, c.dct_scale, c.dct_max_abs, c.token_range),
}


@register_head("tokens")
class TokenHead(ActionHead):
    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__(cfg.chunk_size, action_dim)
        tc = cfg.head.tokens
        self.tokenizer = TOKENIZERS[tc.tokenizer](cfg.chunk_size, action_dim, tc)
        self.masks_positions = tc.tokenizer == "bins"
        self.temperature = float(tc.temperature)
        n, v, d = self.tokenizer.seq_len, self.tokenizer.vocab_size, cfg.dim
        self.bos = v  # the extra embedding row that starts every sequence
        self.embed = nn.Embedding(v + 1, d)
        self.pos = nn.Parameter(torch.randn(n, d) * 0.02)  # (N, dim)
        layer = nn.TransformerDecoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, tc.layers)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, v))
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(n), persistent=False)

    # -- the decoder ----------------------------------------------------------------------------------
    def _logits(self, features: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """features (B, K, dim), prev int (B, i) = tokens before each step (BOS first) -> logits (B, i, V)."""
        i = prev.shape[1]
        x = self.embed(prev) + self.pos[:i]
        h = self.decoder(x, features, tgt_mask=self.causal[:i, :i].to(x.dtype), tgt_is_causal=True)
        return self.out(h).float()

    def _teacher_forced(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) stored tokens -> logits (B, N, V) of every step given the previous tokens."""
        bos = torch.full_like(tokens[:, :1], self.bos)
        return self._logits(features, torch.cat([bos, tokens[:, :-1]], dim=1))

    def _token_valid(self, pad: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        """(B, N) float: which tokens count (bins: tokens of executed positions; dct: all)."""
        b, n = features.shape[0], self.tokenizer.seq_len
        if pad is None or not self.masks_positions:
            return torch.ones(b, n, device=features.device)
        valid = valid_mask(pad, features)  # (B, K)
        return valid[:, self.tokenizer.token_position.to(features.device)]

    def _tokens(self, extras: TensorDictBase | None, b: int) -> torch.Tensor:
        tokens = self._extra(extras, keys.ACTION_TOKENS, "tokens head")
        if tuple(tokens.shape) != (b, self.tokenizer.seq_len):
            raise ValueError(f"tokens head: {keys.ACTION_TOKENS} must be (B, N) = ({b}, {self.tokenizer.seq_len}), "
                             f"got {tuple(tokens.shape)}: the policy's tokenizer settings differ from the rollout's")
        return tokens.long()

    # -- the interface --------------------------------------------------------------------------------
    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
        target, valid = bc_inputs(td, (keys.HEAD_FEATURES,), "tokens")
        features = td.get(keys.HEAD_FEATURES)
        self._check_chunk(target)
        tokens = self.tokenizer.encode(target)  # (B, N)
        logits = self._teacher_forced(features, tokens)  # (B, N, V)
        w = self._token_valid(~valid.bool(), features) if self.masks_positions else torch.ones_like(tokens, dtype=torch.float32)
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")  # (B, N)
        loss = (ce * w).sum() / w.sum().clamp_min(1.0)
        with torch.no_grad():
            pred = logits.argmax(-1)
            acc = ((pred == tokens).float() * w).sum() / w.sum().clamp_min(1.0)
            vpos = valid[..., None]
            denom = (valid.sum() * target.shape[-1]).clamp_min(1.0)
            tf_mse = ((self.tokenizer.decode(pred) - target).pow(2) * vpos).sum() / denom
            rt_mse = ((self.tokenizer.decode(tokens) - target).pow(2) * vpos).sum() / denom
        return TensorDict({"loss_tokens": loss, "token_accuracy": acc,
                           "action_mse_teacher_forced": tf_mse,  # argmax decode given the true previous tokens
                           "tokenizer_mse": rt_mse,  # decode(encode(target)) vs target: the code's own error
                           "valid_frac": valid.mean()}, batch_size=[])

    def sample(self, out: TensorDictBase, deterministic: bool = False,
               generator: torch.Generator | None = None) -> TensorDict:
        features = self._features(out)
        b, n = features.shape[0], self.tokenizer.seq_len
        state = self._cache_init(features)
        tok = torch.full((b,), self.bos, dtype=torch.long, device=features.device)
        lp = torch.zeros(b, device=features.device)
        out_tokens = []
        for i in range(n):
            logp = torch.log_softmax(self._cached_step(state, tok, i) / self.temperature, dim=-1)  # (B, V)
            if deterministic:
                tok = logp.argmax(-1)
            else:
                tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            lp = lp + logp.gather(-1, tok[:, None]).squeeze(-1)
            out_tokens.append(tok)
        prev = torch.stack([torch.full_like(tok, self.bos)] + out_tokens, dim=1)
        tokens = prev[:, 1:]
        return packed(self.tokenizer.decode(tokens).to(features.dtype), lp, {keys.ACTION_TOKENS: tokens})

    # -- incremental decoding: the decoder layers (pre-norm, as built above) one token at a time ------------
    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """q (B, 1, d), k / v (B, L, d) -> (B, 1, d): multi-head scaled dot-product attention."""
        b, lq, d = q.shape
        split = lambda x: x.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731 -- (B, h, L, d/h)
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, lq, d)

    def _cache_init(self, features: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per layer: cross-attention keys / values of the readout (fixed) and empty self-attention caches."""
        state = []
        for layer in self.decoder.layers:
            ca, d = layer.multihead_attn, features.shape[-1]
            k = F.linear(features, ca.in_proj_weight[d : 2 * d], ca.in_proj_bias[d : 2 * d])
            v = F.linear(features, ca.in_proj_weight[2 * d :], ca.in_proj_bias[2 * d :])
            state.append({"mem_k": k, "mem_v": v, "k": features[:, :0], "v": features[:, :0]})
        return state

    def _cached_step(self, state: list[dict[str, torch.Tensor]], tok: torch.Tensor, i: int) -> torch.Tensor:
        """Previous token (B,) at step i -> logits (B, V) of token i; appends to the self-attention caches."""
        x = (self.embed(tok) + self.pos[i])[:, None]  # (B, 1, d)
        d = x.shape[-1]
        for layer, st in zip(self.decoder.layers, state):
            sa, ca = layer.self_attn, layer.multihead_attn
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
            st["k"], st["v"] = torch.cat([st["k"], k], 1), torch.cat([st["v"], v], 1)
            x = x + sa.out_proj(self._attend(q, st["k"], st["v"], sa.num_heads))
            q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            x = x + ca.out_proj(self._attend(q, st["mem_k"], st["mem_v"], ca.num_heads))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.out(x[:, 0]).float()

    def _per_token(self, out: TensorDictBase, extras: TensorDictBase | None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._features(out)
        tokens = self._tokens(extras, features.shape[0])
        logp = torch.log_softmax(self._teacher_forced(features, tokens) / self.temperature, dim=-1)  # (B, N, V)
        return logp, tokens

    def log_prob(self, out: TensorDictBase, chunk: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:
        self._check_chunk(chunk)
        logp, tokens = self._per_token(out, extras)
        lp = logp.gather(-1, tokens[..., None]).squeeze(-1)  # (B, N)
        return (lp * self._token_valid(pad, self._features(out))).sum(-1)

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:
        logp, _ = self._per_token(out, extras)
        ent = -(logp.exp() * logp).sum(-1)  # (B, N)
        return (ent * self._token_valid(pad, self._features(out))).sum(-1)
