"""Meta-World v3 as a BatchedEnv: B simulators in one process, one per entry of a per-slot task list.

Observation (contract in vlaforge/envs/base.py), B = len(tasks), V = len(cfg.cameras):
    observation/image        uint8   (B, V, H, W, 3)  upright images, H = W = cfg.image_size
    observation/state        float32 (B, S)           cfg.state, see STATE_INDEX:
        "proprio"      S=4:  hand xyz + gripper opening          = obs[0:4]
        "proprio_goal" S=7:  + goal xyz                          = obs[0:4] ++ obs[36:39]
        "full"         S=39: Meta-World's observation (hand, gripper, up to 2 objects' pos + quat,
                             the same 18 values of the previous frame, goal xyz)
    observation/privileged   float32 (B, 39)          Meta-World's raw observation (experts, critics)
    observation/instruction  NonTensorStack of B str  one paraphrase per episode (instructions.py)
    observation/task_index   int64   (B,)             index into ALL_TASKS = Meta-World's one-hot task id
Step results under "next": reward float32 (B, 1) = Meta-World's dense reward; success bool (B, 1) =
info["success"]; terminated = success and cfg.terminate_on_success; truncated = the episode reached
cfg.max_episode_steps; done = terminated | truncated. No auto-reset: the caller resets by env ids.

Every reset draws a fresh goal and object layout from its seed (explicit ``seeds``, else the env's
seed stream, itself seeded by the factory ``seed``): the same seed gives the same initial state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.envs.base import BatchedEnv, EnvSpec, register_env
from vlaforge.envs.config import EnvConfig
from vlaforge.envs.instructions import instructions_for, sample_instruction
from vlaforge.envs.metaworld_sim import control_fps, make_sim, place_site_markers, seed_and_reset
from vlaforge.envs.render import make_renderer
from vlaforge.envs.tasks import resolve_tasks, task_index

PRIVILEGED_DIM = 39
ACTION_DIM = 4  # hand xyz delta (x 1 cm) + gripper effort, each in [-1, 1]

# cfg.state -> indices into Meta-World's 39-d observation
STATE_INDEX: dict[str, np.ndarray] = {
    "proprio": np.arange(0, 4),
    "proprio_goal": np.r_[0:4, 36:39],
    "full": np.arange(0, PRIVILEGED_DIM),
}


class MetaWorldBatchedEnv(BatchedEnv):
    def __init__(self, cfg: EnvConfig, tasks: Sequence[str], seed: int = 0):
        self.cfg = cfg
        tasks = resolve_tasks(tasks)
        if cfg.state not in STATE_INDEX:
            raise ValueError(f"Unknown state {cfg.state!r}: expected one of {sorted(STATE_INDEX)}.")
        self._state_idx = STATE_INDEX[cfg.state]
        for task in set(tasks):  # fail at construction, not at the first reset, on a bad split
            instructions_for(task, cfg.instructions, cfg.heldout_paraphrases)
        self._seed_stream = np.random.default_rng(seed)  # seeds for resets without explicit seeds
        self.sims = []
        try:
            for i, task in enumerate(tasks):
                self.sims.append(make_sim(task))
            self._renderer = make_renderer(
                cfg.render_backend,
                [s.model for s in self.sims],
                [s.data for s in self.sims],
                cfg.cameras,
                cfg.image_size,
            )
        except Exception:
            self.close()
            raise
        b, v, s = len(tasks), len(cfg.cameras), cfg.image_size
        self.spec = EnvSpec(
            tasks=tuple(tasks),
            image_shape=(v, s, s, 3),
            state_dim=len(self._state_idx),
            privileged_dim=PRIVILEGED_DIM,
            action_dim=ACTION_DIM,
            action_low=-1.0,
            action_high=1.0,
            max_episode_steps=cfg.max_episode_steps,
            cameras=tuple(cfg.cameras),
            fps=control_fps(self.sims[0]),
        )
        # Current observation of every slot (a reset of some ids leaves the others' entries as they are).
        self._priv = np.zeros((b, PRIVILEGED_DIM), np.float32)  # (B, 39)
        self._image = np.zeros((b, v, s, s, 3), np.uint8)  # (B, V, H, W, 3)
        self._instruction = [""] * b
        self._task_index = torch.tensor([task_index(t) for t in tasks], dtype=torch.int64)  # (B,)
        self.elapsed_steps = np.zeros(b, np.int64)  # steps since each slot's last reset
        self.seeds = np.full(b, -1, np.int64)  # seed of each slot's current episode (-1: never reset)
        self._needs_reset = np.ones(b, bool)

    # -- contract -------------------------------------------------------------------------------------
    def reset(
        self, env_ids: Sequence[int] | torch.Tensor | None = None, seeds: Sequence[int] | None = None
    ) -> TensorDict:
        """See BatchedEnv.reset; ``env_ids`` may also be a boolean done mask (B,) or (B, 1)."""
        ids = self._ids(env_ids)
        if seeds is None:
            seeds = self._seed_stream.integers(0, 2**31 - 1, size=len(ids))
        elif len(seeds) != len(ids):
            raise ValueError(f"reset: got {len(seeds)} seeds for {len(ids)} env ids {ids}: pass one seed per id.")
        for i, seed in zip(ids, seeds):
            task = self.spec.tasks[i]
            try:
                obs = seed_and_reset(self.sims[i], int(seed))
            except Exception as e:
                raise RuntimeError(f"Meta-World env {i} ({task}) failed in reset(seed={seed}): {e!r}") from e
            self._priv[i] = obs
            self.seeds[i] = int(seed)
            self.elapsed_steps[i] = 0
            self._needs_reset[i] = False
            # Instruction drawn from the reset seed too: a seed fixes the whole initial observation.
            rng = np.random.default_rng([int(seed), 0x1A57])
            split, heldout = self.cfg.instructions, self.cfg.heldout_paraphrases
            self._instruction[i] = sample_instruction(task, split, heldout, rng)
        self._render(ids)
        return self._observation()

    supports_deferred_render = True  # step(render=False) + render(env_ids): see BatchedEnv

    def step(self, action: torch.Tensor, render: bool = True) -> TensorDict:
        b = self.num_envs
        act = torch.as_tensor(action).detach().cpu().to(torch.float32).numpy()
        if act.shape != (b, ACTION_DIM):
            raise ValueError(f"MetaWorldBatchedEnv.step: action must be (B={b}, A={ACTION_DIM}), got {act.shape}.")
        if not np.isfinite(act).all():
            bad = np.nonzero(~np.isfinite(act).all(1))[0].tolist()
            raise ValueError(f"MetaWorldBatchedEnv.step: non-finite actions for env ids {bad}.")
        if self._needs_reset.any():
            never = np.flatnonzero(self._needs_reset).tolist()
            raise RuntimeError(f"MetaWorldBatchedEnv: step() before reset() for env ids {never}.")
        act = np.clip(act, -1.0, 1.0)
        reward = np.zeros((b, 1), np.float32)
        success = np.zeros((b, 1), bool)
        for i, sim in enumerate(self.sims):
            try:
                obs, r, _, _, info = sim.step(act[i])
            except Exception as e:
                raise RuntimeError(f"Meta-World env {i} ({self.spec.tasks[i]}) failed in step: {e!r}") from e
            self._priv[i] = obs
            reward[i, 0] = r
            success[i, 0] = bool(info["success"])
        self.elapsed_steps += 1
        if render:
            self._render(range(b))
        terminated = success & self.cfg.terminate_on_success
        truncated = (self.elapsed_steps >= self.cfg.max_episode_steps)[:, None]
        nxt = self._observation()
        nxt.update(
            {
                keys.REWARD: torch.from_numpy(reward),
                keys.SUCCESS: torch.from_numpy(success),
                keys.TERMINATED: torch.from_numpy(terminated),
                keys.TRUNCATED: torch.from_numpy(truncated),
                keys.DONE: torch.from_numpy(terminated | truncated),
            }
        )
        return TensorDict({keys.NEXT: nxt}, batch_size=[b])

    def render(self, env_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        ids = self._ids(env_ids)
        self._render(ids)
        return torch.from_numpy(self._image[ids])  # fancy indexing: a copy

    def close(self) -> None:
        renderer = getattr(self, "_renderer", None)
        if renderer is not None:
            renderer.close()
            self._renderer = None
        for sim in getattr(self, "sims", []):
            sim.close()
        self.sims = []

    # -- helpers --------------------------------------------------------------------------------------
    def _ids(self, env_ids) -> list[int]:
        b = self.num_envs
        if env_ids is None:
            return list(range(b))
        arr = np.asarray(env_ids.detach().cpu() if isinstance(env_ids, torch.Tensor) else env_ids)
        if arr.dtype == bool:  # a done mask (B,) or (B, 1): the indices where it is True
            if arr.size != b:
                raise ValueError(f"reset: a boolean env_ids mask needs {b} entries, got shape {arr.shape}.")
            arr = np.flatnonzero(arr)
        ids = [int(i) for i in arr.reshape(-1)]
        bad = [i for i in ids if not 0 <= i < b]
        if bad or len(set(ids)) != len(ids):
            raise ValueError(f"reset: env_ids must be distinct indices in [0, {b}), got {ids}.")
        return ids

    def _render(self, ids: Sequence[int]) -> None:
        ids = list(ids)
        if ids:
            for sim in self.sims:  # all: a Warp task group renders all its worlds (a few array writes each)
                place_site_markers(sim)
            self._image[ids] = self._renderer.render([s.data for s in self.sims], ids)  # (n, V, H, W, 3)

    def _observation(self) -> TensorDict:
        b = self.num_envs
        td = TensorDict(
            {
                keys.IMAGE: torch.from_numpy(self._image.copy()),
                keys.STATE: torch.from_numpy(self._priv[:, self._state_idx].copy()),
                keys.PRIVILEGED: torch.from_numpy(self._priv.copy()),
                keys.TASK_INDEX: self._task_index.clone(),
            },
            batch_size=[b],
        )
        td.set(keys.INSTRUCTION, NonTensorStack.from_list(list(self._instruction)))
        return td


@register_env("metaworld")
def make_metaworld_env(cfg: EnvConfig, tasks: Sequence[str], seed: int = 0) -> MetaWorldBatchedEnv:
    """B = len(tasks) Meta-World simulators (benchmark names like "MT10" expand in place)."""
    return MetaWorldBatchedEnv(cfg, tasks, seed)
