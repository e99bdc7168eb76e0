"""Typed config of evaluation (the ``eval:`` block of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
    videos_per_task: int = Field(1, ge=0)  # rollout videos saved per task (mp4)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)  # Wilson interval level
