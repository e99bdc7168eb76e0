"""Advantages and returns at the DECISION level: one time step = one action chunk that covered k env steps.

Batches are ``[B, T]`` (rows = simulators, time second) with features last: reward / values / flags are
``(B, T, 1)``. That is the layout TorchRL's functional GAE wants with ``time_dim=-2`` (STACK.md: its
``shifted=True`` path assumes time last-but-feature and silently gives wrong advantages on ``[T, B]``).

Discounting a chunk (the choice, documented). A decision is an SMDP "option" (Sutton, Precup & Singh 1999):
its k executed env steps happen before the next decision, so the next decision's value is discounted by
``gamma ** k`` -- a chunk cut short by an episode end (k < n_action_steps) discounts less, and gamma keeps
its per-env-step meaning whatever the chunk length. The rollout stores the chunk's reward as the plain sum
over its k steps (no intra-chunk discount: for gamma = 0.99 and k <= 8 that shifts a reward by < 7%).
GAE's lambda acts per DECISION: it trades bias for variance over the credit-assignment steps the learner
actually sees.

Episode ends. ``terminated`` (the MDP ended: success with terminate_on_success, failure states) does not
bootstrap; ``truncated`` (time limit) bootstraps from V(terminal observation) -- ``("next", observation)``
holds that terminal observation, so the learner computes those few values itself (``next_state_values``).
Both stop the GAE recursion (the next row entry is a new episode after the auto-reset).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tensordict import TensorDictBase

from vlaforge import keys

Reducer = Callable[[torch.Tensor], torch.Tensor]  # all-reduce SUM over learner ranks; identity in one process
ValueFn = Callable[[TensorDictBase], torch.Tensor]  # raw observation TensorDict [N] -> value (N, 1)


def identity_reducer(x: torch.Tensor) -> torch.Tensor:
    return x


def _name(key: Any) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)


def _get(td: TensorDictBase, key: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if key not in td.keys(include_nested=True):
        raise KeyError(f"{what}: the rollout batch has no {_name(key)!r}; decision-level batches [B, T] from "
                       "vlaforge/actors/rollout.py carry it (keys in vlaforge/keys.py)")
    x = td.get(key)
    if tuple(x.shape) != shape:
        raise ValueError(f"{what}: {_name(key)} must have shape {shape} ([B, T] batch, time second), got "
                         f"{tuple(x.shape)}; a [T, B] batch must be transposed, a flat [N] batch cannot be used here")
    return x


def batch_dims(td: TensorDictBase, what: str = "advantages") -> tuple[int, int]:
    if td.batch_dims != 2:
        raise ValueError(f"{what}: expected a decision-level batch [B, T], got batch_size {tuple(td.batch_size)}")
    b, t = td.batch_size
    return int(b), int(t)


def step_flags(td: TensorDictBase, what: str = "advantages") -> dict[str, torch.Tensor]:
    """reward float (B, T, 1), done / terminated / truncated bool (B, T, 1), exec_steps int64 (B, T)."""
    b, t = batch_dims(td, what)
    out = {n: _get(td, (keys.NEXT, n), (b, t, 1), what).bool() for n in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)}
    out[keys.REWARD] = _get(td, (keys.NEXT, keys.REWARD), (b, t, 1), what).float()
    steps = _get(td, keys.EXEC_STEPS, (b, t), what)
    if bool((steps < 1).any()):
        raise ValueError(f"{what}: {keys.EXEC_STEPS} must be >= 1 (env steps a decision covered), "
                         f"got min {int(steps.min())}")
    out[keys.EXEC_STEPS] = steps
    return out


def decision_discount(exec_steps: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma ** k per decision: int (B, T) -> float (B, T, 1)."""
    return torch.pow(torch.tensor(float(gamma), dtype=torch.float32), exec_steps.float()).unsqueeze(-1)


def bootstrap_mask(td: TensorDictBase) -> torch.Tensor:
    """bool (B, T): decisions whose next value must be computed from ``("next", observation)``:
    truncated-but-not-terminated ones, and the last decision of each row when its episode goes on.
    Everywhere else the next value is the row's next VALUE (or irrelevant: termination)."""
    f = step_flags(td, "bootstrap_mask")
    terminated, done = f[keys.TERMINATED].squeeze(-1), f[keys.DONE].squeeze(-1)
    mask = f[keys.TRUNCATED].squeeze(-1) & ~terminated
    mask[:, -1] |= ~done[:, -1]
    return mask


def next_state_values(td: TensorDictBase, value_fn: ValueFn | None) -> torch.Tensor:
    """float (B, T, 1): V(s_{t+1}) per decision; 0 after termination. ``("next", VALUE)`` in the batch is
    used as is; otherwise V(s_{t+1}) = VALUE[:, t + 1] inside an episode and ``value_fn`` on the terminal /
    last observations (``bootstrap_mask``) -- only those few forward passes."""
    b, t = batch_dims(td, "next_state_values")
    f = step_flags(td, "next_state_values")
    if (keys.NEXT, keys.VALUE) in td.keys(include_nested=True):
        nv = _get(td, (keys.NEXT, keys.VALUE), (b, t, 1), "next_state_values").float().clone()
    else:
        value = _get(td, keys.VALUE, (b, t, 1), "next_state_values").float()
        nv = torch.zeros_like(value)
        nv[:, :-1] = value[:, 1:]  # inside an episode; a done entry is overwritten or zeroed below
        mask = bootstrap_mask(td)
        if bool(mask.any()):
            if value_fn is None:
                raise ValueError("next_state_values: the batch needs bootstrap values (truncated episodes or rows that "
                                 "go on past T) but no value_fn was given and it has no ('next', state_value)")
            nxt = td.get(keys.NEXT)[mask].select(keys.OBS)  # [N] terminal / last observations
            v = value_fn(nxt).float().reshape(-1, 1)  # (N, 1)
            if v.shape[0] != int(mask.sum()):
                raise ValueError(f"value_fn returned {tuple(v.shape)} for {int(mask.sum())} observations, expected (N, 1)")
            nv[mask] = v.to(nv.device)
        # Done but not bootstrapped (terminated): the next row entry is another episode's start.
        nv[(f[keys.DONE] & ~mask.unsqueeze(-1))] = 0.0
    return nv.masked_fill(f[keys.TERMINATED], 0.0)


def gae(td: TensorDictBase, gamma: float, lmbda: float, value_fn: ValueFn | None = None) -> TensorDictBase:
    """Sets ADVANTAGE and VALUE_TARGET (B, T, 1) (and ``("next", VALUE)``) on the [B, T] batch; returns it.

    delta_t = r_t + gamma**k_t * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma**k_t * lambda * (1 - done_t) * A_{t+1}
    TorchRL's functional GAE takes the per-decision discount as a (B, T, 1) tensor elementwise.
    """
    from torchrl.objectives.value.functional import generalized_advantage_estimate  # import torchrl: ~1.8 s, lazily

    b, t = batch_dims(td, "gae")
    f = step_flags(td, "gae")
    value = _get(td, keys.VALUE, (b, t, 1), "gae").float()
    next_value = next_state_values(td, value_fn)
    discount = decision_discount(f[keys.EXEC_STEPS], gamma).to(value.device)  # (B, T, 1)
    adv, target = generalized_advantage_estimate(
        discount, float(lmbda), value, next_value, f[keys.REWARD], f[keys.DONE], f[keys.TERMINATED], time_dim=-2
    )
    td.set((keys.NEXT, keys.VALUE), next_value)
    td.set(keys.ADVANTAGE, adv)
    td.set(keys.VALUE_TARGET, target)
    return td


def discounted_returns(reward: torch.Tensor, done: torch.Tensor, exec_steps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go within the batch, no bootstrap: G_t = r_t + gamma**k_t * (1 - done_t) * G_{t+1}, G_T = 0.
    reward float (B, T, 1), done bool (B, T, 1), exec_steps int (B, T) -> (B, T, 1)."""
    if reward.ndim != 3 or done.shape != reward.shape or tuple(exec_steps.shape) != tuple(reward.shape[:2]):
        raise ValueError(f"discounted_returns: reward / done must be (B, T, 1) and exec_steps (B, T); got "
                         f"{tuple(reward.shape)}, {tuple(done.shape)}, {tuple(exec_steps.shape)}")
    carry = decision_discount(exec_steps, gamma).to(reward.device) * (~done.bool()).float()  # (B, T, 1)
    out = torch.zeros_like(reward, dtype=torch.float32)
    g = torch.zeros_like(out[:, 0])
    for i in reversed(range(reward.shape[1])):
        g = reward[:, i].float() + carry[:, i] * g
        out[:, i] = g
    return out


def first_episode_mask(done: torch.Tensor) -> torch.Tensor:
    """bool (B, T): decisions up to and including each row's first done (the decisions after it belong to
    the next, auto-reset episode). done: bool (B, T, 1) or (B, T)."""
    d = done.reshape(done.shape[0], done.shape[1]).long()
    return (d.cumsum(1) - d) == 0


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor,
                    reduce: Reducer = identity_reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std of x over mask, summed over ranks with ``reduce`` (same result on every rank)."""
    m = mask.reshape(x.shape).to(torch.float64)
    xs = x.to(torch.float64)
    s = reduce(torch.stack([m.sum(), (xs * m).sum(), (xs * xs * m).sum()]))
    n = s[0].clamp_min(1.0)
    mean = s[1] / n
    var = (s[2] / n - mean * mean).clamp_min(0.0)
    return mean.to(x.dtype), var.sqrt().to(x.dtype)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, reduce: Reducer = identity_reducer,
                         eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / (std + eps) over the valid entries of the WHOLE batch (all ranks); invalid entries -> 0."""
    mean, std = masked_mean_std(adv, mask, reduce)
    return ((adv - mean) / (std + eps)) * mask.reshape(adv.shape).to(adv.dtype)


class RunningReturnStd:
    """Reward scaling by a running std of discounted returns (as gym's NormalizeReward, Engstrom et al. 2020).

    Each update folds the batch's reward-to-go values (``discounted_returns``, all ranks) into running
    moments (Chan et al. parallel merge); rewards are then divided by sqrt(var + eps). Only a scale, never a
    shift: subtracting a mean would reward or punish episode length (termination changes the sum)."""

    def __init__(self, eps: float = 1e-8):
        self.count, self.mean, self.var, self.eps = 0.0, 0.0, 1.0, float(eps)

    @property
    def scale(self) -> float:
        return 1.0 / float((self.var + self.eps) ** 0.5) if self.count > 0 else 1.0

    def update(self, returns: torch.Tensor, mask: torch.Tensor | None = None, reduce: Reducer = identity_reducer) -> None:
        mask = torch.ones_like(returns, dtype=torch.bool) if mask is None else mask
        mean, std = masked_mean_std(returns, mask, reduce)
        n = float(reduce(mask.to(torch.float64).sum()))
        if n <= 0:
            return
        b_mean, b_var = float(mean), float(std) ** 2
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.var = float(state["count"]), float(state["mean"]), float(state["var"])


MAX_GROUPS = 256  # task indices per batch (the all-reduced moment table is (MAX_GROUPS, 3) float64: tiny)


def _group_ids(group: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    g = group.reshape(like.shape[:2]).long() if like.ndim >= 2 else group.reshape(-1).long()
    if bool((g < 0).any()) or bool((g >= MAX_GROUPS).any()):
        raise ValueError(f"group (task) indices must be in [0, {MAX_GROUPS}), got [{int(g.min())}, {int(g.max())}]")
    return g


def group_moments(x: torch.Tensor, group: torch.Tensor, reduce: Reducer = identity_reducer) -> torch.Tensor:
    """(MAX_GROUPS, 3) float64 [count, sum, sum of squares] of x per group over all ranks. x: (B, T[, 1]) or (N[, 1]);
    group: int (B, T) or (N,), e.g. observation/task_index."""
    g = _group_ids(group, x).reshape(-1)
    xs = x.reshape(g.shape[0], -1)[:, 0].to(torch.float64)
    table = torch.zeros(MAX_GROUPS, 3, dtype=torch.float64)
    table.index_add_(0, g, torch.stack([torch.ones_like(xs), xs, xs * xs], dim=-1))
    return reduce(table)


def moments_mean_std(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MAX_GROUPS, 3) moments -> per-group mean, population std (MAX_GROUPS,) float64 (0, 0 for empty groups)."""
    n = table[:, 0].clamp_min(1.0)
    mean = table[:, 1] / n
    return mean, (table[:, 2] / n - mean * mean).clamp_min(0.0).sqrt()


def normalize_by_group(x: torch.Tensor, group: torch.Tensor, reduce: Reducer = identity_reducer,
                       eps: float = 1e-8) -> torch.Tensor:
    """(x - mean_g) / (std_g + eps) with the statistics of x's own group g over all ranks (per-task advantage
    normalisation: a task at 100% success, whose advantages are small noise, is not rescaled by another's spread)."""
    mean, std = moments_mean_std(group_moments(x, group, reduce))
    g = _group_ids(group, x)
    shape = g.shape + (1,) * (x.ndim - g.ndim)
    return ((x.double() - mean[g].reshape(shape)) / (std[g].reshape(shape) + eps)).to(x.dtype)


class GroupRunningStats:
    """Running mean / variance per group (task) of value targets: the critic's target normalisation.

    Each update merges the batch's per-group moments (all ranks) into the running ones (Chan et al. parallel
    merge). ``normalize`` / ``denormalize`` map values of group g to (v - mu_g) / sigma_g and back; a group never
    seen has mu 0, sigma 1."""

    def __init__(self, eps: float = 1e-4):
        self.count = torch.zeros(MAX_GROUPS, dtype=torch.float64)
        self.mean = torch.zeros(MAX_GROUPS, dtype=torch.float64)
        self.var = torch.ones(MAX_GROUPS, dtype=torch.float64)
        self.eps = float(eps)

    def update(self, x: torch.Tensor, group: torch.Tensor, reduce: Reducer = identity_reducer) -> None:
        table = group_moments(x, group, reduce)
        n = table[:, 0]
        b_mean, b_std = moments_mean_std(table)
        total = self.count + n
        seen = n > 0
        delta = b_mean - self.mean
        safe = total.clamp_min(1.0)
        m2 = self.var * self.count + b_std**2 * n + delta * delta * self.count * n / safe
        self.mean = torch.where(seen, self.mean + delta * n / safe, self.mean)
        self.var = torch.where(seen, m2 / safe, self.var)
        self.count = total

    def _ms(self, group: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = _group_ids(group, like)
        shape = g.shape + (1,) * (like.ndim - g.ndim)
        std = (self.var + self.eps).sqrt()
        return self.mean[g].reshape(shape).to(like.dtype), std[g].reshape(shape).to(like.dtype)

    def normalize(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        mean, std = self._ms(group, x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        mean, std = self._ms(group, x)
        return x * std + mean

    def state_dict(self) -> dict[str, list[float]]:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "var": self.var.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        for k in ("count", "mean", "var"):
            setattr(self, k, torch.tensor(state[k], dtype=torch.float64))
