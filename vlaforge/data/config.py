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
    # Who acts while recording: "expert" (the task's scripted expert, + action_noise), "random" (uniform
    # actions in the action box), "checkpoint" (the exported policy at policy_path, + action_noise).
    policy: Literal["expert", "random", "checkpoint"] = "expert"
    policy_path: str | None = None  # policy "checkpoint": an exported policy folder (holds config.json)
    # Action-free video (issue 7): the dataset gets NO `action` column, so nothing can train on the labels;
    # the executed actions are kept under `probe.action` for the codes -> actions linear probe only.
    drop_actions: bool = False

    @model_validator(mode="after")
    def _policy_fields(self):
        if self.policy == "checkpoint" and not self.policy_path:
            raise ValueError("demos.policy is 'checkpoint': set demos.policy_path to an exported policy folder")
        if self.policy != "checkpoint" and self.policy_path:
            raise ValueError(f"demos.policy_path is only read with demos.policy 'checkpoint' (got {self.policy!r})")
        if self.policy == "random" and self.only_success:
            raise ValueError("demos.policy 'random' almost never succeeds: set demos.only_success: false")
        return self

    @model_validator(mode="after")
    def _seeds_below_eval(self):
        last = self.seed + self.max_attempts_factor * self.episodes_per_task
        if last > EVAL_SEED_START:
            raise ValueError(
                f"demo seeds run up to seed + max_attempts_factor * episodes_per_task = {last}, into the "
                f"evaluation seeds (>= {EVAL_SEED_START}): lower demos.seed"
            )
        return self


def _default_unlabeled_rollouts() -> DemoConfig:
    # Noisy-expert rollouts, failures kept, seeds far from the labelled demos' (which start at demos.seed).
    return DemoConfig(episodes_per_task=100, action_noise=0.3, only_success=False, seed=500_000, drop_actions=True)


class VideoConfig(StrictModel):
    """Unlabeled video (no action labels) for the lam / latent_pretrain / visual_ssl stages (issue 7).
    Every source ends as a LeRobot v3 folder without an action column (vlaforge/data/unlabeled.py)."""

    # "rollouts": simulator rollouts of `rollouts.policy` on the recipe's envs, actions dropped;
    # "lerobot": the LeRobot v3 dataset at `path`, its action columns ignored (nothing reads them);
    # "mp4": a folder of *.mp4 files at `path` + the `instructions` file, converted into the cache.
    source: Literal["rollouts", "lerobot", "mp4"] = "rollouts"
    path: str | None = None  # lerobot: dataset folder; mp4: folder holding the *.mp4 files
    # mp4: a YAML (or JSON) mapping of every mp4 file name in `path` to its instruction, e.g.
    # {"push_000.mp4": "push the puck to the goal", ...}; a video without an entry is an error.
    instructions: str | None = None
    camera: str = "corner"  # mp4: the camera name its frames are stored under (observation.images.<camera>)
    image_size: int | None = Field(None, ge=8)  # mp4: resize frames to S x S (null: keep; sizes must agree)
    fps: int | None = Field(None, ge=1)  # mp4: frame rate written (null: the first video's own rate)
    min_frames: int = Field(2, ge=2)  # mp4: shorter videos are an error (a pair needs two frames)
    rollouts: DemoConfig = Field(default_factory=_default_unlabeled_rollouts)  # source "rollouts"
    cache_dir: str = "~/.cache/vlaforge/video"  # mp4: converted datasets, one folder per content hash
    lock_timeout_s: float = Field(3600.0, gt=0)  # mp4: wait for another run converting the same folder

    @model_validator(mode="after")
    def _source_fields(self):
        if self.source in ("lerobot", "mp4") and not self.path:
            raise ValueError(f"data.video.source is {self.source!r}: set data.video.path")
        if self.source == "mp4" and not self.instructions:
            raise ValueError("data.video.source is 'mp4': set data.video.instructions (a YAML mapping "
                             "file name -> instruction)")
        if self.source == "rollouts" and not self.rollouts.drop_actions:
            raise ValueError("data.video.rollouts.drop_actions must stay true: unlabeled video carries no actions")
        return self


class DataConfig(StrictModel):
    # A LeRobot v3 dataset folder to train on instead of generated demos (null: use ``demos``).
    path: str | None = None
    # A truncated / corrupt parquet or mp4 file: false (default) stops with an error naming the file and its
    # episodes; true trains on the other episodes, logs each skipped one and counts them (data/skipped_episodes).
    skip_bad_episodes: bool = False
    # Unlabeled video for the latent-action and visual_ssl stages (null: those stages refuse to run).
    video: VideoConfig | None = None

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

