"""Reward model inference for RL: a ``RewardScorer`` used inside rollout actors, the same scorer as a
Ray actor group (``RewardWorker``), reward mixing, and the metrics that make reward hacking visible.

Per decision (obs -> chunk -> next obs), inside a rollout actor:

    scorer = RewardScorer(rm_cfg.model_dir, cfg=rm_cfg)          # once per actor
    rm = scorer.rm_reward(obs, next_obs)                          # (B,) by cfg.output
    reward = mix_rewards(env_reward, rm.unsqueeze(-1), rm_cfg)    # (B, 1) by cfg.mode

or on a whole trajectory [B, T] (with ("next", image)) after sampling: ``traj = scorer.annotate(traj)``
adds ("next", "rm_reward") and ("next", "env_reward") and sets ("next", "reward") by the mode. The driver
logs ``reward_metrics(traj["next", "rm_reward"], traj["next", "success"])`` every iteration.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import (
    RewardModel,
    RewardProcessor,
    auroc,
    load_reward_model,
    pearson,
    predict_logits,
)

# cfg.output: (p(success | obs) or None, p(success | next obs), threshold) -> reward (B,)
REWARD_OUTPUTS: dict[str, Callable[[torch.Tensor | None, torch.Tensor, float], torch.Tensor]] = {
    "level": lambda p0, p1, thr: p1,
    "delta": lambda p0, p1, thr: p1 - p0,  # potential-based shaping: sums to p(last) - p(first) per episode
    "binary": lambda p0, p1, thr: (p1 >= thr).float(),
}
# cfg.mode: (env reward, RM reward, mix weight) -> the reward the RL objective sees
REWARD_MIXERS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "env": lambda env, rm, w: env,
    "rm": lambda env, rm, w: rm,
    "mix": lambda env, rm, w: (1.0 - w) * env + w * rm,
}


def mix_rewards(env_reward: torch.Tensor, rm_reward: torch.Tensor, cfg: RewardModelConfig) -> torch.Tensor:
    """Reward of cfg.mode from equally shaped env and RM rewards (e.g. (B, 1) or (B, T, 1))."""
    if env_reward.shape != rm_reward.shape:
        raise ValueError(f"mix_rewards: env reward {tuple(env_reward.shape)} and RM reward {tuple(rm_reward.shape)} differ")
    return REWARD_MIXERS[cfg.mode](env_reward.float(), rm_reward.float(), cfg.mix_weight)


def reward_metrics(rm_rewards: torch.Tensor, true_success: torch.Tensor, prefix: str = "reward/") -> dict[str, float]:
    """RM reward next to the simulator's success (same shape, e.g. per decision (B, T, 1)):
    rm_mean, true_success (rate), rm_success_corr (Pearson; NaN if either is constant) and rm_auroc
    (how well the RM reward ranks success steps above the others; NaN without both kinds). A rising
    rm_mean with a flat true_success and a falling correlation is reward hacking."""
    rm, ok = rm_rewards.detach().float().flatten(), true_success.detach().flatten().bool()
    if rm.numel() != ok.numel() or rm.numel() == 0:
        raise ValueError(f"reward_metrics: {rm.numel()} RM rewards vs {ok.numel()} success flags (need equal, > 0)")
    return {f"{prefix}rm_mean": float(rm.mean()), f"{prefix}true_success": float(ok.float().mean()),
            f"{prefix}rm_success_corr": pearson(rm, ok.float()), f"{prefix}rm_auroc": auroc(rm, ok)}


def _next_obs(traj: TensorDictBase) -> TensorDict:
    """The observation after each decision: ("next", image / state), the decision's own instruction."""
    nxt = traj.get(keys.NEXT)
    if keys.IMAGE not in nxt.keys(True):
        raise KeyError("RewardScorer.annotate needs ('next', 'observation', 'image'): the RM scores the observation "
                       "each decision leads to")
    out = TensorDict({keys.IMAGE: nxt.get(keys.IMAGE)}, batch_size=traj.batch_size)
    src = nxt if keys.STATE in nxt.keys(True) else traj
    if keys.STATE in src.keys(True):
        out.set(keys.STATE, src.get(keys.STATE))
    out.set(keys.INSTRUCTION, traj.get(keys.INSTRUCTION))  # the next obs belongs to the same episode
    return out


class RewardScorer:
    """``model``: a reward model directory (save_reward_model) or a RewardModel (then ``processor`` too).
    ``cfg``: the recipe's reward_model block (mode / output / threshold); default: the model's own."""

    def __init__(self, model: str | os.PathLike | RewardModel, processor: RewardProcessor | None = None,
                 cfg: RewardModelConfig | None = None, device: str | torch.device = "cpu", batch_size: int = 256):
        if isinstance(model, RewardModel):
            if processor is None:
                raise ValueError("RewardScorer(model=RewardModel) needs its RewardProcessor too")
            self.model, self.processor = model.to(device).eval(), processor
        else:
            self.model, self.processor, _ = load_reward_model(model, device)
        self.cfg = cfg if cfg is not None else self.model.cfg
        self.batch_size = int(batch_size)

    def logits(self, obs: TensorDictBase) -> torch.Tensor:
        return predict_logits(self.model, self.processor, obs, self.batch_size)  # obs.batch_size

    def score(self, obs: TensorDictBase) -> torch.Tensor:
        """p(success | observation), shape obs.batch_size (e.g. (B,)). For kind "preference" it is the
        sigmoid of the per-frame score: monotone in it, not a calibrated probability."""
        return self.logits(obs).sigmoid()

    def rm_reward(self, obs: TensorDictBase | None, next_obs: TensorDictBase) -> torch.Tensor:
        """Reward of the decision obs -> next_obs by cfg.output, shape next_obs.batch_size. ``obs`` is only
        read by "delta" (None is fine otherwise)."""
        if self.cfg.output == "delta":
            if obs is None:
                raise ValueError("reward_model.output 'delta' needs the observation before the decision too")
            p0, p1 = self.score(obs), self.score(next_obs)
        else:
            p0, p1 = None, self.score(next_obs)
        return REWARD_OUTPUTS[self.cfg.output](p0, p1, self.cfg.threshold)

    def annotate(self, traj: TensorDictBase) -> TensorDictBase:
        """Trajectories [B, T] -> the same TensorDict with ("next", rm_reward) (B, T, 1), ("next", env_reward)
        = the simulator's reward, and ("next", reward) replaced by mix_rewards (unchanged for mode "env")."""
        nxt = traj.get(keys.NEXT)
        env_reward = nxt.get(keys.ENV_REWARD) if keys.ENV_REWARD in nxt.keys() else nxt.get(keys.REWARD)  # idempotent
        rm = self.rm_reward(traj, _next_obs(traj)).reshape(env_reward.shape)  # (B, T, 1)
        nxt.set(keys.RM_REWARD, rm)
        nxt.set(keys.ENV_REWARD, env_reward)
        nxt.set(keys.REWARD, mix_rewards(env_reward, rm, self.cfg).to(env_reward.dtype))
        traj.set(keys.NEXT, nxt)
        return traj



class RewardWorker:
    """The scorer as its own Ray actor group (a plain class: WorkerGroup(RewardWorker, n, init_args=(dir,))).
    Rollouts go out one shard per worker (``call_each("annotate", ...)``) and come back annotated."""

    def __init__(self, model_dir: str, cfg: dict | RewardModelConfig | None = None, threads: int = 1):
        torch.set_num_threads(max(1, int(threads)))  # Ray pins OMP_NUM_THREADS=1: choose deliberately
        self.cfg = cfg if cfg is None or isinstance(cfg, RewardModelConfig) else RewardModelConfig.model_validate(cfg)
        self.scorer = RewardScorer(model_dir, cfg=self.cfg)
        self.model_dir = str(model_dir)

    def reload(self, model_dir: str) -> str:
        """Swap in a retrained reward model (e.g. after an RM update stage)."""
        self.scorer, self.model_dir = RewardScorer(model_dir, cfg=self.cfg), str(model_dir)
        return self.model_dir

    def score(self, obs: TensorDictBase) -> torch.Tensor:
        return self.scorer.score(obs)

    def annotate(self, traj: TensorDictBase) -> TensorDictBase:
        return self.scorer.annotate(traj)
