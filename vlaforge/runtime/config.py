"""Typed config of fault handling: the ``runtime:`` block (timeouts, restarts, non-finite steps) and the
``chaos:`` block (fault injection during a real run; off by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel


class TimeoutsConfig(StrictModel):
    """Deadlines in seconds of the waits on remote calls. Generous by default (a slow step must not look
    like a hang on a loaded machine); on a cluster set them to a few times the expected duration so that a
    hung simulator or rank is found sooner."""

    actor_start_s: float = Field(600.0, gt=0)  # a new rollout/eval actor builds env + policy (Warp's first kernel build ~40 s)
    rollout_sample_s: float = Field(600.0, gt=0)  # one rollout actor's sample() call; past it the actor is killed and replaced
    eval_wave_s: float = Field(900.0, gt=0)  # one evaluation wave (envs_per_worker episodes of one task)
    demo_job_s: float = Field(900.0, gt=0)  # one demo-generation job of a demo actor
    weights_s: float = Field(300.0, gt=0)  # an actor fetching published weights from the object store
    learner_setup_s: float = Field(900.0, gt=0)  # learner setup: DeepSpeed init (first CPU op JIT build 24-47 s) + model
    learner_call_s: float = Field(1800.0, gt=0)  # any other learner call: train.log_every BC steps, one RL update, a save
    # torch.distributed process-group timeout of the learners (gloo/nccl collectives), deepspeed.init_distributed
    collective_s: float = Field(1800.0, gt=0)
    probe_s: float = Field(10.0, gt=0)  # after a timeout or error: how long a rank may take to answer a liveness probe


class NonFiniteConfig(StrictModel):
    """A NaN/Inf loss or gradient skips the optimizer step on every rank (no parameter or optimizer change)."""

    max_consecutive: int = Field(5, ge=1)  # skipped steps in a row that roll back to the stage's last checkpoint
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)  # each rollback multiplies the learning rate by this
    max_rollbacks: int = Field(2, ge=0)  # rollbacks per stage; one more run of bad steps stops the run with a report


class RuntimeConfig(StrictModel):
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    # A learner rank that dies or hangs fails the stage; it restarts from its last checkpoint (new ranks) at
    # most this many times, then the run stops with a report.
    max_stage_restarts: int = Field(2, ge=0)
    max_eval_restarts: int = Field(3, ge=0)  # evaluation actors replaced (died or hung) per evaluation
    nonfinite: NonFiniteConfig = Field(default_factory=NonFiniteConfig)


ChaosFault = Literal["kill_rollout_actor", "stop_rollout_actor", "kill_learner", "corrupt_checkpoint", "nan_batch"]
CHAOS_FAULTS: tuple[str, ...] = ChaosFault.__args__  # type: ignore[attr-defined]


class ChaosEvent(StrictModel):
    fault: ChaosFault
    step: int = Field(ge=0)  # inject before the training call that starts at this step (BC) / update (RL)
    stage: str | None = None  # stage name; null: the first stage where the fault applies


class ChaosConfig(StrictModel):
    """Fault injection during a real run (vlaforge/platform/chaos.py): SIGKILL / SIGSTOP of a rollout actor's
    process mid-sample, SIGKILL of a learner rank before a step of its next training call, truncation of a
    file of the newest checkpoint, NaN inputs.
    The run summary lists every fault injected and how it was handled."""

    enabled: bool = False
    seed: int = 0  # draws of the random injections (which fault, which actor or rank, when)
    probability: float = Field(0.0, ge=0.0, le=1.0)  # chance per training call (BC: log_every steps; RL: an update)
    faults: list[ChaosFault] = Field(default_factory=lambda: list(CHAOS_FAULTS))  # kinds the random draws pick from
    max_faults: int = Field(10, ge=0)  # random injections over the run (scheduled ones come on top)
    schedule: list[ChaosEvent] = Field(default_factory=list)  # deterministic injections (drills, tests)
    nan_steps: int = Field(1, ge=1)  # optimizer steps a nan_batch fault poisons (in a row, on one rank)
    # rollout-actor kills and stops: 0 = right before the sample call (always met by it); > 0: this long into it
    delay_s: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _some_fault(self):
        if self.enabled and self.probability > 0 and not self.faults:
            raise ValueError("chaos.faults is empty but chaos.probability > 0: list the faults to draw from")
        return self
