"""Typed config of demonstrations and datasets (the ``demos:`` and ``data:`` blocks of a recipe)."""

from __future__ import annotations

from pydantic import Field

from vlaforge.config_base import StrictModel


class DemoConfig(StrictModel):
    episodes_per_task: int = Field(20, ge=1)  # successful episodes kept per task
    only_success: bool = True  # drop failed expert episodes (and generate more until the count is met)
    max_attempts_factor: int = Field(3, ge=1)  # give up after factor * episodes_per_task tries per task
    seed: int = 0  # base seed of the initial states (demo seeds never overlap eval seeds)
    num_workers: int = Field(2, ge=1)  # parallel Ray actors generating demos
    action_noise: float = Field(0.0, ge=0.0)  # Gaussian noise on expert actions (recorded: the noisy one)
    # Where datasets are cached; one folder per content hash of (env config, demo config, version).
    cache_dir: str = "~/.cache/vlaforge/demos"
    video_codec: str = "h264"  # "h264" (fast) or "av1" (LeRobot's default, libsvtav1)


class DataConfig(StrictModel):
    # A LeRobot v3 dataset folder to train on instead of generated demos (null: use ``demos``).
    path: str | None = None
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # episodes held out for a validation loss
