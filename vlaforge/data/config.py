"""Typed config of demonstrations and datasets (the ``demos:`` and ``data:`` blocks of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlaforge.config_base import StrictModel

# Evaluation's fixed initial states use seeds from here on (EvalConfig.seed_offset's default):
# demonstration seeds must stay below, so evaluation never replays a training initial state.
EVAL_SEED_START = 1_000_000


class DemoConfig(StrictModel):
    episodes_per_task: int = Field(20, ge=1)  # successful episodes kept per task
    only_success: bool = True  # drop failed expert episodes (and generate more until the count is met)
    max_attempts_factor: int = Field(3, ge=1)  # give up after factor * episodes_per_task tries per task
    # Base seed of the initial states: attempt a of every task resets with seed + a.
    seed: int = Field(0, ge=0)
    num_workers: int = Field(2, ge=1)  # parallel Ray actors generating demos
    envs_per_worker: int = Field(4, ge=1)  # B simulators per actor (episodes run back to back per slot)
    action_noise: float = Field(0.0, ge=0.0)  # Gaussian noise on expert actions (recorded: the noisy one)
    success_extra_steps: int = Field(0, ge=0)  # steps kept after the first success (then the episode ends)
    # Where datasets are cached; one folder per content hash of (env config, demo config, version).
    cache_dir: str = "~/.cache/vlaforge/demos"
    video_codec: Literal["h264", "av1"] = "h264"  # "h264" (fast) or "av1" (LeRobot's default, libsvtav1)
    # Seconds a run waits for another run that is building the same cache entry (then reuses its result).
    lock_timeout_s: float = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _seeds_below_eval(self):
        last = self.seed + self.max_attempts_factor * self.episodes_per_task
        if last > EVAL_SEED_START:
            raise ValueError(
                f"demo seeds run up to seed + max_attempts_factor * episodes_per_task = {last}, into the "
                f"evaluation seeds (>= {EVAL_SEED_START}): lower demos.seed"
            )
        return self


class DataConfig(StrictModel):
    # A LeRobot v3 dataset folder to train on instead of generated demos (null: use ``demos``).
    path: str | None = None
    # A truncated / corrupt parquet or mp4 file: false (default) stops with an error naming the file and its
    # episodes; true trains on the other episodes, logs each skipped one and counts them (data/skipped_episodes).
    skip_bad_episodes: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_validation_split(cls, data):
        # `val_fraction` was accepted but no learner ever held episodes out: removed. Recipes saved by earlier
        # runs carry `val_fraction: 0.0` (resume must still load them); any other value is refused.
        if isinstance(data, dict) and "val_fraction" in data:
            if data["val_fraction"] not in (0, 0.0):
                raise ValueError("data.val_fraction is not implemented (no learner holds out validation episodes): "
                                 "remove it")
            data = {k: v for k, v in data.items() if k != "val_fraction"}
        return data
