"""Evaluation actor: a batched env + a policy replica -> finished episodes on fixed initial states.

One call evaluates up to B episodes of ONE task (one wave): slot i resets with ``seeds[i]``, all slots
step until every episode ended, and each slot's first episode is the one reported (a slot that finished
early idles; the env contract steps all B). Results stream back per wave, so memory stays bounded by
one wave of (optional) video frames, not by the size of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vlaforge import keys as K
from vlaforge.envs import make_env
from vlaforge.envs.config import EnvConfig


@dataclass
class EpisodeResult:
    task: str
    seed: int
    instruction: str
    success: bool
    episode_return: float
    length: int  # env steps until the episode ended (first success with terminate_on_success)
    frames: np.ndarray | None = field(default=None, repr=False)  # uint8 (T, H, W*V, 3) when recorded


class EvalWorker:
    """Ray actor class (wrapped with ray.remote by the caller)."""

    def __init__(self, policy_dir: str, env_cfg: dict, threads: int = 1):
        from vlaforge.runtime.process import apply_process_env, set_threads
        from vlaforge.policies.io import load_pretrained
        from vlaforge.policies.runner import PolicyRunner

        apply_process_env()
        set_threads(threads)
        self.env_cfg = EnvConfig.model_validate(env_cfg)
        policy, processor, pcfg, _spec, _extra = load_pretrained(policy_dir)
        policy.eval()
        self.runner = PolicyRunner(policy, processor, n_action_steps=pcfg.n_action_steps, deterministic=True)
        self._envs: dict[tuple[str, int], object] = {}

    def _env(self, task: str, n: int):
        key = (task, n)
        if key not in self._envs:
            for old in self._envs.values():  # one env alive at a time: bounded memory
                old.close()
            self._envs = {key: make_env(self.env_cfg, [task] * n, seed=0)}
        return self._envs[key]

    def run_wave(self, task: str, seeds: list[int], record: list[bool]) -> list[EpisodeResult]:
        n = len(seeds)
        env = self._env(task, n)
        obs = env.reset(seeds=list(seeds))
        self.runner.reset()
        active = torch.ones(n, dtype=torch.bool)
        success = torch.zeros(n, dtype=torch.bool)
        ret = torch.zeros(n)
        length = torch.zeros(n, dtype=torch.long)
        instructions = list(obs[K.INSTRUCTION])
        frames: list[list[np.ndarray]] = [[] for _ in range(n)]

        def grab(td):
            img = td[K.IMAGE].numpy()  # (B, V, H, W, 3) -> cameras side by side (B, H, V*W, 3)
            for i in range(n):
                if record[i] and active[i]:
                    frames[i].append(np.concatenate(list(img[i]), axis=1))

        grab(obs)
        while active.any():
            action = self.runner.act(obs)  # (B, A)
            out = env.step(action)
            nxt = out[K.NEXT]
            r = nxt[K.REWARD].squeeze(-1)
            ret += torch.where(active, r, torch.zeros_like(r))
            length += active.long()
            success |= active & nxt[K.SUCCESS].squeeze(-1)
            obs = nxt.exclude(K.REWARD, K.DONE, K.TERMINATED, K.TRUNCATED, K.SUCCESS)
            grab(obs)
            active &= ~nxt[K.DONE].squeeze(-1)
        return [
            EpisodeResult(
                task=task,
                seed=int(seeds[i]),
                instruction=str(instructions[i]),
                success=bool(success[i]),
                episode_return=float(ret[i]),
                length=int(length[i]),
                frames=np.stack(frames[i]) if record[i] else None,
            )
            for i in range(n)
        ]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs = {}
