"""Typed configs of the actors: evaluation (the ``eval:`` block) and RL rollouts (the ``rollout:`` block)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel


class EvalConfig(StrictModel):
    enabled: bool = True
    episodes_per_task: int = Field(20, ge=1)  # fixed initial states per task
    # Seeds of the fixed initial-state set: seed_offset + i for episode i. Far from demo seeds so that
    # evaluation never replays a training initial state.
    seed_offset: int = 1_000_000
    num_workers: int = Field(2, ge=1)  # parallel Ray evaluation actors
    envs_per_worker: int = Field(4, ge=1)  # B simulators per evaluation actor
    instructions: Literal["train", "heldout", "all"] = "train"  # paraphrases used at evaluation
    # Which fixed initial-state range: "test" (seed_offset + i; what results are reported on) or "validation"
    # (validation_seed_offset + i: a disjoint range for choosing recipes and hyper-parameters, so the reported
    # test numbers never chose anything). `vlaforge train R.yaml eval.split=validation` while tuning.
    split: Literal["test", "validation"] = "test"
    validation_seed_offset: int = 2_000_000
    videos_per_task: int = Field(1, ge=0)  # rollout videos saved per task (mp4)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)  # Wilson interval level

    @property
    def first_seed(self) -> int:
        """Seed of episode 0 of the chosen split's initial states."""
        return self.validation_seed_offset if self.split == "validation" else self.seed_offset

    @model_validator(mode="after")
    def _splits_disjoint(self):
        lo, hi = sorted((self.seed_offset, self.validation_seed_offset))
        if hi < lo + self.episodes_per_task:
            raise ValueError(f"eval.seed_offset ({self.seed_offset}) and eval.validation_seed_offset "
                             f"({self.validation_seed_offset}) are closer than eval.episodes_per_task "
                             f"({self.episodes_per_task}): the test and validation initial states would overlap")
        return self


class RolloutConfig(StrictModel):
    """RL rollouts (the ``rollout:`` block): K actors x B simulators, T policy decisions per sample call.

    One trajectory time step is one policy DECISION: a chunk of ``policy.n_action_steps`` actions run
    open-loop (vlaforge/actors/rollout.py), so one sample call covers up to T x n_action_steps env steps.
    """

    num_actors: int = Field(2, ge=1)  # K rollout actors (Ray processes)
    envs_per_actor: int = Field(4, ge=1)  # B simulators per actor; inference is batched over them
    steps_per_sample: int = Field(16, ge=1)  # T policy decisions per sample call -> TensorDict [B, T]
    # "sync": every actor samples with weights v and a batch never mixes versions (on-policy PPO).
    # "async": requests stay in flight while the learner trains; each row is tagged with its version and
    # results older than max_policy_lag versions are dropped (counted) and re-requested.
    mode: Literal["sync", "async"] = "sync"
    max_policy_lag: int = Field(1, ge=0)  # async only: accepted lag = latest version - data version
    # Actor deaths (or envs that keep failing) tolerated over the run before it fails with a clear message.
    max_restarts: int = Field(5, ge=0)
    # Env recreations inside one sample call (an env that raised) before the actor gives up on that call
    # and reports a RolloutEnvError (then the pool restarts the actor, counted in max_restarts).
    max_env_retries: int = Field(2, ge=0)
    # Weight transport to the actors, a key of vlaforge.runtime.weights.BROADCASTERS: "object_store" (CPU
    # clusters, zero-copy ray.put) or "collective" (torch.distributed group from learner rank 0; GPU actors).
    # The RL stages run object_store only for now: `recipe check` refuses "collective" there (not wired yet).
    broadcast: str = "object_store"
    deterministic: bool = False  # False: sample chunks from the policy's Gaussian (RL exploration)
    # GRPO / RLOO: G > 1 restarts every simulator at each sample call, G consecutive simulators sharing one
    # initial state (task + reset seed); rows carry group_id. envs_per_actor must be a multiple of G.
    group_size: int = Field(1, ge=1)
    # PPO: every sample call starts fresh episodes on all B simulators, so each row [t = 0..T) is one whole
    # episode from its initial state (steps_per_sample x policy.n_action_steps must cover max_episode_steps,
    # checked at load time) rather than a window that starts and ends mid-episode. False: episodes continue
    # across sample calls.
    episode_rows: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)  # Ray CPU resources per actor (placement group bundle)
    threads_per_actor: int = Field(1, ge=1)  # torch intra-op threads inside an actor
    seed: int | None = None  # seeds of resets and action noise; null: the recipe's seed

    @model_validator(mode="after")
    def _groups_fit(self):
        if self.envs_per_actor % self.group_size:
            raise ValueError(f"rollout.envs_per_actor ({self.envs_per_actor}) must be a multiple of rollout.group_size "
                             f"({self.group_size}): every group of G simulators lives in one actor")
        return self
