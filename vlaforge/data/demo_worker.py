"""One demonstration worker (a Ray actor in ``generate_demos``): B simulators of one task, stepped by the
task's scripted expert on the privileged observation -- or, for unlabeled video (issue 7), by uniform random
actions or an exported policy checkpoint (``demos.policy``); ``action_noise`` applies to expert and checkpoint.

A job is (task, seeds). The B slots run episodes back to back: a slot that finishes is reset at once
with the next seed of the job, so the batch stays full until the job's seeds run out (a finished slot
with no seed left is parked: re-reset to its last seed and ignored). Episode rule: stop
``success_extra_steps`` steps after the first success, or at truncation (``max_episode_steps``).

Frame t of an episode holds observation t, the action taken on it, and that step's results
(``next.reward``, ``next.success``, ``next.done`` = last frame) -- LeRobot's convention.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.envs.config import EnvConfig


class DemoWorker:
    def __init__(self, env_cfg: dict[str, Any], envs_per_worker: int, action_noise: float, success_extra_steps: int,
                 policy: str = "expert", policy_path: str | None = None):
        # Demonstrations always carry training paraphrases; the env draws one per reset from its seed.
        self.env_cfg = EnvConfig.model_validate({**env_cfg, "instructions": "train"})
        self.num_envs, self.noise, self.extra = int(envs_per_worker), float(action_noise), int(success_extra_steps)
        self.env, self.task = None, None
        self.policy = policy  # "expert" | "random" | "checkpoint" (DemoConfig.policy)
        self.runner = None
        if policy == "checkpoint":  # an exported policy drives the sims (deterministic chunks, then the noise)
            from vlaforge.policies.io import load_pretrained
            from vlaforge.policies.runner import PolicyRunner

            model, processor, cfg, _, _ = load_pretrained(policy_path)
            self.runner = PolicyRunner(model, processor, n_action_steps=cfg.n_action_steps, deterministic=True)
        torch.set_num_threads(1)
        # Meta-World's experts warn once per process that their gains exceed the clipped action range.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")

    def _env_for(self, task: str):
        from vlaforge.envs import make_env  # lazy: mujoco / Meta-World

        if self.task != task:
            if self.env is not None:
                self.env.close()
            self.env, self.task = None, None
            self.env = make_env(self.env_cfg, [task] * self.num_envs, seed=0)
            self.task = task
        return self.env

    def spec(self, task: str) -> dict[str, Any]:
        s = self._env_for(task).spec
        return {"fps": s.fps, "image_shape": s.image_shape, "state_dim": s.state_dim,
                "privileged_dim": s.privileged_dim, "action_dim": s.action_dim, "cameras": list(s.cameras)}

    def run(self, task: str, seeds: Sequence[int]) -> dict[str, Any]:
        """Run one episode per seed. Returns {"episodes": [episode dict...], "steps": batched env steps x B,
        "seconds": wall time}. An episode dict holds every frame feature (numpy, (T, ...)) plus
        "seed", "instruction", "success" (bool), "length"."""
        from vlaforge.envs import expert_actions

        t0 = time.perf_counter()
        env = self._env_for(task)
        b, spec = env.num_envs, env.spec
        queue = [int(s) for s in seeds]
        slot_seed: list[int | None] = [None] * b
        bufs: list[dict[str, list] | None] = [None] * b
        since_success = np.full(b, -1)  # steps since the first success (-1: none yet)
        done_eps: list[dict[str, Any]] = []

        noise_rng: list[np.random.Generator | None] = [None] * b  # per episode, from its seed

        def start(ids: list[int]):
            nonlocal queue
            new = [s for _, s in zip(ids, queue)]
            queue = queue[len(new):]
            reset_seeds = [*new, *(slot_seed[i] if slot_seed[i] is not None else 0 for i in ids[len(new):])]
            for j, i in enumerate(ids):
                live = j < len(new)
                slot_seed[i] = reset_seeds[j]
                bufs[i] = _new_buffer() if live else None
                noise_rng[i] = np.random.default_rng([reset_seeds[j], 0xD3]) if live else None
                since_success[i] = -1
            return env.reset(env_ids=ids, seeds=reset_seeds)

        obs = start(list(range(b)))
        if self.runner is not None:
            self.runner.reset()
        steps = 0
        while any(buf is not None for buf in bufs):
            priv = obs.get(keys.PRIVILEGED).numpy()  # (B, 39)
            if self.policy == "random":  # uniform in the action box, per episode from its seed
                action = np.stack([r.uniform(spec.action_low, spec.action_high, spec.action_dim) if r is not None
                                   else np.zeros(spec.action_dim) for r in noise_rng])  # (B, A)
            elif self.runner is not None:
                action = self.runner.act(obs).numpy()  # (B, A) raw, clipped
            else:
                action = expert_actions([task] * b, priv)  # (B, 4) float32 in [-1, 1]
            if self.noise > 0 and self.policy != "random":  # the noisy action is executed and recorded
                for i, r in enumerate(noise_rng):
                    if r is not None:
                        action[i] = action[i] + r.normal(0.0, self.noise, action.shape[1])
                action = np.clip(action, spec.action_low, spec.action_high)
            action = action.astype(np.float32)
            out = env.step(torch.from_numpy(action))
            steps += b
            nxt = out.get(keys.NEXT)
            success = nxt.get(keys.SUCCESS).numpy()[:, 0]
            truncated = nxt.get(keys.TRUNCATED).numpy()[:, 0]
            reward = nxt.get(keys.REWARD).numpy()[:, 0]
            image, state = obs.get(keys.IMAGE).numpy(), obs.get(keys.STATE).numpy()
            instr = obs.get(keys.INSTRUCTION).tolist()
            finished = []
            for i in range(b):
                buf = bufs[i]
                if buf is None:
                    continue
                buf["image"].append(image[i])
                buf["state"].append(state[i])
                buf["priv"].append(priv[i])
                buf["action"].append(action[i])
                buf["reward"].append(reward[i])
                buf["success"].append(bool(success[i]))
                buf["instruction"] = instr[i]
                if since_success[i] >= 0 or success[i]:
                    since_success[i] += 1
                if truncated[i] or since_success[i] >= self.extra:
                    done_eps.append(_finish(buf, slot_seed[i], spec.cameras))
                    finished.append(i)
            # Slots past their episode: new seeds (or parked). Observations of the others stay current.
            obs = nxt.exclude(keys.REWARD, keys.SUCCESS, keys.TERMINATED, keys.TRUNCATED, keys.DONE)
            if finished:
                obs = start(finished)
                if self.runner is not None:  # new episodes plan afresh
                    self.runner.reset(finished)
        return {"episodes": done_eps, "steps": steps, "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def _new_buffer() -> dict[str, list]:
    return {"image": [], "state": [], "priv": [], "action": [], "reward": [], "success": [], "instruction": ""}


def _finish(buf: dict[str, list], seed: int | None, cameras: Sequence[str]) -> dict[str, Any]:
    """Buffer -> one episode's frame arrays, under the dataset's feature names."""
    t = len(buf["action"])
    images = np.stack(buf["image"])  # (T, V, H, W, 3)
    ep: dict[str, Any] = {F.IMAGE_PREFIX + c: np.ascontiguousarray(images[:, v]) for v, c in enumerate(cameras)}
    done = np.zeros(t, bool)
    done[-1] = True
    ep.update({
        F.STATE_KEY: np.stack(buf["state"]).astype(np.float32),
        F.PRIVILEGED_KEY: np.stack(buf["priv"]).astype(np.float32),
        F.ACTION_KEY: np.stack(buf["action"]).astype(np.float32),
        F.REWARD_KEY: np.asarray(buf["reward"], np.float32),
        F.SUCCESS_KEY: np.asarray(buf["success"], bool),
        F.DONE_KEY: done,
    })
    ep.update({"seed": int(seed), "instruction": buf["instruction"], "success": bool(any(buf["success"])), "length": t})
    return ep
