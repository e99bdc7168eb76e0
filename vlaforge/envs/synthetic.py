"""A zero-cost batched env (``envs.backend: synthetic``): the contract's shapes with no simulator behind them.

What it is for: measuring the platform's own costs -- the driver's control plane, the weight broadcast,
trajectory transfer -- as the number of rollout actors grows (bench/scaling.py), and tests of the RL
plumbing that need no physics. Nothing here is learnable: the image is a constant grey frame, the state a
seeded random walk, the reward 0, no success; episodes end by truncation at ``max_episode_steps``.
Shapes follow the Meta-World adapter (state dims 4 / 7 / 39 for proprio / proprio_goal / full, 4-d
actions) so a policy built for one runs on the other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.envs.base import BatchedEnv, EnvSpec, register_env
from vlaforge.envs.config import EnvConfig
from vlaforge.envs.tasks import resolve_tasks, task_index

STATE_DIMS = {"proprio": 4, "proprio_goal": 7, "full": 39}
PRIVILEGED_DIM, ACTION_DIM = 39, 4


class SyntheticBatchedEnv(BatchedEnv):
    supports_deferred_render = True  # render() is free; kept so rollouts take their usual deferred path

    def __init__(self, cfg: EnvConfig, tasks: Sequence[str], seed: int = 0):
        self.cfg = cfg
        tasks = resolve_tasks(tasks)
        b, v, s = len(tasks), len(cfg.cameras), cfg.image_size
        self.spec = EnvSpec(tasks=tuple(tasks), image_shape=(v, s, s, 3), state_dim=STATE_DIMS[cfg.state],
                            privileged_dim=PRIVILEGED_DIM, action_dim=ACTION_DIM, action_low=-1.0, action_high=1.0,
                            max_episode_steps=cfg.max_episode_steps, cameras=tuple(cfg.cameras), fps=80)
        self._rng = np.random.default_rng(seed)
        self._image = torch.full((b, v, s, s, 3), 128, dtype=torch.uint8)  # (B, V, H, W, 3), never changes
        self._priv = np.zeros((b, PRIVILEGED_DIM), np.float32)  # (B, 39)
        self._task_index = torch.tensor([task_index(t) for t in tasks], dtype=torch.int64)  # (B,)
        self._instruction = [f"do {t}" for t in tasks]
        self.elapsed_steps = np.zeros(b, np.int64)

    def _ids(self, env_ids) -> list[int]:
        if env_ids is None:
            return list(range(self.num_envs))
        t = torch.as_tensor(env_ids)
        return t.flatten().nonzero().flatten().tolist() if t.dtype == torch.bool else t.flatten().tolist()

    def reset(self, env_ids=None, seeds=None) -> TensorDict:
        ids = self._ids(env_ids)
        for k, i in enumerate(ids):
            rng = np.random.default_rng(int(seeds[k])) if seeds is not None else self._rng
            self._priv[i] = rng.normal(size=PRIVILEGED_DIM).astype(np.float32) * 0.1
            self.elapsed_steps[i] = 0
        return self._observation()

    def step(self, action: torch.Tensor, render: bool = True) -> TensorDict:
        b = self.num_envs
        act = torch.as_tensor(action, dtype=torch.float32).reshape(b, ACTION_DIM).clamp(-1.0, 1.0).numpy()
        self._priv[:, :ACTION_DIM] += 0.01 * act  # the "hand" follows the action: states differ per episode
        self.elapsed_steps += 1
        truncated = torch.from_numpy((self.elapsed_steps >= self.cfg.max_episode_steps)[:, None])
        zeros = torch.zeros((b, 1), dtype=torch.bool)
        nxt = self._observation()
        nxt.update({keys.REWARD: torch.zeros((b, 1)), keys.SUCCESS: zeros, keys.TERMINATED: zeros.clone(),
                    keys.TRUNCATED: truncated, keys.DONE: truncated.clone()})
        return TensorDict({keys.NEXT: nxt}, batch_size=[b])

    def render(self, env_ids=None) -> torch.Tensor:
        return self._image[self._ids(env_ids)]

    def _observation(self) -> TensorDict:
        td = TensorDict({
            keys.IMAGE: self._image.clone(),
            keys.STATE: torch.from_numpy(self._priv[:, : self.spec.state_dim].copy()),
            keys.PRIVILEGED: torch.from_numpy(self._priv.copy()),
            keys.TASK_INDEX: self._task_index.clone(),
        }, batch_size=[self.num_envs])
        td.set(keys.INSTRUCTION, NonTensorStack.from_list(list(self._instruction)))
        return td


@register_env("synthetic")
def make_synthetic_env(cfg: EnvConfig, tasks: Sequence[str], seed: int = 0) -> SyntheticBatchedEnv:
    return SyntheticBatchedEnv(cfg, tasks, seed)
