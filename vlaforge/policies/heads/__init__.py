"""Action heads behind one interface (base.ActionHead), registered by name in HEAD_REGISTRY:
gaussian (baseline), tokens (binning / FAST-style DCT), diffusion (DDPM/DDIM, DPPO), flow (pi0, Flow-Noise);
latent (latent pretraining: predicts latent action codes, no env actions)."""

from vlaforge.policies.heads import diffusion, flow, gaussian, latent, tokens  # noqa: F401 -- registrations
from vlaforge.policies.heads.base import ActionHead
from vlaforge.policies.heads.gaussian import GaussianHead, gaussian_bc_loss
from vlaforge.policies.heads.value import ValueHead

__all__ = ["ActionHead", "GaussianHead", "ValueHead", "gaussian_bc_loss"]
