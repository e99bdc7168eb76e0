"""Typed config of the learned reward model (the ``reward_model:`` block of a recipe).

Three groups of fields: the model (sizes; the VLA's own vision / language encoders are reused through
their registries), its training data and optimisation (single process or DeepSpeed ranks), and how its
output becomes the RL reward (``mode`` env | rm | mix, ``output`` level | binary, ``shaping``), and its
refresh on on-policy episodes during RL (``refresh``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel
from vlaforge.policies.config import LanguageConfig, PolicyConfig, VisionConfig


def _small_vision() -> VisionConfig:
    # Half the VLA's default widths: a success classifier at 32-64 px needs far less than a policy.
    return VisionConfig(channels=[16, 32, 64], keypoints=16)


class RefreshConfig(StrictModel):
    """RM refresh during RL: every `every` updates the RM is fine-tuned on the policy's own recent episodes.

    Labels. The only labels a refresh uses are the simulator's per-step success flags of at most
    `label_episodes` WHOLE on-policy episodes per refresh (and `max_label_episodes` over the stage), plus the
    demonstrations the RM was first trained on. No simulator REWARD is ever read. This is a labelled budget,
    stated in the recipe and logged (reward/refresh_labeled_episodes): a recipe with refresh is "learned reward
    + N success labels", not label-free; refresh.every: 0 is the label-free RM-only setting.
    """

    every: int = Field(0, ge=0)  # RL updates between refreshes; 0 = never refresh
    label_episodes: int = Field(8, ge=1)  # whole on-policy episodes labelled per refresh (the newest complete ones)
    max_label_episodes: int = Field(64, ge=1)  # labelled on-policy episodes over the whole stage (the budget)
    # Fine-tuning steps per refresh, from the current RM weights, on the demonstrations + every on-policy
    # episode labelled so far (balanced frames as in the reward_model stage).
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-4, gt=0.0)  # fine-tuning learning rate (constant after a short warm-up)


class RewardModelConfig(StrictModel):
    enabled: bool = False
    # "success": per-frame success classifier (BCE; soft labels = progress). "preference": Bradley-Terry
    # over trajectory segments, a segment's score = the sum of per-frame scores (Christiano et al. 2017).
    kind: Literal["success", "preference"] = "success"
    model_dir: str | None = None  # a trained reward model (save_reward_model); null: train one in the run

    # -- model --------------------------------------------------------------------------------------
    dim: int = Field(64, ge=8)  # token width of the encoders and the fusion transformer
    layers: int = Field(1, ge=1)  # fusion transformer depth
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # The state vector is off by default: with Meta-World's "full" state (object + goal positions) the
    # success predicate is nearly a function of the state, and a reward that reads it is no longer a
    # learned visual reward -- turn it on deliberately.
    use_state: bool = False
    state_std_min: float = Field(1e-2, gt=0.0)
    vision: VisionConfig = Field(default_factory=_small_vision)
    language: LanguageConfig = Field(default_factory=lambda: LanguageConfig(layers=0))
    image_augment: Literal["none", "random_shift"] = "random_shift"  # training only
    image_shift_pad: int = Field(2, ge=0)

    # -- labeled data -------------------------------------------------------------------------------
    # Frames of successful episodes: "success" = the frame's own success flag, where frames before the
    # first success count as negatives only up to `negative_fraction` of the time to success (< 1 leaves
    # out the near-success frames, which look almost like success: the predicate is a distance threshold;
    # 1 = the exact predicate, which held-out AUROC measures); "progress" = t / t_success, 1 from then on.
    demo_labels: Literal["success", "progress"] = "success"
    negative_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Training frames get an instruction drawn from all instructions of their task in the labeled set, so
    # that a paraphrase seen only in successful (or failed) episodes cannot stand in for the label.
    mix_paraphrases: bool = True
    balance: bool = True  # equal counts of positive and negative frames (minority oversampled)
    max_frames_per_class: int = Field(4000, ge=1)
    heldout_fraction: float = Field(0.25, ge=0.0, lt=1.0)  # episodes held out for AUROC / pair accuracy
    segment_length: int = Field(8, ge=1)  # preference: frames per segment
    num_pairs: int = Field(512, ge=1)  # preference: pairs drawn per labeled set
    # Preference pairs within one successful episode (later segment preferred over an earlier one,
    # "progress") vs across episodes of the same task (successful over failed).
    progress_pair_fraction: float = Field(0.5, ge=0.0, le=1.0)
    score_reg: float = Field(1e-3, ge=0.0)  # preference: L2 on per-frame scores (BT is shift-invariant)

    # -- optimisation (single process: train_reward_model; DeepSpeed ranks: RewardLearner) -----------
    steps: int = Field(400, ge=1)
    batch_size: int = Field(64, ge=1)  # frames (success) or pairs (preference)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, ge=0.0)
    seed: int = 0
    # Rollout batches of the starting policy (rollout.* sized) labeled by the simulator and added to the
    # demonstrations in a reward_model stage: the RM sees the policy's own failures, not only experts.
    rollout_batches: int = Field(4, ge=0)

    # -- the RL reward --------------------------------------------------------------------------------
    # reward of a decision = BASE(mode) + shaping * (gamma^k Phi(s') - Phi(s)), Phi(s) = p(success | s),
    # k = the env steps the decision covered, gamma = the RL objective's own (train.ppo.gamma / train.grpo.gamma).
    # BASE by `mode`: "env" = the simulator's reward (the RM, if enabled, is still scored and logged next to
    # it); "rm" = the RM term only (no simulator reward reaches the learner); "mix" = (1 - mix_weight) * env +
    # mix_weight * RM term. Shaping is only ever ADDED to a base: alone it telescopes to
    # gamma^T Phi(s_T) - Phi(s_0) per episode (Ng et al. 1999), and the RM's frame-to-frame noise becomes the
    # whole signal (measured: the old delta-only reward collapsed true success from 55% to 8%).
    mode: Literal["env", "rm", "mix"] = "env"
    mix_weight: float = Field(0.5, ge=0.0, le=1.0)
    # The RM term of a decision: "level" = p(success | next obs); "binary" = 1 if p(success | next obs) >= threshold.
    output: Literal["level", "binary"] = "level"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    shaping: float = Field(0.0, ge=0.0)  # weight of the potential-based shaping term above; 0 = none
    refresh: RefreshConfig = Field(default_factory=RefreshConfig)  # RM refresh during RL (class doc)

    @model_validator(mode="after")
    def _check(self):
        if self.dim % self.heads:
            raise ValueError(f"reward_model.dim ({self.dim}) must be divisible by reward_model.heads ({self.heads})")
        if self.mode != "env" and not self.enabled:
            raise ValueError(f"reward_model.mode {self.mode!r} uses the reward model: set reward_model.enabled: true")
        if self.shaping > 0 and not self.enabled:
            raise ValueError(f"reward_model.shaping {self.shaping} uses the reward model: set reward_model.enabled: true")
        if self.refresh.every and not self.enabled:
            raise ValueError("reward_model.refresh.every > 0 retrains the reward model during RL: set reward_model.enabled: true")
        if self.refresh.every and self.kind != "success":
            raise ValueError(f"reward_model.refresh works on success labels: reward_model.kind must be 'success', got {self.kind!r}")
        return self

    def encoder_config(self) -> PolicyConfig:
        """A PolicyConfig carrying the RM's sizes: the VLA's vision / language registries build from it."""
        return PolicyConfig(dim=self.dim, layers=self.layers, heads=self.heads, dropout=self.dropout,
                            vision=self.vision, language=self.language)
