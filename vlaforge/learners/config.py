"""Typed config of the learners (the ``train:`` block): DeepSpeed, optimisation, checkpoints, RL objectives."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlaforge.config_base import StrictModel


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: GPU paths, not exercised on CPU
    gradient_clipping: float = Field(1.0, ge=0.0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo on CPU


class ClipObjectiveConfig(StrictModel):
    """What PPO and GRPO/RLOO share: the clipped chunk-ratio loss, its epochs and minibatches, the KL to the
    frozen reference (BC) policy. One optimizer step per minibatch: epochs x num_minibatches steps per update."""

    epochs: int = Field(4, ge=1)  # passes over the rollout batch per update
    num_minibatches: int = Field(4, ge=1)  # per rank and epoch (every rank takes the same number of steps)
    clip_epsilon: float = Field(0.2, gt=0.0)  # ratio clipped to [1 - eps, 1 + eps_high]
    clip_epsilon_high: float | None = Field(None, gt=0.0)  # asymmetric upper clip (DAPO "clip-higher"); None: = eps
    entropy_coef: float = Field(0.0, ge=0.0)  # entropy bonus on the executed chunk positions
    kl_coef: float = Field(0.0, ge=0.0)  # penalty on KL(policy || reference); 0 skips the reference forward
    # "analytic": exact KL of the two diagonal Gaussians over the executed positions (low variance; gaussian
    # head only); "k3": Schulman's estimator (r - 1 - log r, r = p_ref / p) at the sampled chunk (as
    # GRPO/DeepSeek; every head); "auto": analytic where the action head has a closed form, else k3.
    kl_estimator: Literal["auto", "analytic", "k3"] = "auto"
    target_kl: float | None = Field(None, gt=0.0)  # stop the update's remaining epochs once approx_kl exceeds it
    # When target_kl is checked. "epoch": after each epoch, on its mean approx_kl. "minibatch": before every
    # optimizer step, on that minibatch's approx_kl (mean over ranks): past 1.5 x target_kl the update stops
    # without taking the step (as Stable-Baselines3) -- one epoch of large steps cannot overshoot.
    kl_stop: Literal["epoch", "minibatch"] = "epoch"
    # The importance ratio of a chunk. "chunk": exp(sum of the log-prob differences over every term of the
    # chunk) -- with the gaussian head that sums n x A dims, so its spread is ~sqrt(n A) times one action's.
    # "mean": the log-ratio divided by the chunk's number of log-prob terms (head.log_prob_terms: executed
    # positions x A for the gaussian head), i.e. the geometric mean of the per-dimension ratios (length-
    # normalised as GSPO's sequence ratio), clipped once. Gradients shrink by that count: raise lr with it.
    ratio: Literal["chunk", "mean"] = "chunk"
    augment: bool = False  # processor image augmentation during RL (changes log-probs: ratio != 1 at epoch 0)


class PPOConfig(ClipObjectiveConfig):
    """PPO at the DECISION level: one time step = one action chunk covering k env steps (vlaforge/actors)."""

    gamma: float = Field(0.99, gt=0.0, le=1.0)  # per ENV step: a decision covering k steps discounts by gamma**k
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)  # per DECISION (SMDP view of a chunk as one action)
    value_coef: float = Field(0.5, ge=0.0)
    # Clip V around the rollout's value (PPO2), in the units the critic regresses in (std units with
    # value_norm); None: plain MSE.
    value_clip: float | None = Field(0.2, gt=0.0)
    normalize_advantage: bool = True  # (A - mean) / std, over the groups of advantage_groups
    # "batch": one mean/std over the whole batch (all ranks); "task": per task (observation/task_index), so a
    # task the policy already solves (advantages ~ noise) is not scaled up by the others' spread -- nor they by it.
    advantage_groups: Literal["batch", "task"] = "batch"
    normalize_reward: bool = False  # divide rewards by a running std of discounted returns (no shift)
    # Critic warm-up: the first updates train only the critic (policy loss zeroed). critic_warmup_updates is the
    # most such updates; with critic_warmup_ev set, warm-up ends earlier, at the first update whose rollout
    # explained variance (the stored values against the fresh targets) reaches it.
    critic_warmup_updates: int = Field(0, ge=0)
    critic_warmup_ev: float | None = Field(None, le=1.0)
    value_backbone_grad: bool = True  # False: the value loss trains the value head only (backbone detached)
    # Per-task running mean/std of the value targets: the critic regresses (G - mu_task) / sigma_task and its
    # output is de-normalised for GAE (a PopArt-style target normalisation, without the output-preserving
    # rescale: the statistics move slowly once warm). False: raw targets.
    value_norm: bool = False
    critic_lr: float | None = Field(None, gt=0)  # the critic's own learning rate (param group); None: train.lr


class GRPOConfig(ClipObjectiveConfig):
    """Critic-free: G rollouts per initial state (a GROUP_ID per trajectory), group-relative advantages.
    train.objective "grpo": (R - mean_g) / std_g; "rloo": R - mean of the other G-1 (leave-one-out)."""

    # The trajectory score, a key of vlaforge.learners.grpo.SCORES (checked by the recipe loader): "success" (1
    # if the task succeeded in the row's first episode; SimpleVLA-RL) or "return" (discounted sum of env rewards
    # of that episode, gamma per env step).
    score: str = "success"
    gamma: float = Field(1.0, gt=0.0, le=1.0)
    std_eps: float = Field(1e-6, gt=0.0)  # grpo: added to the group std
    dynamic_sampling: bool = True  # drop groups whose scores are all equal (all succeeded / all failed)
    min_group_size: int = Field(2, ge=2)  # smaller groups are an error (no baseline without peers)


class TrainConfig(StrictModel):
    # Key of the objective registry (vlaforge/learners/registry.py), checked by the recipe loader; it must be one
    # the stage kind runs (platform/stages.py). In ppo / grpo stages "bc" means the stage's default objective.
    objective: str = "bc"
    bc_std_coef: float = Field(1.0, ge=0.0)  # bc: weight of the std's likelihood term (mean detached there)
    num_learners: int = Field(2, ge=1)  # DeepSpeed ranks, one Ray actor each
    cpus_per_learner: float = Field(1.0, gt=0)
    gpus_per_learner: float = Field(0.0, ge=0)
    threads_per_learner: int = Field(1, ge=1)  # torch intra-op threads (Ray sets OMP_NUM_THREADS=1)
    steps: int = Field(1000, ge=1)  # BC: optimizer steps; RL stages: updates (one rollout batch each)
    # BC: global batch per optimizer step, split evenly over the ranks (DeepSpeed: micro batch x ranks, no
    # gradient accumulation). RL stages take their minibatches from the rollout batch (ppo/grpo.num_minibatches)
    # and use it only for DeepSpeed's config, which still needs it divisible by the ranks.
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    seed: int = 0
    log_every: int = Field(25, ge=1)  # BC: steps between metric records (RL stages log every update)
    checkpoint_every: int = Field(500, ge=1)  # steps (RL: updates) between DeepSpeed checkpoints, and at the end
    keep_checkpoints: int = Field(2, ge=1)  # newest DeepSpeed checkpoints kept on disk
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)  # objective "ppo"
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)  # objectives "grpo" / "rloo"
