"""The batched environment contract.

One env object holds B simulators and speaks tensors. CPU simulators (Meta-World, MuJoCo) are wrapped
into it; GPU-parallel simulators (Isaac Gym / Isaac Lab / MuJoCo-Warp) implement it natively -- nothing
below assumes a Python object per simulator. Partial resets go by env index, as in Isaac Lab.

Observation TensorDict, batch size (B,) (keys from ``vlaforge.keys``):
    observation/image        uint8   (B, V, H, W, 3)
    observation/state        float32 (B, S)
    observation/privileged   float32 (B, P)   full simulator observation (experts, critics)
    observation/instruction  NonTensorStack of B strings
    observation/task_index   int64   (B,)
``step`` returns a TensorDict, batch (B,), holding ``("next", <observation keys>)`` and
``("next", reward|terminated|truncated|done|success)`` with trailing singleton dims (B, 1).
Environments do NOT auto-reset: the caller resets the finished indices (``reset(env_ids=...)``), so
episode boundaries and fixed initial states stay under the caller's control.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tensordict import TensorDict


@dataclass(frozen=True)
class EnvSpec:
    tasks: tuple[str, ...]  # task of each of the B simulators, in env-index order
    image_shape: tuple[int, int, int, int]  # (V, H, W, 3)
    state_dim: int
    privileged_dim: int
    action_dim: int
    action_low: float
    action_high: float
    max_episode_steps: int
    cameras: tuple[str, ...]
    fps: int

    @property
    def num_envs(self) -> int:
        return len(self.tasks)


class BatchedEnv(ABC):
    spec: EnvSpec

    @property
    def num_envs(self) -> int:
        return self.spec.num_envs

    @abstractmethod
    def reset(
        self, env_ids: Sequence[int] | torch.Tensor | None = None, seeds: Sequence[int] | None = None
    ) -> TensorDict:
        """Reset the simulators ``env_ids`` (default: all), each with its seed from ``seeds``
        (one per reset env; a seed fixes the initial state, e.g. Meta-World's goal and object poses).
        Returns the observation TensorDict of ALL B simulators (the others unchanged)."""

    @abstractmethod
    def step(self, action: torch.Tensor) -> TensorDict:
        """Advance every simulator by one step with ``action`` float32 (B, A), clipped to the action
        bounds. Returns a TensorDict (B,) with the ``("next", ...)`` entries listed above.

        Envs with ``supports_deferred_render`` also take ``render=False``: physics only, and the returned
        observation/image holds the last rendered frames; ``render(env_ids)`` renders what is needed."""

    # True when step(action, render=False) and render(env_ids) work: rendering is THE cost of a CPU
    # simulator step (STACK.md), and a rollout that runs a chunk open-loop needs images only where the
    # policy or the trajectory looks (decision points, episode ends), not at every intermediate step.
    supports_deferred_render: bool = False

    def render(self, env_ids: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 (n, V, H, W, 3) of the current states of ``env_ids`` (default: all B; the same images as
        observation/image); the next observation reports them too."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 -- optional hook
        pass


# name -> factory(cfg, tasks, seed) ; filled by each backend module (registries, not if/elif chains)
ENV_REGISTRY: dict[str, Callable[..., BatchedEnv]] = {}


def register_env(name: str):
    def deco(factory):
        ENV_REGISTRY[name] = factory
        return factory

    return deco
