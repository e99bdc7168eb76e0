"""Typed config of a batched simulator env (the ``envs:`` block of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vlaforge.config_base import StrictModel


class EnvConfig(StrictModel):
    backend: str = "metaworld"  # key of ENV_REGISTRY / BACKEND_MODULES (vlaforge/envs), checked by the recipe loader
    # Task names (e.g. reach-v3) or a benchmark set name (MT10, MT50) that expands to its tasks.
    tasks: list[str] = Field(default_factory=lambda: ["reach-v3"], min_length=1)
    image_size: int = Field(64, ge=16, le=512)  # square camera images, pixels
    cameras: list[str] = Field(default_factory=lambda: ["corner"], min_length=1)
    # State vector given to the policy: "proprio" = hand xyz + gripper (4); "proprio_goal" adds the goal
    # xyz (7); "full" = Meta-World's 39-d observation (hand, gripper, objects, previous frame, goal).
    # Meta-World goal markers are 1-2 px at 64 px (STACK.md): give the goal in state.
    state: Literal["proprio", "proprio_goal", "full"] = "full"
    max_episode_steps: int = Field(200, ge=1, le=500)  # Meta-World's own limit is 500
    terminate_on_success: bool = True  # end an episode at its first success step
    # "warp": MuJoCo-Warp's batched ray tracer (one render context per task group; the default, ~3x the
    # plain renderer per image on CPU); "plain": one mujoco.Renderer per simulator (OpenGL/EGL, the reference).
    # Both draw the same scene incl. the goal marker (mean abs difference <= 8/255 per task, tests/envs).
    render_backend: Literal["plain", "warp"] = "warp"
    # Instruction paraphrases (vlaforge/envs/instructions.py): the last ``heldout_paraphrases`` of each
    # task are held out of training; ``instructions`` picks which ones this env samples from per reset.
    instructions: Literal["train", "heldout", "all"] = "train"
    heldout_paraphrases: int = Field(1, ge=0)

    @field_validator("image_size")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"image_size must be even (videos are stored as yuv420p), got {v}; use {v + 1}")
        return v

    @field_validator("tasks")
    @classmethod
    def _no_duplicates(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tasks must be distinct, got {v}")
        return v
