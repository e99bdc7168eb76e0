"""Action tokenizers of the ``tokens`` head: a normalised chunk (B, K, A) <-> a token sequence (B, N).

    bins  per-dimension uniform binning (RT-2 / OpenVLA): N = K * A tokens, position-major (all dims of
          position 0, then position 1, ...), vocabulary num_bins; decode = bin centre. Round trip error
          <= half a bin (range / num_bins) inside [-range, range].
    dct   FAST-style (Pertsch et al. 2025): DCT-II (orthonormal) of each action dim along the chunk's time
          axis, the first ``keep`` (lowest-frequency) coefficients scaled by ``scale`` and rounded to integers
          clipped to [-max_abs, max_abs]; N = keep * A tokens, coefficient-major (the DC terms of every dim
          first, as FAST flattens), vocabulary 2 * max_abs + 1. FAST then compresses that integer sequence
          with BPE; we stop before BPE (the sequence is already <= K * A tokens here, and a BPE vocabulary
          would have to be fitted and shipped per dataset). Round trip: with keep = K the per-dim L2 error
          is <= sqrt(K) * 0.5 / scale (orthonormal transform of the rounding error); dropped coefficients
          add the energy of the chunk's high frequencies.
Plain tensor transforms without parameters: the head owns one (its settings are in its config), so a saved
policy rebuilds the same tokenizer from its config.
"""

from __future__ import annotations

import math

import torch


class BinTokenizer:
    def __init__(self, chunk_size: int, action_dim: int, num_bins: int, token_range: float):
        self.k, self.a, self.num_bins, self.range = chunk_size, action_dim, int(num_bins), float(token_range)
        self.vocab_size = self.num_bins
        self.seq_len = chunk_size * action_dim
        # token i covers chunk position i // A: the sequence is in time order, so a prefix of positions is a
        # prefix of tokens (exact log-prob of the executed positions)
        self.token_position = torch.arange(self.seq_len) // action_dim

    def encode(self, chunk: torch.Tensor) -> torch.Tensor:
        """float (B, K, A) -> int64 (B, K*A)."""
        u = (chunk.float().clamp(-self.range, self.range) + self.range) / (2 * self.range)  # [0, 1]
        return (u * self.num_bins).floor().long().clamp(0, self.num_bins - 1).reshape(chunk.shape[0], -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int (B, K*A) -> float (B, K, A): bin centres."""
        centres = (tokens.float() + 0.5) / self.num_bins * (2 * self.range) - self.range
        return centres.reshape(tokens.shape[0], self.k, self.a)


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): coef = D @ x, x = D.T @ coef."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


class DCTTokenizer:
    def __init__(self, chunk_size: int, action_dim: int, keep: int | None, scale: float, max_abs: int,
                 token_range: float):
        keep = chunk_size if keep is None else int(keep)
        if keep > chunk_size:
            raise ValueError(f"policy.head.tokens.dct_keep ({keep}) cannot exceed policy.chunk_size ({chunk_size})")
        self.k, self.a, self.keep, self.scale, self.max_abs = chunk_size, action_dim, keep, float(scale), int(max_abs)
        self.range = float(token_range)
        self.vocab_size = 2 * self.max_abs + 1
        self.seq_len = keep * action_dim
        self.d = dct_matrix(chunk_size)  # (K, K)
        # |coef| <= sqrt(K) * range for a chunk inside [-range, range] (Cauchy-Schwarz on a unit row)
        worst = math.sqrt(chunk_size) * self.range * self.scale
        if worst > self.max_abs + 0.5:
            raise ValueError(f"policy.head.tokens: dct_scale * sqrt(chunk_size) * token_range = {worst:.1f} exceeds "
                             f"dct_max_abs = {self.max_abs}: large coefficients would be clipped; raise dct_max_abs "
                             f"to >= {math.ceil(worst)} or lower dct_scale")

    def coefficients(self, chunk: torch.Tensor) -> torch.Tensor:
        """float (B, K, A) -> (B, keep, A) DCT coefficients along time."""
        x = chunk.float().clamp(-self.range, self.range)
        return torch.einsum("fk,bka->bfa", self.d.to(x.device), x)[:, : self.keep]

    def encode(self, chunk: torch.Tensor) -> torch.Tensor:
        """float (B, K, A) -> int64 (B, keep*A), coefficient-major, values in [0, 2 * max_abs]."""
        q = torch.round(self.coefficients(chunk) * self.scale).clamp(-self.max_abs, self.max_abs).long()
        return (q + self.max_abs).reshape(chunk.shape[0], -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int (B, keep*A) -> float (B, K, A); dropped high frequencies are zero."""
        b = tokens.shape[0]
        coef = torch.zeros(b, self.k, self.a, device=tokens.device)
        coef[:, : self.keep] = (tokens.float() - self.max_abs).reshape(b, self.keep, self.a) / self.scale
        return torch.einsum("fk,bfa->bka", self.d.to(tokens.device), coef)
