"""``flow``: flow matching as in pi0 (linear path, velocity target, Euler steps); ReinFlow / Flow-Noise for RL.

    BC       t = 0.999 * (1 - u), u ~ Beta(a, b)  (pi0's schedule: favours the noisy end), noise ~ N(0, I)
             x_t = (1 - t) noise + t x_1 (t = 0 noise, t = 1 data);  target u_t = x_1 - noise
             loss_flow = masked MSE(v_theta(x_t, t | readout), u_t)
    sample   x_0 ~ N(0, I); S Euler steps x_{k+1} = x_k + v_theta(x_k, k / S) / S + sigma_k(readout) eps_k
             (rollouts; pi_RL "Flow-Noise" / ReinFlow: a learned noise std per step, bounded to
             [noise_min, noise_max]); deterministic: a fixed x_0 (seed 0) and no step noise.
    RL       log pi(chain) = sum_k log N(x_{k+1} | x_k + v_theta / S, sigma_k^2) over every (position, dim):
             exact for the stored noisy chain x_0 .. x_S (HEAD_EXTRAS / DENOISE_CHAIN); PPO trains both the
             velocity field and the noise network through it. x_0's N(0, I) density is parameter-free: left out.
    entropy  sum over steps of the step Gaussians' entropies, sum_k (1/2 log(2 pi e) + log sigma_k): a stand-in
             for the chain's intractable marginal entropy (ReinFlow's entropy regulariser is the same).
BC does not train the noise network (it starts at noise_init everywhere: its last layer is zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.heads.base import LOG_SQRT_2PI, ActionHead, bc_inputs, gaussian_log_density, packed
from vlaforge.policies.heads.denoiser import ChunkDenoiser
from vlaforge.policies.heads.diffusion import fixed_noise
from vlaforge.policies.registry import register_head


@register_head("flow")
class FlowHead(ActionHead):
    masks_positions = False  # the velocity field mixes positions: the log-prob covers the whole chain

    def __init__(self, cfg: PolicyConfig, action_dim: int):
        super().__init__(cfg.chunk_size, action_dim)
        fc = cfg.head.flow
        self.net = ChunkDenoiser(cfg.dim, cfg.heads, fc.layers, action_dim, cfg.dropout)
        self.steps = fc.inference_steps
        self.time_beta = torch.distributions.Beta(float(fc.time_beta[0]), float(fc.time_beta[1]))
        self.noise_min, self.noise_max = fc.noise_min, fc.noise_max
        # sigma_k per (step, dim) from each position's readout: (B, K, dim) -> (B, K, S * A)
        self.noise = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, self.steps * action_dim))
        nn.init.zeros_(self.noise[1].weight)
        frac = (fc.noise_init - fc.noise_min) / (fc.noise_max - fc.noise_min)
        nn.init.constant_(self.noise[1].bias, math.log(frac / (1 - frac)))  # sigmoid^-1: starts at noise_init

    def _sigma(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, dim) -> sigma (B, S, K, A) in [noise_min, noise_max]."""
        b, k, _ = features.shape
        raw = self.noise(features).float().view(b, k, self.steps, self.action_dim).transpose(1, 2)
        return self.noise_min + (self.noise_max - self.noise_min) * torch.sigmoid(raw)

    def bc_loss(self, td: TensorDictBase, std_coef: float = 1.0) -> TensorDict:
        target, valid = bc_inputs(td, (keys.HEAD_FEATURES,), "flow")
        self._check_chunk(target)
        features = td.get(keys.HEAD_FEATURES)
        b = target.shape[0]
        t = 0.999 * (1.0 - self.time_beta.sample((b,)).to(target.device))  # (B,)
        noise = torch.randn_like(target)
        tt = t.view(b, 1, 1)
        x_t = (1 - tt) * noise + tt * target
        pred = self.net(x_t, t, features)
        denom = (valid.sum() * target.shape[-1]).clamp_min(1.0)
        loss = ((pred - (target - noise)).pow(2).sum(-1) * valid).sum() / denom
        return TensorDict({"loss_flow": loss, "valid_frac": valid.mean()}, batch_size=[])

    def _means(self, chain_in: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """chain states x_0 .. x_{S-1} (B, S, K, A) -> Euler means (B, S, K, A), all steps in one call."""
        b, s = chain_in.shape[:2]
        x = chain_in.transpose(0, 1).reshape(s * b, self.chunk_size, self.action_dim).float()
        t = (torch.arange(s, device=x.device, dtype=torch.float32) / self.steps).repeat_interleave(b)
        v = self.net(x, t, features.repeat(s, 1, 1))
        return (x + v / self.steps).view(s, b, self.chunk_size, self.action_dim).transpose(0, 1)

    def sample(self, out: TensorDictBase, deterministic: bool = False,
               generator: torch.Generator | None = None) -> TensorDict:
        features = self._features(out)
        b = features.shape[0]
        sigma = self._sigma(features)  # (B, S, K, A)
        x = fixed_noise((b, self.chunk_size, self.action_dim), features, generator, deterministic)
        chain, lp = [x], torch.zeros(b, device=features.device)
        for k in range(self.steps):
            t = torch.full((b,), k / self.steps, device=x.device)
            mean = x + self.net(x, t, features) / self.steps
            if deterministic:
                x = mean
            else:
                z = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                x = mean + sigma[:, k] * z
            lp = lp + gaussian_log_density(x, mean, sigma[:, k]).sum((-2, -1))
            chain.append(x)
        return packed(x, lp, {keys.DENOISE_CHAIN: torch.stack(chain, dim=1)})  # chain (B, S+1, K, A)

    def log_prob(self, out: TensorDictBase, chunk: torch.Tensor, pad: torch.Tensor | None = None,
                 extras: TensorDictBase | None = None) -> torch.Tensor:
        self._check_chunk(chunk)
        features = self._features(out)
        b = features.shape[0]
        chain = self._stored_chain(extras, b, self.steps, "flow")
        mean = self._means(chain[:, :-1], features)  # (B, S, K, A)
        return gaussian_log_density(chain[:, 1:].float(), mean, self._sigma(features)).sum((-3, -2, -1))

    def entropy(self, out: TensorDictBase, pad: torch.Tensor | None = None,
                extras: TensorDictBase | None = None) -> torch.Tensor:
        return (0.5 + LOG_SQRT_2PI + torch.log(self._sigma(self._features(out)))).sum((-3, -2, -1))
