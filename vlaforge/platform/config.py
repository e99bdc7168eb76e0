"""The recipe schema: one typed model per block, composed from each component's own config model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from vlaforge.actors.config import EvalConfig, RolloutConfig
from vlaforge.config_base import FolderName, StrictModel
from vlaforge.data.config import DataConfig, DemoConfig
from vlaforge.envs.config import EnvConfig
from vlaforge.learners.config import TrainConfig
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.latent_action.config import LatentConfig
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.runtime.config import ChaosConfig, RuntimeConfig


class RayConfig(StrictModel):
    # null: start an embedded local cluster; "auto" or "ray://host:port": join an existing one.
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)  # embedded cluster only (null: all cores)
    dashboard: bool = False  # embedded cluster only; bound to ray.host
    # Embedded cluster only: the address its node, GCS and dashboard bind. 127.0.0.1 keeps every Ray
    # server off the network; another address (this machine's) opts into being reachable.
    host: str = "127.0.0.1"


class LoggingConfig(StrictModel):
    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline (default): no network
    wandb_project: str = "vlaforge"
    wandb_entity: str | None = None
    tensorboard: bool = True  # <run>/tensorboard, served by `vlaforge dashboard RUN_DIR`


class StageConfig(StrictModel):
    name: FolderName  # folder of the stage inside the run directory
    # Key of vlaforge.platform.stages.STAGES (bc, ppo, grpo, reward_model, ...): checked against that registry
    # by the recipe loader (vlaforge/platform/recipe_names.py), so a new stage kind is one registration.
    kind: str = "bc"
    # Where the stage's policy starts: "previous" (the previous stage's result; from scratch for the
    # first stage), "scratch", or a path to an exported policy / checkpoint / run folder.
    init: str = "previous"
    eval_start: bool = True  # evaluate the starting policy (skipped when starting from scratch)
    eval_end: bool = True
    # Recipe values for this stage only, as a partial recipe merged over the top-level one, e.g.
    # {train: {objective: ppo, lr: 1.0e-4, steps: 40}, rollout: {num_actors: 2}}. Validated at load time.
    set: dict[str, Any] = Field(default_factory=dict)


def _default_stages() -> list[StageConfig]:
    return [StageConfig(name="bc", kind="bc")]


class Recipe(StrictModel):
    name: FolderName = "run"  # run name; the default run directory is runs/<name>-<timestamp>
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    envs: EnvConfig = Field(default_factory=EnvConfig)
    demos: DemoConfig = Field(default_factory=DemoConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    latent: LatentConfig = Field(default_factory=LatentConfig)  # latent action model + pretraining (lam stages)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)  # timeouts, stage restarts, NaN/Inf handling
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)  # fault injection during a real run (off by default)
    # The stages run in order, each in <run>/<name>/, each starting from the previous one's policy.
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, v: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return v
