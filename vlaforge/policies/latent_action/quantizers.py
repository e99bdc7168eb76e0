"""Quantizers of the latent action model, one registry (``latent.model.quantizer``).

    quantizer(z float (B, N, D)) -> Quantized: out (B, N, D) what the forward model sees (gradient reaches z),
                                               codes int64 (B, N) in [0, C), aux_loss scalar (added to the loss)

Every quantizer counts code usage while training (all ranks' counts, all-reduced): ``usage_ema`` (C,), the
counts since the last ``pop_interval()``, and ``resets`` (dead codes moved so far). vq_ema and nsvq move dead
codes onto encoder outputs (LAPA issues #17/#50: without it codebooks collapse to a few codes); the reset is
drawn on rank 0 and broadcast, so every DeepSpeed rank keeps the same codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vlaforge.policies.latent_action.config import LatentActionConfig
from vlaforge.policies.registry import Registry

QUANTIZERS: Registry = Registry("latent quantizer", fill=None)
register_quantizer = QUANTIZERS.register


@dataclass
class Quantized:
    out: torch.Tensor  # (B, N, D)
    codes: torch.Tensor  # int64 (B, N)
    aux_loss: torch.Tensor  # scalar


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Quantizer(nn.Module):
    """Usage accounting and dead-code resets shared by the quantizers (``resettable``: has codebook rows)."""

    resettable = False

    def __init__(self, cfg: LatentActionConfig):
        super().__init__()
        self.cfg, self.size = cfg, cfg.codebook_size
        self.register_buffer("usage_ema", torch.full((self.size,), 1.0 / self.size))  # share of assignments
        # per code position (N, C), since the last pop_interval(): a codebook can look used overall (perplexity 4)
        # while every position always emits the same code (perplexity 1 each) -- measured on Meta-World video
        self.register_buffer("interval_counts", torch.zeros(cfg.num_codes, self.size))
        self.register_buffer("resets", torch.zeros((), dtype=torch.int64))  # codes reset so far
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))  # codebook rows set from data

    # -- accounting ---------------------------------------------------------------------------------------
    def _account(self, codes: torch.Tensor) -> torch.Tensor:
        """Training only (collective when distributed). codes (B, N) -> pooled counts (C,) over every rank."""
        if codes.ndim != 2:
            raise ValueError(f"codes must be (B, N), got {tuple(codes.shape)}")
        per_pos = F.one_hot(codes, self.size).float().sum(0)  # (N, C)
        if _distributed():
            dist.all_reduce(per_pos)
        self.interval_counts += per_pos
        counts = per_pos.sum(0)  # (C,)
        d = self.cfg.ema_decay
        self.usage_ema.mul_(d).add_(counts / counts.sum().clamp_min(1.0), alpha=1 - d)
        self.train_steps += 1
        return counts

    def pop_interval(self) -> torch.Tensor:
        """Counts (N, C) per code position since the previous call (every rank holds the same: all-reduced)."""
        out = self.interval_counts.clone()
        self.interval_counts.zero_()
        return out

    def dead(self) -> torch.Tensor:
        return self.usage_ema < self.cfg.dead_usage / self.size  # bool (C,)

    @torch.no_grad()
    def _maybe_init(self, z: torch.Tensor) -> None:
        """First training step: every codebook row onto a random encoder output of the batch (data-dependent
        init, as the k-means init of VQ libraries): rows drawn at random far from the encoder's outputs would all
        lose to the one nearest row from the first step on -- a codebook collapsed before training starts."""
        if self.resettable and not bool(self.initialized):
            self._move(torch.ones(self.size, dtype=torch.bool, device=z.device), z)
            self.initialized.fill_(True)

    @torch.no_grad()
    def _maybe_reset(self, z: torch.Tensor) -> None:
        """Every reset_every training steps: dead codes -> random encoder outputs z (B, N, D) of this batch
        (rank 0's, broadcast), their usage EMA back to uniform so they get a fair chance."""
        every = self.cfg.reset_every
        if not self.resettable or every == 0 or int(self.train_steps) % every:
            return
        dead = self.dead()
        if bool(dead.any()):
            self._move(dead, z)
            self.usage_ema[dead] = 1.0 / self.size
            self.resets += int(dead.sum())

    def _move(self, which: torch.Tensor, z: torch.Tensor) -> None:
        """Codebook rows ``which`` (C,) bool -> random rows of z (rank 0's draw, broadcast: ranks stay equal)."""
        flat = z.detach().reshape(-1, z.shape[-1])
        pick = flat[torch.randint(len(flat), (int(which.sum()),), device=flat.device)]
        rows = self._rows()
        rows[which] = pick.to(rows.dtype)
        if _distributed():
            dist.broadcast(rows, 0)
        self._after_reset(which)

    def _rows(self) -> torch.Tensor:  # the codebook rows (C, D) a reset writes into
        raise NotImplementedError

    def _after_reset(self, dead: torch.Tensor) -> None:
        pass

    def codebook_vectors(self) -> torch.Tensor:
        """(C, D): what code c means to the forward model (embedding of every code)."""
        raise NotImplementedError


def _nearest(z: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """z (M, D), book (C, D) -> index of the nearest row (M,) by squared L2."""
    d = z.pow(2).sum(-1, keepdim=True) - 2 * z @ book.t() + book.pow(2).sum(-1)[None]
    return d.argmin(-1)


@register_quantizer("vq_ema")
class EMAVectorQuantizer(Quantizer):
    """VQ-VAE with an exponential-moving-average codebook (van den Oord 2017, App. A.1): the codebook follows
    the mean of the encoder outputs assigned to it (buffers, all-reduced over ranks; no gradient), the encoder
    is pulled to its code by the commitment loss, and the gradient passes the quantisation straight through."""

    resettable = True

    def __init__(self, cfg: LatentActionConfig):
        super().__init__(cfg)
        self.register_buffer("embed", torch.randn(cfg.codebook_size, cfg.code_dim))  # (C, D)
        self.register_buffer("cluster_size", torch.ones(cfg.codebook_size))  # EMA of assignments per code
        self.register_buffer("embed_sum", self.embed.clone())  # EMA of the assigned z sums (C, D)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, n, d = z.shape
        if self.training:
            self._maybe_init(z)
        flat = z.reshape(-1, d)
        codes = _nearest(flat.detach().float(), self.embed.float())  # (B*N,)
        q = self.embed[codes].to(z.dtype).reshape(b, n, d)
        if self.training:
            with torch.no_grad():
                self._account(codes.reshape(b, n))
                onehot = F.one_hot(codes, self.size).float()  # (B*N, C)
                counts, sums = onehot.sum(0), onehot.t() @ flat.detach().float()  # (C,), (C, D)
                if _distributed():
                    dist.all_reduce(counts)
                    dist.all_reduce(sums)
                decay, eps = self.cfg.ema_decay, 1e-5
                self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
                self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
                total = self.cluster_size.sum()
                smoothed = (self.cluster_size + eps) / (total + self.size * eps) * total  # Laplace: no / 0
                self.embed.copy_(self.embed_sum / smoothed[:, None])
                self._maybe_reset(z)
        commit = self.cfg.commitment * F.mse_loss(z, q.detach())
        out = z + (q - z).detach()  # straight-through: d out / d z = identity
        return Quantized(out, codes.reshape(b, n), commit)

    def _rows(self) -> torch.Tensor:
        return self.embed

    def _after_reset(self, dead: torch.Tensor) -> None:
        self.cluster_size[dead] = 1.0  # the moved code starts as one assignment at its new place
        self.embed_sum[dead] = self.embed[dead]

    def codebook_vectors(self) -> torch.Tensor:
        return self.embed


@register_quantizer("nsvq")
class NoiseSubstitutionVQ(Quantizer):
    """NSVQ (Vali & Bäckström 2022; LAPA's quantizer): while training, the quantisation error is replaced by
    noise of the same norm, out = z + ||z - q|| * v / ||v||, v ~ N(0, I): the gradient reaches the encoder
    through z and the codebook through ||z - q|| with no straight-through estimator and no commitment loss.
    At inference out = q (the hard code)."""

    resettable = True

    def __init__(self, cfg: LatentActionConfig):
        super().__init__(cfg)
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, cfg.code_dim))  # (C, D), trained

    def forward(self, z: torch.Tensor) -> Quantized:
        b, n, d = z.shape
        if self.training:
            self._maybe_init(z)
        flat = z.reshape(-1, d)
        codes = _nearest(flat.detach().float(), self.codebook.detach().float())
        q = self.codebook[codes].to(z.dtype)  # (B*N, D), differentiable in the codebook
        zero = z.sum() * 0.0
        if not self.training:
            return Quantized(q.reshape(b, n, d), codes.reshape(b, n), zero)
        with torch.no_grad():
            self._account(codes.reshape(b, n))
        v = torch.randn_like(flat)
        err = (flat - q).norm(dim=-1, keepdim=True)  # (B*N, 1)
        out = flat + err * v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self._maybe_reset(z)
        return Quantized(out.reshape(b, n, d), codes.reshape(b, n), zero)

    def _rows(self) -> torch.Tensor:
        return self.codebook.data

    def codebook_vectors(self) -> torch.Tensor:
        return self.codebook


@register_quantizer("fsq")
class FiniteScalarQuantizer(Quantizer):
    """FSQ (Mentzer et al. 2023): project z to len(levels) dims, bound each to L_i values with tanh, round with
    a straight-through gradient; the code is the mixed-radix index of the rounded vector. A fixed grid: no
    codebook to collapse or reset (its usage is still reported)."""

    def __init__(self, cfg: LatentActionConfig):
        super().__init__(cfg)
        levels = torch.tensor(cfg.levels, dtype=torch.float32)
        self.register_buffer("levels", levels, persistent=False)
        basis = torch.cumprod(torch.cat([torch.ones(1), levels[:-1]]), 0)
        self.register_buffer("basis", basis, persistent=False)  # mixed radix: code = sum idx_i * basis_i
        self.proj_in = nn.Linear(cfg.code_dim, len(cfg.levels))
        self.proj_out = nn.Linear(len(cfg.levels), cfg.code_dim)

    def _bound(self, h: torch.Tensor) -> torch.Tensor:
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)  # even L: the grid is shifted by half a step
        shift = torch.tan(offset / half)  # (as the FSQ reference code)
        return torch.tanh(h + shift) * half - offset

    def forward(self, z: torch.Tensor) -> Quantized:
        b, n, _ = z.shape
        bounded = self._bound(self.proj_in(z).float())  # (B, N, d) in (-L/2, L/2)
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through round
        idx = rounded.detach().round() + torch.div(self.levels, 2, rounding_mode="floor")  # 0 .. L-1
        codes = (idx * self.basis).sum(-1).long()  # (B, N)
        if self.training:
            with torch.no_grad():
                self._account(codes)
        out = self.proj_out((rounded / torch.div(self.levels, 2, rounding_mode="floor")).to(z.dtype))
        return Quantized(out, codes, z.sum() * 0.0)

    def codebook_vectors(self) -> torch.Tensor:
        c = torch.arange(self.size, device=self.basis.device)
        idx = torch.stack([(c // int(b)) % int(lv) for b, lv in zip(self.basis, self.levels)], -1).float()
        grid = idx - torch.div(self.levels, 2, rounding_mode="floor")
        return self.proj_out(grid / torch.div(self.levels, 2, rounding_mode="floor"))


def build_quantizer(cfg: LatentActionConfig) -> Quantizer:
    return QUANTIZERS.get(cfg.quantizer)(cfg)
