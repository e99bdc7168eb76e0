"""Meta-World's scripted experts (``metaworld.policies.Sawyer<Task>V3Policy``) on privileged observations.

They read Meta-World's 39-d observation, goal included (obs[36:39]; our sims expose it), and solve
489/500 episodes over the 50 tasks (STACK.md). Used for demonstrations and as a rollout sanity check.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Sequence

import numpy as np

from vlaforge.envs.instructions import ALL_TASKS, unknown_task_error

Expert = Callable[[np.ndarray], np.ndarray]


@functools.cache
def _policy(task: str):
    from metaworld.policies import ENV_POLICY_MAP  # lazy: imports mujoco + gymnasium

    if task not in ENV_POLICY_MAP:
        raise unknown_task_error(task, ALL_TASKS)
    return ENV_POLICY_MAP[task]()  # stateless: one instance per task serves every simulator


def make_expert(task: str) -> Expert:
    """Expert of ``task``: privileged obs float (39,) -> action float32 (4,) in [-1, 1]."""
    policy = _policy(task)

    def act(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (39,):
            raise ValueError(f"Expert of {task!r} expects Meta-World's (39,) observation, got shape {obs.shape}.")
        with warnings.catch_warnings():  # "Constant(s) may be too high": we clip, as Meta-World's envs do
            warnings.simplefilter("ignore", UserWarning)
            action = policy.get_action(obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act


def expert_actions(tasks: Sequence[str], privileged: np.ndarray) -> np.ndarray:
    """Batched experts: ``tasks`` (B,) names, ``privileged`` (B, 39) -> actions float32 (B, 4)."""
    privileged = np.asarray(privileged)
    if privileged.ndim != 2 or privileged.shape != (len(tasks), 39):
        raise ValueError(f"expert_actions: privileged must be (B={len(tasks)}, 39), got {privileged.shape}.")
    return np.stack([make_expert(t)(o) for t, o in zip(tasks, privileged)])
