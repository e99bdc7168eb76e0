"""The recipe schema: one typed model per block, composed from each component's own config model."""

from __future__ import annotations

from pydantic import Field

from vlaforge.actors.config import EvalConfig
from vlaforge.config_base import StrictModel
from vlaforge.data.config import DataConfig, DemoConfig
from vlaforge.envs.config import EnvConfig
from vlaforge.learners.config import TrainConfig
from vlaforge.policies.config import PolicyConfig


class RayConfig(StrictModel):
    # null: start an embedded local cluster; "auto" or "ray://host:port": join an existing one.
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)  # embedded cluster only (null: all cores)
    dashboard: bool = False  # embedded cluster only; bound to 127.0.0.1


class LoggingConfig(StrictModel):
    wandb: bool = True
    wandb_mode: str = "offline"  # "offline" (default, no network), "online", "disabled"
    wandb_project: str = "vlaforge"
    wandb_entity: str | None = None
    tensorboard: bool = False


class Recipe(StrictModel):
    name: str = "run"  # run name; the default run directory is runs/<name>-<timestamp>
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    envs: EnvConfig = Field(default_factory=EnvConfig)
    demos: DemoConfig = Field(default_factory=DemoConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
