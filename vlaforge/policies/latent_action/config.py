"""Typed config of latent actions (the recipe's ``latent:`` block): the latent action model (LAM), its data,
and how the latent-pretrained VLA hands over to BC. Torch-free (the recipe schema imports it).

    lam stage:              frame pairs (o_t, o_{t+gap}) of unlabeled video -> LAM (IDM -> codes -> forward model)
    latent_pretrain stage:  the VLA with the "latent" head predicts the LAM's codes from (o_t, instruction)
    bc stage:               keeps the backbone, replaces the head by policy.head, trains on the labeled demos
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel


class LatentActionConfig(StrictModel):
    """The latent action model: inverse dynamics (o_t, o_{t+k}) -> ``num_codes`` discrete codes; a forward model
    predicts the PIXELS of o_{t+k} from o_t and the codes (pixels, not features: a feature target can collapse
    to a constant the encoder makes trivial to predict, and pixels are what the inspection images show)."""

    # Key of QUANTIZERS (policies/latent_action/quantizers.py): "nsvq" (noise-substitution VQ as in LAPA,
    # codebook learned by gradient), "vq_ema" (VQ-VAE with an EMA codebook + commitment loss), "fsq"
    # (finite scalar quantisation: a fixed grid, no codebook to collapse).
    quantizer: str = "nsvq"
    codebook_size: int = Field(8, ge=2)  # C: codes per position (LAPA: 8)
    num_codes: int = Field(4, ge=1)  # N: codes per transition (LAPA: 4)
    code_dim: int = Field(16, ge=1)  # D: width of a code vector (vq_ema / nsvq codebook rows; fsq projects to it)
    # fsq only: levels per latent dimension; their product must be codebook_size. None: [codebook_size].
    fsq_levels: list[int] | None = None
    image_size: int = Field(64, ge=16)  # frames are resized to image_size x image_size (area) before the LAM
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1)  # stride-2 conv widths
    hidden: int = Field(256, ge=8)  # MLP width between the conv features and the codes
    commitment: float = Field(0.25, ge=0.0)  # vq_ema: beta of ||z - sg(q)||^2 (VQ-VAE)
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)  # vq_ema codebook EMA, and every quantizer's usage EMA
    # Dead-code reset (vq_ema, nsvq): every reset_every training steps, a code whose usage EMA is below
    # dead_usage x (1 / codebook_size) is moved onto a random encoder output of the batch (LAPA issues #17/#50:
    # codebooks collapse to a few codes without it). 0 turns resets off.
    reset_every: int = Field(50, ge=0)
    dead_usage: float = Field(0.1, ge=0.0, lt=1.0)
    # LAOM (Nikulin et al. 2025): > 0 adds an action decoder on the code vectors, trained with this weight on
    # labelled pairs (latent.action_batch per rank and step, from the recipe's labelled data) beside the video.
    # 0 (default): the latent model learns from video alone.
    action_loss_coef: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self):
        if self.fsq_levels is not None:
            if self.quantizer != "fsq":
                raise ValueError(f"fsq_levels only applies to quantizer 'fsq' (got {self.quantizer!r})")
            if any(level < 2 for level in self.fsq_levels) or math.prod(self.fsq_levels) != self.codebook_size:
                raise ValueError(f"fsq_levels {self.fsq_levels}: every level >= 2 and their product must equal "
                                 f"codebook_size ({self.codebook_size})")
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(f"image_size ({self.image_size}) must be divisible by 2**len(channels) "
                             f"({2 ** len(self.channels)}): every conv halves it")
        return self

    @property
    def levels(self) -> list[int]:
        return list(self.fsq_levels or [self.codebook_size])


class LatentConfig(StrictModel):
    model: LatentActionConfig = Field(default_factory=LatentActionConfig)
    # k: the LAM sees (o_t, o_{t+gap}) of one episode. Default = the default policy.n_action_steps (4): one
    # latent action spans what one chunk executes, and 1-step Meta-World motion is a pixel or two at 64 px.
    gap: int = Field(4, ge=1)
    # The unlabeled video: a LeRobot v3 dataset folder whose action columns are never read (absent or all NaN
    # is fine). None: the recipe's training data (data.path or the generated demos) with its actions ignored.
    data_path: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # episodes held out of LAM training (validation, images)
    # A trained LAM folder (a lam stage's <stage>/lam) for a latent_pretrain stage without a lam stage before it.
    lam_dir: str | None = None
    # Codebook health: the run warns (run.log and summary) when the LAM ends with a batch perplexity below
    # collapse_perplexity, or with more than collapse_dead_fraction of the codes unused in the last interval.
    collapse_perplexity: float = Field(1.5, ge=1.0)
    collapse_dead_fraction: float = Field(0.5, ge=0.0, le=1.0)
    action_batch: int = Field(8, ge=1)  # LAOM (model.action_loss_coef > 0): labelled pairs per rank and step
    inspect_pairs: int = Field(6, ge=0)  # validation pairs drawn as (o_t | real o_t+k | predicted | error)
    inspect_per_code: int = Field(6, ge=0)  # frame pairs shown per code in the code strips (0: none)
