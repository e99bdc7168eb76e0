"""The action-head interface: every head reads the same backbone readout and speaks TensorDicts.

    head(readout (B, K, dim))             -> out TensorDict [B]: what the head computes from the features once
                                             per decision (gaussian: ACTION_MEAN / ACTION_LOG_STD; generative
                                             heads: HEAD_FEATURES, the readout itself)
    head.bc_loss(td, std_coef)            -> TensorDict of loss_* terms (summed by the learner) + detached
                                             diagnostics; td = out merged with the processor's TARGET_CHUNK
                                             (B, K, A) and ACTION_PAD (B, K)
    head.sample(out, deterministic, gen)  -> TensorDict [B]: ACTION_CHUNK (B, K, A), LOG_PROB (B,) of the whole
                                             chunk as sampled, HEAD_EXTRAS (TensorDict [B]: what log_prob needs
                                             besides the chunk, e.g. the denoising chain; may be empty)
    head.log_prob(out, chunk, pad, extras)-> (B,) log-prob of the stored chunk (+ extras) under the current
                                             weights: what PPO / GRPO recompute (no head-specific learner code)
    head.entropy(out, pad, extras)        -> (B,) entropy or a documented stand-in (for the entropy bonus)

Everything is in the NORMALISED action space (processor.normalize_action); the runner unnormalises.

``pad`` (B, K) marks chunk positions that never ran (beyond n_action_steps, or cut by an episode end). Heads
whose density factorises over positions in time order (``masks_positions``: gaussian, per-dim token bins)
count only executed positions -- for them that is the exact marginal of the executed prefix. Heads that mix
positions (DCT tokens, denoising chains: every chain state of every position feeds every later step) return
the log-prob of the whole sampled variable: dropping factors of sampled variables that influence the executed
actions would bias the policy gradient, keeping them only adds variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def valid_mask(pad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, K) float: 1 on real chunk positions, 0 on padding. ``like``: any (B, K, ...) tensor."""
    if pad is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    if pad.shape != like.shape[:2]:
        raise ValueError(f"pad must be (B, K) = {tuple(like.shape[:2])}, got {tuple(pad.shape)}")
    return (~pad.bool()).to(like.dtype)


def bc_inputs(td: TensorDictBase, need: tuple, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (target (B, K, A) float, valid (B, K) float) with errors that say what is missing."""
    missing = [k for k in (*need, keys.TARGET_CHUNK) if k not in td.keys()]
    if missing:
        raise KeyError(
            f"{what} BC loss needs {list(need) + [keys.TARGET_CHUNK]} (processor output with targets + model "
            f"output); missing {missing}. Run the processor on a batch that holds ACTION_CHUNK, then merge the "
            "model output into it."
        )
    target = td.get(keys.TARGET_CHUNK).float()
    if target.ndim != 3:
        raise ValueError(f"{what} BC loss: TARGET_CHUNK must be (B, K, A), got {tuple(target.shape)}")
    b, k, _ = target.shape
    pad = td.get(keys.ACTION_PAD) if keys.ACTION_PAD in td.keys() else torch.zeros(b, k, dtype=torch.bool)
    if tuple(pad.shape) != (b, k):
        raise ValueError(f"{what} BC loss: ACTION_PAD must be (B, K) = {(b, k)}, got {tuple(pad.shape)}")
    return target, (~pad.bool()).to(target.dtype).to(target.device)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Elementwise log N(x | mean, std^2)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return -0.5 * ((x - mean) / std).pow(2) - torch.log(std) - LOG_SQRT_2PI


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep embedding: t float (B,) in [0, 1] -> (B, dim) (transformer sin/cos, scaled for unit t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    ang = t.float()[:, None] * 1000.0 * freqs[None]
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return nn.functional.pad(emb, (0, dim - emb.shape[-1])).to(t.dtype if t.is_floating_point() else torch.float32)


class ActionHead(nn.Module):
    """Base class of the registered heads (see the module docstring for the contract)."""

    masks_positions: bool = True  # log_prob / entropy count only executed positions (pad False)
    has_analytic_kl: bool = False  # analytic_kl(out, ref_out, pad) exists (closed-form KL to a reference)

    def __init__(self, chunk_size: int, action_dim: int):
        super().__init__()
        self.chunk_size, self.action_dim = int(chunk_size), int(action_dim)

    # -- helpers shared by the heads ---------------------------------------------------------------------
    def _check_chunk(self, chunk: torch.Tensor) -> None:
        if chunk.ndim != 3 or tuple(chunk.shape[1:]) != (self.chunk_size, self.action_dim):
            raise ValueError(f"action chunk must be (B, K, A) = (B, {self.chunk_size}, {self.action_dim}) "
                             f"(normalised), got {tuple(chunk.shape)}")

    @staticmethod
    def _extra(extras: TensorDictBase | None, key: str, what: str) -> torch.Tensor:
        if extras is None or key not in extras.keys():
            raise KeyError(f"{what}.log_prob needs {keys.HEAD_EXTRAS}/{key} as stored by sample(): the rollout "
                           f"keeps it beside the chunk (vlaforge/actors/rollout.py); pass extras=td[{keys.HEAD_EXTRAS!r}]")
        return extras.get(key)

    def _stored_chain(self, extras: TensorDictBase | None, batch: int, steps: int, name: str) -> torch.Tensor:
        """The denoising chain x_T .. x_0 the rollout stored (diffusion and flow heads): (B, S+1, K, A)."""
        chain = self._extra(extras, keys.DENOISE_CHAIN, f"{name} head")
        want = (batch, steps + 1, self.chunk_size, self.action_dim)
        if tuple(chain.shape) != want:
            raise ValueError(f"{name} head: {keys.DENOISE_CHAIN} must be (B, S+1, K, A) = {want}, got "
                             f"{tuple(chain.shape)}: policy.head.{name}.inference_steps differs from the rollout's")
        return chain

    # -- the interface ------------------------------------------------------------------------------------
    def forward(self, readout: torch.Tensor) -> TensorDict:
        """Generative heads condition every step on the readout itself: (B, K, dim) -> HEAD_FEATURES."""
        return TensorDict({keys.HEAD_FEATURES: readout}, batch_size=readout.shape[:1])

    def _features(self, out: TensorDictBase) -> torch.Tensor:
        if keys.HEAD_FEATURES not in out.keys():
            raise KeyError(f"{type(self).__name__}: the model output has no {keys.HEAD_FEATURES!r} (run the policy's "
                           "forward on the processor output and merge it into the batch)")
        return out.get(keys.HEAD_FEATURES)

    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:  # pragma: no cover - interface
        """``std_coef`` (train.bc_std_coef) weighs the likelihood term of a std learned by BC; heads without
        one (tokens: the categorical is the likelihood; diffusion/flow: the noise is not trained by BC) ignore it."""
        raise NotImplementedError

    def sample(self, out: TensorDictBase, deterministic: bool = False,
               generator: torch.Generator | None = None) -> TensorDict:  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob(self, out: TensorDictBase, chunk: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob_terms(self, chunk: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) float: how many per-dimension terms ``log_prob`` adds up, the length that ``train.ppo.ratio:
        mean`` divides the chunk log-ratio by. Position-masking heads: executed positions x A; heads that score
        the whole sampled variable: K x A for every row (a constant scale of the chain's log-prob)."""
        if self.masks_positions:
            return valid_mask(pad, chunk).sum(-1) * chunk.shape[-1]
        return torch.full(chunk.shape[:1], float(chunk.shape[1] * chunk.shape[2]), device=chunk.device)

    def analytic_kl(self, out: TensorDictBase, ref_out: TensorDictBase, pad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form KL: use train.ppo.kl_estimator k3 (or auto)")

    def reference_keys(self) -> tuple[str, ...]:
        """Keys of the forward output that ``analytic_kl`` needs from the reference (stored as ref_<key>)."""
        return ()


def packed(chunk: torch.Tensor, log_prob: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TensorDict:
    """The TensorDict every ``sample`` returns."""
    b = chunk.shape[0]
    return TensorDict({keys.ACTION_CHUNK: chunk, keys.LOG_PROB: log_prob,
                       keys.HEAD_EXTRAS: TensorDict(extras or {}, batch_size=[b], device=chunk.device)},
                      batch_size=[b], device=chunk.device)
