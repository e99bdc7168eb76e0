"""``diffusion``: DDPM over the (K, A) chunk (Diffusion Policy), DDIM sampling, DPPO log-probs for RL.

    BC       t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps;
             loss_diffusion = masked MSE(f_theta(x_t, t | readout), x_0)  (prediction "sample", the default)
                           or masked MSE(f_theta(x_t, t | readout), eps)  (prediction "epsilon", DDPM)
    sample   S DDIM steps t_S > ... > t_1 (evenly spaced over the T training steps), from x_T ~ N(0, I):
             x0_hat = clip(f_theta)  or  clip((x_t - sqrt(1 - abar_t) f_theta) / sqrt(abar_t))  (epsilon)
             eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
             mu_t   = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_eta^2) eps_hat
             x_prev = mu_t + std_t z,  std_t = max(sigma_eta, min_std) (rollouts) or 0 (deterministic)
    RL       the chain x_T .. x_0 is an MDP of Gaussian steps (DPPO, Ren et al. 2024): log pi(chain) =
             sum_steps log N(x_prev | mu_theta(x_t), std_t^2) over every (position, dim) -- the rollout stores
             the chain (HEAD_EXTRAS / DENOISE_CHAIN), the learner recomputes each mu_theta. x_T's N(0, I)
             density has no parameters and is left out (it cancels in every ratio).
    entropy  stand-in: sum over steps of the step Gaussians' entropies (a constant here: the std is fixed);
             the chain's marginal entropy has no closed form.
Deterministic sampling starts from a FIXED x_T (seed 0, or the caller's generator) with no step noise: a
fixed function of the observation, in distribution for the denoiser (x_T = 0 never occurs in training).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads.base import LOG_SQRT_2PI, ActionHead, bc_inputs, gaussian_log_density, packed
from vlaforge.policies.heads.denoiser import ChunkDenoiser
from vlaforge.policies.registry import register_head

_DETERMINISTIC_SEED = 0


def fixed_noise(shape: tuple, like: torch.Tensor, generator: torch.Generator | None, deterministic: bool) -> torch.Tensor:
    """N(0, I) of ``shape``; deterministic without a generator: the same draw every call (seed 0)."""
    if deterministic and generator is None:
        generator = torch.Generator(device=like.device).manual_seed(_DETERMINISTIC_SEED)
    return torch.randn(shape, generator=generator, device=like.device, dtype=torch.float32)


def betas_for(schedule: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    # squaredcos_cap_v2 (Nichol & Dhariwal 2021), as Diffusion Policy uses
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=torch.float64)


@register_head("diffusion")
class DiffusionHead(ActionHead):
    masks_positions = False  # the denoiser mixes positions: the log-prob covers the whole chain

    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__(cfg.chunk_size, action_dim)
        dc = cfg.head.diffusion
        if dc.inference_steps > dc.train_steps:
            raise ValueError(f"policy.head.diffusion.inference_steps ({dc.inference_steps}) cannot exceed "
                             f"train_steps ({dc.train_steps})")
        self.net = ChunkDenoiser(cfg.dim, cfg.heads, dc.layers, action_dim, cfg.dropout)
        self.train_steps, self.steps = dc.train_steps, dc.inference_steps
        self.clip, self.eta, self.min_std = dc.clip_sample, dc.eta, dc.min_std
        self.predict_sample = dc.prediction == "sample"
        abar = torch.cumprod(1.0 - betas_for(dc.schedule, dc.train_steps, dc.beta_start, dc.beta_end), 0)
        self.register_buffer("abar", abar.float(), persistent=False)  # (T,)
        ts = torch.linspace(dc.train_steps - 1, 0, dc.inference_steps).round().long()  # (S,) t_S .. t_1
        self.register_buffer("ts", ts, persistent=False)
        prev = torch.cat([abar[ts[1:]], torch.ones(1, dtype=torch.float64)])  # abar of the step's target
        cur = abar[ts]
        sigma_eta = dc.eta * torch.sqrt((1 - prev) / (1 - cur) * (1 - cur / prev))
        self.register_buffer("abar_t", cur.float(), persistent=False)  # (S,)
        self.register_buffer("abar_prev", prev.float(), persistent=False)  # (S,)
        self.register_buffer("sigma_eta", sigma_eta.float(), persistent=False)  # (S,)
        self.register_buffer("std", sigma_eta.clamp_min(dc.min_std).float(), persistent=False)  # (S,) RL std

    # -- DDIM -----------------------------------------------------------------------------------------
    def _mean(self, s: int, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mean of step s (0 = first, from t_S) given x (B, K, A) -> (B, K, A)."""
        return self._mean_batched(torch.full((x.shape[0],), s, dtype=torch.long, device=x.device), x, features)

    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
        target, valid = bc_inputs(td, (keys.HEAD_FEATURES,), "diffusion")
        self._check_chunk(target)
        features = td.get(keys.HEAD_FEATURES)
        b = target.shape[0]
        t = torch.randint(0, self.train_steps, (b,), device=target.device)
        eps = torch.randn_like(target)
        a = self.abar[t].view(b, 1, 1)
        x_t = a.sqrt() * target + (1 - a).sqrt() * eps
        pred = self.net(x_t, t.float() / (self.train_steps - 1), features)
        denom = (valid.sum() * target.shape[-1]).clamp_min(1.0)
        loss = ((pred - (target if self.predict_sample else eps)).pow(2).sum(-1) * valid).sum() / denom
        return TensorDict({"loss_diffusion": loss, "valid_frac": valid.mean()}, batch_size=[])

    def sample(self, out: TensorDictBase, deterministic: bool = False,
               generator: torch.Generator | None = None) -> TensorDict:
        features = self._features(out)
        b = features.shape[0]
        x = fixed_noise((b, self.chunk_size, self.action_dim), features, generator, deterministic)
        chain, lp = [x], torch.zeros(b, device=features.device)
        for s in range(self.steps):
            mean = self._mean(s, x, features)
            if deterministic:
                x = mean
            else:
                z = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                x = mean + self.std[s] * z
            lp = lp + gaussian_log_density(x, mean, self.std[s]).sum((-2, -1))
            chain.append(x)
        return packed(x, lp, {keys.DENOISE_CHAIN: torch.stack(chain, dim=1)})  # chain (B, S+1, K, A)

    def log_prob(self, out: TensorDictBase, chunk: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:
        self._check_chunk(chunk)
        features = self._features(out)
        b = features.shape[0]
        chain = self._stored_chain(extras, b, self.steps, "diffusion")
        # all S steps in one batched denoiser call: (S*B, K, A)
        x = chain[:, :-1].transpose(0, 1).reshape(self.steps * b, self.chunk_size, self.action_dim)
        nxt = chain[:, 1:].transpose(0, 1).reshape_as(x)
        feats = features.repeat(self.steps, 1, 1)
        s_idx = torch.arange(self.steps, device=x.device).repeat_interleave(b)
        mean = self._mean_batched(s_idx, x, feats)
        std = self.std[s_idx].view(-1, 1, 1)
        lp = gaussian_log_density(nxt.float(), mean, std).sum((-2, -1))  # (S*B,)
        return lp.view(self.steps, b).sum(0)

    def _mean_batched(self, s_idx: torch.Tensor, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """_mean for a batch whose rows belong to different steps s_idx (N,)."""
        t = self.ts[s_idx].float() / (self.train_steps - 1)
        pred = self.net(x, t, features)
        a_t, a_prev = self.abar_t[s_idx].view(-1, 1, 1), self.abar_prev[s_idx].view(-1, 1, 1)
        sig = self.sigma_eta[s_idx].view(-1, 1, 1)
        x = x.float()
        x0 = pred if self.predict_sample else (x - (1 - a_t).sqrt() * pred) / a_t.sqrt()
        x0 = x0.clamp(-self.clip, self.clip)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev - sig**2).clamp_min(0).sqrt() * eps

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:
        features = self._features(out)
        per_step = (0.5 + LOG_SQRT_2PI + torch.log(self.std)).sum() * self.chunk_size * self.action_dim
        return per_step.expand(features.shape[0]).to(features.dtype)
