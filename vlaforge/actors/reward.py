"""Reward model inference for RL: a ``RewardScorer`` used by the RL driver (or inside rollout actors), the
same scorer as a Ray actor group (``RewardWorker``), the shaping term, and the metrics that make reward
hacking visible.

The reward of a decision obs s -> chunk (k env steps) -> next obs s' (RewardModelConfig, "the RL reward"):

    base   = env reward            (mode env)  | RM term (mode rm) | (1 - w) env + w RM term (mode mix)
    RM term = p(success | s')      (output level) | 1[p(success | s') >= threshold] (output binary)
    reward = base + shaping * (gamma^k Phi(s') - Phi(s)),   Phi = p(success | .), Phi(s') = 0 after termination

On a whole trajectory [B, T] (with ("next", image)): ``traj = scorer.annotate(traj, gamma)`` adds ("next",
rm_level) = p(success | s'), ("next", rm_shaping), ("next", rm_reward) = what the RM adds to the reward,
("next", env_reward) = the simulator's reward, and sets ("next", reward). The driver logs
``reward_metrics(level, success, rm_reward)`` every iteration: the RM's LEVEL next to the level success flag.
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

# cfg.output: (p(success | next obs), threshold) -> the RM term of a decision (B,)
REWARD_OUTPUTS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "level": lambda p1, thr: p1,
    "binary": lambda p1, thr: (p1 >= thr).float(),
}
# cfg.mode: (env reward, RM term, mix weight) -> the base reward the RL objective sees
REWARD_MIXERS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "env": lambda env, rm, w: env,
    "rm": lambda env, rm, w: rm,
    "mix": lambda env, rm, w: (1.0 - w) * env + w * rm,
}


def mix_rewards(env_reward: torch.Tensor, rm_reward: torch.Tensor, cfg: RewardModelConfig) -> torch.Tensor:
    """Base reward of cfg.mode from equally shaped env reward and RM term (e.g. (B, 1) or (B, T, 1))."""
    if env_reward.shape != rm_reward.shape:
        raise ValueError(f"mix_rewards: env reward {tuple(env_reward.shape)} and RM reward {tuple(rm_reward.shape)} differ")
    return REWARD_MIXERS[cfg.mode](env_reward.float(), rm_reward.float(), cfg.mix_weight)


def shaping_terms(phi: torch.Tensor, phi_next: torch.Tensor, exec_steps: torch.Tensor, terminated: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """Potential-based shaping per decision (Ng et al. 1999, semi-MDP form): gamma^k Phi(s') - Phi(s).

    phi, phi_next float (...), exec_steps k int (...), terminated bool (...) -> float (...). After a
    termination Phi(s') = 0 (the MDP ended: no future to discount into); after a truncation Phi(s') is kept,
    as the critic bootstraps there. Over an episode the discounted sum sum_t gamma^(k_0+..+k_{t-1}) F_t
    telescopes to gamma^T Phi(s_T) - Phi(s_0), T = its env steps (tests/actors/test_reward.py)."""
    if not (phi.shape == phi_next.shape == exec_steps.shape == terminated.shape):
        raise ValueError(f"shaping_terms: phi {tuple(phi.shape)}, phi_next {tuple(phi_next.shape)}, exec_steps "
                         f"{tuple(exec_steps.shape)} and terminated {tuple(terminated.shape)} must have one shape")
    discount = torch.pow(torch.tensor(float(gamma), dtype=torch.float32), exec_steps.float())
    return discount * phi_next.float() * (~terminated.bool()).float() - phi.float()


def reward_metrics(level: torch.Tensor, true_success: torch.Tensor, rm_reward: torch.Tensor | None = None,
                   prefix: str = "reward/") -> dict[str, float]:
    """The RM's LEVEL p(success | s') next to the simulator's level success flag of the same decision (same
    shape, e.g. (B, T, 1)): rm_level_mean, true_success (rate), rm_success_corr (Pearson of level vs flag; NaN
    if either is constant), rm_auroc (per decision: how well the level ranks success decisions above the
    others; NaN without both kinds), rm_pos_level / rm_neg_level (mean level on success / other decisions), and
    with ``rm_reward`` (what the RM added to the reward) its mean rm_mean. A falling rm_auroc / correlation
    with rising RM reward is reward hacking; a perfect RM scores corr 1 and AUROC 1 here (a delta would not)."""
    lv, ok = level.detach().float().flatten(), true_success.detach().flatten().bool()
    if lv.numel() != ok.numel() or lv.numel() == 0:
        raise ValueError(f"reward_metrics: {lv.numel()} RM levels vs {ok.numel()} success flags (need equal, > 0)")
    nan = float("nan")
    out = {f"{prefix}rm_level_mean": float(lv.mean()), f"{prefix}true_success": float(ok.float().mean()),
           f"{prefix}rm_success_corr": pearson(lv, ok.float()), f"{prefix}rm_auroc": auroc(lv, ok),
           f"{prefix}rm_pos_level": float(lv[ok].mean()) if ok.any() else nan,
           f"{prefix}rm_neg_level": float(lv[~ok].mean()) if (~ok).any() else nan}
    if rm_reward is not None:
        out[f"{prefix}rm_mean"] = float(rm_reward.detach().float().mean())
    return out


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
    ``cfg``: the recipe's reward_model block (mode / output / threshold / shaping); default: the model's own."""

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

    def annotate(self, traj: TensorDictBase, gamma: float = 1.0) -> TensorDictBase:
        """Trajectories [B, T] -> the same TensorDict with, under "next" (each (B, T, 1)): rm_level = p(success |
        s'), rm_shaping = gamma^k Phi(s') - Phi(s) (zeros without cfg.shaping), rm_reward = what the RM adds to the
        reward, env_reward = the simulator's reward, and reward = mix_rewards(env, RM term) + shaping * rm_shaping.
        ``gamma``: the RL objective's discount per env step. Idempotent (mixes from the kept env reward)."""
        nxt = traj.get(keys.NEXT)
        env_reward = nxt.get(keys.ENV_REWARD) if keys.ENV_REWARD in nxt.keys() else nxt.get(keys.REWARD)
        shape = env_reward.shape  # (B, T, 1)
        level = self.score(_next_obs(traj)).reshape(shape)  # p(success | s'), (B, T, 1)
        term = REWARD_OUTPUTS[self.cfg.output](level, self.cfg.threshold)
        base = mix_rewards(env_reward, term, self.cfg)
        shaping = torch.zeros_like(level)
        if self.cfg.shaping > 0:
            if keys.EXEC_STEPS not in traj.keys() or keys.TERMINATED not in nxt.keys():
                raise KeyError(f"reward_model.shaping needs {keys.EXEC_STEPS!r} and ('next', {keys.TERMINATED!r}) in "
                               "the trajectory (the rollout actor records both)")
            phi = self.score(traj).reshape(shape)  # Phi(s) of the decision's own observation
            shaping = shaping_terms(phi, level, traj.get(keys.EXEC_STEPS).reshape(shape),
                                    nxt.get(keys.TERMINATED).reshape(shape), gamma)
        rm_part = mix_rewards(torch.zeros_like(term), term, self.cfg) + self.cfg.shaping * shaping  # base with env = 0
        nxt.set(keys.RM_LEVEL, level)
        nxt.set(keys.RM_SHAPING, shaping)
        nxt.set(keys.RM_REWARD, rm_part)
        nxt.set(keys.ENV_REWARD, env_reward)
        nxt.set(keys.REWARD, (base + self.cfg.shaping * shaping).to(env_reward.dtype))
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

    def annotate(self, traj: TensorDictBase, gamma: float = 1.0) -> TensorDictBase:
        return self.scorer.annotate(traj, gamma)
