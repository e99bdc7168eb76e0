"""GRPO / RLOO: critic-free RL with group-relative advantages (Shao et al. 2024; Ahmadian et al. 2024).

The rollout batch [B, T] holds G rollouts per initial state: rows with the same ``GROUP_ID`` started from
the same initial state (same task, same reset seed) at t = 0. Each row's trajectory is its FIRST episode
(the decisions up to and including its first done; later decisions belong to the auto-reset next episode
and are masked out). A row whose episode did not end within T counts as it stands (not a success unless it
already succeeded: with a terminate-on-success env a success always ends the episode).

    score R_b    "success": 1 if the first episode succeeded (SimpleVLA-RL's outcome reward), else 0
                 "return":  its discounted return (gamma per env step, gamma ** k per chunk)
    grpo         A_b = (R_b - mean_g) / (std_g + eps)
    rloo         A_b = R_b - mean of the OTHER members of the group  (= G / (G - 1) * (R_b - mean_g))
    A_{b,t} = A_b for every decision t of the trajectory; the loss is the clipped chunk ratio of
    vlaforge/learners/ppo.py without a critic, averaged over all decisions of all kept trajectories.

Dynamic sampling (SimpleVLA-RL, after DAPO): a group whose scores are all equal (all succeeded or all
failed) has zero advantages everywhere -- it only dilutes the average; it is dropped. What is left is split
over the learner ranks by decisions (not rows), so every rank gets a balanced share.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners import advantages as adv
from vlaforge.learners.config import GRPOConfig, TrainConfig
from vlaforge.learners.ppo import SAMPLE_KEYS, ChunkClipLoss, RLContext, shard_rows
from vlaforge.learners.registry import register_objective


def trajectory_scores(batch: TensorDictBase, score: str, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> score float (B,), valid bool (B, T) (each row's first episode), success bool (B,)."""
    b, t = adv.batch_dims(batch, "grpo")
    f = adv.step_flags(batch, "grpo")
    valid = adv.first_episode_mask(f[keys.DONE])  # (B, T)
    success = (adv._get(batch, (keys.NEXT, keys.SUCCESS), (b, t, 1), "grpo").bool().squeeze(-1) & valid).any(1)
    if score not in SCORES:
        raise ValueError(f"grpo.score must be one of {sorted(SCORES)}, got {score!r}")
    return SCORES[score](f, success, gamma), valid, success


SCORES: dict[str, Callable[[dict[str, torch.Tensor], torch.Tensor, float], torch.Tensor]] = {
    "success": lambda f, success, gamma: success.float(),
    # discounted_returns stops at the first done, so G_0 is exactly the first episode's return.
    "return": lambda f, success, gamma: adv.discounted_returns(
        f[keys.REWARD], f[keys.DONE], f[keys.EXEC_STEPS], gamma)[:, 0, 0],
}


def group_index(group_id: torch.Tensor, batch: int, min_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """group_id int (B,) or (B, T) -> (inverse index (B,) into 0..G-1, group sizes (G,))."""
    gid = group_id[:, 0] if group_id.ndim == 2 else group_id
    if gid.ndim != 1 or gid.shape[0] != batch or gid.is_floating_point():
        raise ValueError(f"{keys.GROUP_ID} must be an integer (B, T) (or (B,)) tensor with B={batch}, got "
                         f"{group_id.dtype} {tuple(group_id.shape)}: the rollout gives rows started from the same "
                         "initial state the same id")
    _, inv = torch.unique(gid, return_inverse=True)
    sizes = torch.bincount(inv)
    if bool((sizes < min_size).any()):
        small = int((sizes < min_size).sum())
        raise ValueError(f"{small} group(s) have fewer than grpo.min_group_size={min_size} rollouts (sizes "
                         f"{sizes.tolist()}): a group-relative baseline needs G >= 2 rollouts per initial state")
    return inv, sizes


def _group_sum(x: torch.Tensor, inv: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, x)


def _grpo(scores: torch.Tensor, inv: torch.Tensor, sizes: torch.Tensor, eps: float) -> torch.Tensor:
    n = sizes.to(scores.dtype)
    mean = _group_sum(scores, inv, len(sizes)) / n  # (G,)
    std = (_group_sum((scores - mean[inv]).pow(2), inv, len(sizes)) / n).sqrt()  # population std, (G,)
    return (scores - mean[inv]) / (std[inv] + eps)


def _rloo(scores: torch.Tensor, inv: torch.Tensor, sizes: torch.Tensor, eps: float) -> torch.Tensor:
    total = _group_sum(scores, inv, len(sizes))[inv]
    others = (total - scores) / (sizes[inv].to(scores.dtype) - 1.0)  # mean of the other G - 1 rollouts
    return scores - others


BASELINES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "grpo": _grpo,
    "rloo": _rloo,
}


def group_advantages(scores: torch.Tensor, group_id: torch.Tensor, baseline: str = "grpo", eps: float = 1e-6,
                     min_size: int = 2) -> torch.Tensor:
    """float (B,) trajectory advantages; they sum to zero within every group."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown group baseline {baseline!r}; choose one of {sorted(BASELINES)}")
    inv, sizes = group_index(group_id, scores.shape[0], min_size)
    return BASELINES[baseline](scores.double(), inv, sizes, eps).float()


def uniform_groups(scores: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """bool (B,): the row's group has all-equal scores (all succeeded / all failed)."""
    inv, sizes = group_index(group_id, scores.shape[0], min_size=1)
    g = len(sizes)
    hi = torch.full((g,), -torch.inf, dtype=torch.float64).scatter_reduce(0, inv, scores.double(), "amax")
    lo = torch.full((g,), torch.inf, dtype=torch.float64).scatter_reduce(0, inv, scores.double(), "amin")
    return ((hi - lo) <= 1e-12)[inv]


class GRPOObjective(ChunkClipLoss):
    uses_critic = False

    def __init__(self, policy: nn.Module, cfg: GRPOConfig, baseline: str):
        super().__init__(policy, cfg)
        if baseline not in BASELINES:
            raise ValueError(f"unknown group baseline {baseline!r}; choose one of {sorted(BASELINES)}")
        self.baseline = baseline

    def set_update(self, update: int) -> None:  # no critic, no warm-up
        pass

    def prepare(self, batch: TensorDictBase, ctx: RLContext) -> tuple[TensorDictBase, dict[str, float]]:
        """Full batch [B, T] (identical on every rank; advantages are computed on all of it, so every rank
        agrees) -> this rank's decisions [N_r] with ADVANTAGE (N_r, 1)."""
        cfg: GRPOConfig = self.cfg
        b, t = adv.batch_dims(batch, self.baseline)
        if keys.GROUP_ID not in batch.keys():
            raise KeyError(f"{self.baseline}: the batch has no {keys.GROUP_ID!r}: sample G rollouts per initial state "
                           "and give rows of the same initial state the same id (int64 (B, T), constant along T)")
        gid = batch.get(keys.GROUP_ID)
        scores, valid, success = trajectory_scores(batch, cfg.score, cfg.gamma)
        row_adv = group_advantages(scores, gid, self.baseline, cfg.std_eps, cfg.min_group_size)  # (B,)
        uniform = uniform_groups(scores, gid)
        keep = ~uniform if cfg.dynamic_sampling else torch.ones(b, dtype=torch.bool)
        inv, sizes = group_index(gid, b, cfg.min_group_size)
        kept_groups = int(torch.unique(inv[keep]).numel())
        valid = valid & keep[:, None]  # (B, T)

        idx = valid.reshape(-1).nonzero().flatten()  # (N,) decisions of kept first episodes, row-major
        n = int(idx.numel())
        if n < ctx.world_size:  # too few (e.g. every group uniform): every rank gets none, the learner skips
            mine = TensorDict({keys.ADVANTAGE: torch.zeros(0, 1)}, batch_size=[0])
        else:
            samples = batch.select(*(k for k in SAMPLE_KEYS if k != keys.ADVANTAGE), strict=False).clone(recurse=False)
            samples.set(keys.ADVANTAGE, row_adv[:, None, None].expand(b, t, 1).clone())
            mine = samples.reshape(-1)[idx[shard_rows(n, ctx.rank, ctx.world_size, self.baseline)]]
        metrics = {
            "groups": float(len(sizes)),
            "groups_kept": float(kept_groups),
            "groups_uniform_frac": float(uniform_groups_frac(uniform, inv, len(sizes))),
            "score_mean": float(scores.mean()),
            "success_rate": float(success.float().mean()),
            "episode_end_frac": float(adv.step_flags(batch)[keys.DONE].any(1).float().mean()),  # ended within T
            "decisions": float(n),
        }
        return mine, metrics

    def state_dict_rl(self) -> dict:
        return {}

    def load_state_dict_rl(self, state: dict) -> None:
        pass


def uniform_groups_frac(uniform: torch.Tensor, inv: torch.Tensor, g: int) -> float:
    per_group = torch.zeros(g, dtype=torch.bool).index_fill_(0, inv[uniform], True) if bool(uniform.any()) \
        else torch.zeros(g, dtype=torch.bool)
    return float(per_group.float().mean())


@register_objective("grpo")
def make_grpo(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return GRPOObjective(policy, train.grpo, "grpo")


@register_objective("rloo")
def make_rloo(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return GRPOObjective(policy, train.grpo, "rloo")


for _f in (make_grpo, make_rloo):  # read by RLLearnerActor.setup_rl: RL objective, no value head needed
    _f.rl, _f.uses_critic = True, False  # type: ignore[attr-defined]
