"""PPO on action chunks: TensorDict in (flat samples [N] + model output), TensorDict of losses out.

    ratio       = exp(log pi(chunk | s) - log pi_old(chunk | s))   log-probs over the EXECUTED positions
                  (ratio: mean -> exp(that log-ratio / its number of per-dimension terms))
    loss_objective = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A))
    loss_critic    = value_coef * 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2))
                     (V, R in per-task std units with value_norm; no clip with value_clip None)
    loss_entropy   = -entropy_coef * mean(H[pi(. | s)] over the executed positions)
    loss_kl        = kl_coef * mean(KL(pi || pi_ref))   (analytic Gaussian KL, or k3 at the sampled chunk)

The chunk is ONE action of a decision-level MDP (vlaforge/learners/advantages.py): its log-prob is whatever
the policy's action head defines (vlaforge/policies/heads/): the gaussian head sums the log-densities of the
positions that actually ran (``ACTION_PAD`` False), the token head sums token log-probs, the diffusion and
flow heads sum the Gaussian steps of the stored denoising chain (``HEAD_EXTRAS``). The loss only calls
``policy.log_prob(td, chunk, pad, extras)`` / ``policy.entropy(...)`` -- exactly what the rollout actor
stored, so ratio == 1 when the weights did not move -- and holds no head-specific code.

Why not TorchRL's ``ClipPPOLoss`` (it fits one Gaussian action per step): (1) it builds the distribution
from a ProbabilisticTensorDictModule and has no notion of a per-sample mask over the chunk positions --
positions past an episode end or beyond n_action_steps never ran and must not count; (2) it calls the actor
and the critic as two modules, i.e. two forward passes of our shared VLA backbone per minibatch, where one
forward gives both; (3) its KL terms are to the old policy, not to a frozen reference (BC) policy. The maths
and the output names (``loss_objective``, ``loss_critic``, ``loss_entropy``, ``clip_fraction``,
``approx_kl``, ``explained_variance``) follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners import advantages as adv
from vlaforge.learners.config import ClipObjectiveConfig, PPOConfig, TrainConfig
from vlaforge.learners.registry import register_objective

_MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: keeps ratios finite (a chunk log-prob sums K x A dims)
_MAX_K3 = 10.0  # per-sample bound of the k3 KL estimate (verl's low_var_kl clamps at 10 as well)


@dataclass
class RLContext:
    """What an objective's ``prepare`` may use beyond the batch: ranks, the all-reduce, the value net."""

    rank: int = 0
    world_size: int = 1
    reduce: adv.Reducer = adv.identity_reducer  # all-reduce SUM over learner ranks
    value_fn: adv.ValueFn | None = None  # raw observations [N] -> V (N, 1) with the current weights
    update: int = 0  # index of the update about to run (critic warm-up)
    extra: dict[str, Any] = field(default_factory=dict)


def _need(td: TensorDictBase, key: Any, shape: tuple[int, ...] | None, hint: str) -> torch.Tensor:
    if key not in td.keys(include_nested=True):
        raise KeyError(f"chunk PPO loss: missing {adv._name(key)!r} ({hint})")
    x = td.get(key)
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"chunk PPO loss: {adv._name(key)} must be {shape}, got {tuple(x.shape)} ({hint})")
    return x


REF_PREFIX = "ref_"  # the reference's outputs needed by an analytic KL sit under ref_<key> (REF_ACTION_MEAN, ...)


def kl_mode(policy: nn.Module, estimator: str) -> str:
    """Resolve kl_estimator "auto" for this policy's head; "analytic" on a head without one is an error."""
    analytic = bool(getattr(policy.head, "has_analytic_kl", False))
    if estimator == "auto":
        return "analytic" if analytic else "k3"
    if estimator == "analytic" and not analytic:
        raise ValueError(f"train.ppo/grpo.kl_estimator 'analytic' needs a head with a closed-form KL (gaussian); "
                         f"policy.head.type {policy.cfg.head.type!r} has none: use kl_estimator k3 (or auto)")
    return estimator


class ChunkClipLoss(nn.Module):
    """The clipped-ratio loss over chunks; with ``value_coef`` > 0 also the critic (PPO), else critic-free
    (GRPO / RLOO). Holds the policy only to call its distribution helpers (not a submodule: no parameters)."""

    uses_critic = False

    def __init__(self, policy: nn.Module, cfg: ClipObjectiveConfig, value_coef: float = 0.0,
                 value_clip: float | None = None):
        super().__init__()
        object.__setattr__(self, "_policy", policy)
        self.cfg = cfg
        self.eps_low, self.eps_high = cfg.clip_epsilon, cfg.clip_epsilon_high or cfg.clip_epsilon
        self.value_coef, self.value_clip = float(value_coef), value_clip
        self.policy_enabled = True  # False during critic warm-up: policy terms are reported but detached

    @property
    def policy(self) -> nn.Module:
        return self._policy

    @property
    def kl_mode(self) -> str:
        return kl_mode(self.policy, self.cfg.kl_estimator)

    def forward(self, td: TensorDictBase) -> TensorDict:
        chunk = _need(td, keys.ACTION_CHUNK, None, "the normalised chunk as sampled")
        if chunk.ndim != 3:
            raise ValueError(f"chunk PPO loss: {keys.ACTION_CHUNK} must be (B, K, A), got {tuple(chunk.shape)}")
        b, k, a = chunk.shape
        pad = _need(td, keys.ACTION_PAD, (b, k), "True = position not executed, as stored by the rollout actor").bool()
        old_lp = _need(td, keys.LOG_PROB, (b,), "old log-prob of the chunk as stored by the rollout (B,)").float()
        advantage = _need(td, keys.ADVANTAGE, None, "run the objective's prepare() (GAE / group advantages)")
        if advantage.numel() != b:
            raise ValueError(f"chunk PPO loss: {keys.ADVANTAGE} must be (B,) or (B, 1) with B={b}, "
                             f"got {tuple(advantage.shape)}")
        advantage = advantage.reshape(b).float()
        extras = td.get(keys.HEAD_EXTRAS) if keys.HEAD_EXTRAS in td.keys() else None  # e.g. the denoising chain

        new_lp = self.policy.log_prob(td, chunk, pad, extras).float()  # (B,)
        chunk_log_ratio = (new_lp - old_lp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # (B,)
        terms = self.policy.log_prob_terms(chunk, pad).float().clamp_min(1.0)  # (B,) per-dim terms summed
        mean_log_ratio = (new_lp - old_lp) / terms  # (B,) log of the geometric-mean per-dimension ratio
        log_ratio = mean_log_ratio if self.cfg.ratio == "mean" else chunk_log_ratio
        ratio = torch.exp(log_ratio)  # (B,)
        clipped = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        surrogate = torch.minimum(ratio * advantage, clipped * advantage)  # (B,)
        entropy = self.policy.entropy(td, pad, extras).float()  # (B,) nats per chunk (or the head's stand-in)

        out: dict[str, torch.Tensor] = {}
        pol_terms = {"loss_objective": -surrogate.mean(), "loss_entropy": -self.cfg.entropy_coef * entropy.mean()}
        kl = self._kl(td, new_lp, pad) if self.cfg.kl_coef > 0 else None
        pol_terms["loss_kl"] = self.cfg.kl_coef * kl.mean() if kl is not None else torch.zeros((), device=chunk.device)
        for name, term in pol_terms.items():
            out[name] = term if self.policy_enabled else term.detach() * 0.0
        if self.uses_critic:
            out.update(self._critic(td, b))

        with torch.no_grad():  # diagnostics (TorchRL names)
            # Both ratio definitions on the same minibatch, whichever one is trained (train.ppo.ratio), so the
            # effect of the choice is measured, not guessed. approx_kl (what target_kl reads) is the chunk-level
            # k3 estimate of KL(old || new): the policies' real divergence per decision, in either mode.
            for name, lr in (("chunk", chunk_log_ratio.detach()), ("mean", mean_log_ratio.detach())):
                r = torch.exp(lr)
                out[f"clip_fraction_{name}"] = ((r < 1.0 - self.eps_low) | (r > 1.0 + self.eps_high)).float().mean()
                out[f"approx_kl_{name}"] = ((r - 1.0) - lr).mean()
            out["clip_fraction"] = out[f"clip_fraction_{self.cfg.ratio}"]
            out["approx_kl"] = out["approx_kl_chunk"]
            out["entropy"] = entropy.detach().mean()
            out["ratio_mean"], out["ratio_max"] = ratio.detach().mean(), ratio.detach().max()
            if keys.ACTION_LOG_STD in td.keys():
                out["log_std_mean"] = td.get(keys.ACTION_LOG_STD).detach().float().mean()
            if kl is not None:
                out["kl_ref"] = kl.detach().mean()
        return TensorDict(out, batch_size=[])

    def _kl(self, td: TensorDictBase, new_lp: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        hint = "reference policy output: the learner precomputes it when kl_coef > 0"
        b = new_lp.shape[0]
        if self.kl_mode == "analytic":
            head = self.policy.head
            ref = TensorDict({k: _need(td, REF_PREFIX + k, None, hint).float() for k in head.reference_keys()},
                             batch_size=[b])
            return head.analytic_kl(td, ref, pad)
        ref_lp = _need(td, keys.REF_LOG_PROB, (b,), hint).float()
        log_r = (ref_lp - new_lp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # log p_ref / p at the sampled chunk
        k3 = torch.exp(log_r) - 1.0 - log_r  # >= 0, unbiased for KL(pi || ref) under pi's samples
        # Bounded as verl's low_var_kl: a chain log-prob (diffusion / flow: S x K x A Gaussian terms) can move
        # tens of nats in one step, and exp() of that would let one sample's KL term swamp the whole gradient.
        return k3.clamp(max=_MAX_K3)

    def _critic(self, td: TensorDictBase, b: int) -> dict[str, torch.Tensor]:
        hint = "PPO needs the policy built with value_head=True and the objective's prepare() targets"
        value = _need(td, keys.VALUE, (b, 1), hint).float()
        target = _need(td, keys.VALUE_TARGET, (b, 1), hint).float()
        err = (value - target).pow(2)
        if self.value_clip is not None:
            old = _need(td, keys.OLD_VALUE, (b, 1), "value at sampling time (value_clip set)").float()
            v_clip = old + (value - old).clamp(-self.value_clip, self.value_clip)
            err = torch.maximum(err, (v_clip - target).pow(2))
        out = {"loss_critic": self.value_coef * 0.5 * err.mean()}
        with torch.no_grad():
            var_t = target.var(unbiased=False)
            out["explained_variance"] = 1.0 - (target - value).var(unbiased=False) / var_t.clamp_min(1e-8)
            out["value_mean"] = value.mean()
        return out


# -- PPO: GAE on this rank's rows of the rollout batch ------------------------------------------------
SAMPLE_KEYS = (keys.OBS, keys.ACTION_CHUNK, keys.ACTION_PAD, keys.LOG_PROB, keys.ADVANTAGE, keys.HEAD_EXTRAS)


def shard_rows(n: int, rank: int, world_size: int, what: str) -> torch.Tensor:
    """Contiguous, balanced (+-1) slice of range(n) for this rank (int64 indices)."""
    if n < world_size:
        raise ValueError(f"{what}: {n} rows cannot be split over {world_size} learner ranks; sample more "
                         "(rollout.num_actors x envs_per_actor) or use fewer learners")
    return torch.tensor_split(torch.arange(n), world_size)[rank]


class PPOObjective(ChunkClipLoss):
    uses_critic = True

    def __init__(self, policy: nn.Module, cfg: PPOConfig):
        super().__init__(policy, cfg, value_coef=cfg.value_coef, value_clip=cfg.value_clip)
        head = getattr(policy, "value", None)
        if head is None:
            raise ValueError("objective 'ppo' needs a critic: build the policy with policy.value_head = true "
                             "(RLLearnerActor.setup_rl does so when it loads a BC checkpoint)")
        self.reward_norm = adv.RunningReturnStd()
        self.value_stats = adv.GroupRunningStats()  # per task (value_norm)
        self.update, self.warmup_done = 0, cfg.critic_warmup_updates == 0
        self.detach_value_input = not cfg.value_backbone_grad
        # Critic warm-up / value_backbone_grad=False: the value head sees a detached readout, so the value
        # loss moves the value head only, never the shared backbone the actor reads.
        head.register_forward_pre_hook(
            lambda _m, args: tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in args)
            if self.detach_value_input else None)

    def set_update(self, update: int) -> None:
        self.update = int(update)
        if self.update >= self.cfg.critic_warmup_updates:  # the bound; the EV test runs in prepare()
            self.warmup_done = True
        self._set_warm(not self.warmup_done)

    def _set_warm(self, warm: bool) -> None:
        self.policy_enabled = not warm
        self.detach_value_input = warm or not self.cfg.value_backbone_grad

    def _end_warmup(self, ev: float) -> None:
        """Warm-up ends after critic_warmup_updates, or earlier once the rollout explained variance reaches
        critic_warmup_ev (the same number on every rank: it is computed from all-reduced moments)."""
        cfg: PPOConfig = self.cfg
        if self.warmup_done:
            return
        if cfg.critic_warmup_ev is not None and ev >= cfg.critic_warmup_ev:
            self.warmup_done = True
            self._set_warm(False)

    def prepare(self, batch: TensorDictBase, ctx: RLContext) -> tuple[TensorDictBase, dict[str, float]]:
        """Full rollout batch [B, T] (the same on every rank) -> this rank's samples [N] with ADVANTAGE,
        VALUE_TARGET, OLD_VALUE (N, 1). Advantage / reward statistics are global (``ctx.reduce``).
        With value_norm the critic's outputs (VALUE in the batch, ctx.value_fn) are in per-task std units:
        they are de-normalised for GAE, and the targets it regresses are normalised with the updated stats."""
        cfg: PPOConfig = self.cfg
        b, t = adv.batch_dims(batch, "ppo")
        if keys.VALUE not in batch.keys():
            raise KeyError("ppo: the rollout batch has no state_value: the rollout actors must run a policy with a "
                           "value head (export the RL learner's policy after setup_rl and build the pool from it)")
        needs_task = cfg.value_norm or cfg.advantage_groups == "task"
        if needs_task and keys.TASK_INDEX not in batch.keys(include_nested=True):
            raise KeyError(f"ppo: value_norm / advantage_groups 'task' need {adv._name(keys.TASK_INDEX)} in the batch "
                           "(the rollout actors' observations carry it)")
        shard = batch[shard_rows(b, ctx.rank, ctx.world_size, "ppo")]  # [B_r, T] (a copy)
        flags = adv.step_flags(shard, "ppo")
        metrics: dict[str, float] = {}
        if cfg.normalize_reward:
            returns = adv.discounted_returns(flags[keys.REWARD], flags[keys.DONE], flags[keys.EXEC_STEPS], cfg.gamma)
            self.reward_norm.update(returns, reduce=ctx.reduce)
            shard.set((keys.NEXT, keys.REWARD), flags[keys.REWARD] * self.reward_norm.scale)
            metrics["reward_scale"] = self.reward_norm.scale
        metrics["bootstrap_frac"] = float(ctx.reduce(adv.bootstrap_mask(shard).sum().double())) / (b * t)
        raw_value = shard.get(keys.VALUE).float()  # (B_r, T, 1) the critic's output at sampling time
        value_fn = ctx.value_fn
        if cfg.value_norm:
            task = shard.get(keys.TASK_INDEX)  # (B_r, T)
            shard.set(keys.VALUE, self.value_stats.denormalize(raw_value, task))
            if value_fn is not None:
                inner = value_fn

                def value_fn(obs: TensorDictBase) -> torch.Tensor:  # noqa: F811 -- de-normalised bootstrap values
                    return self.value_stats.denormalize(inner(obs).float(), obs.get(keys.TASK_INDEX).reshape(-1))
        adv.gae(shard, cfg.gamma, cfg.gae_lambda, value_fn)
        a, target, old = shard.get(keys.ADVANTAGE), shard.get(keys.VALUE_TARGET), shard.get(keys.VALUE).float()
        ones = torch.ones_like(a, dtype=torch.bool)
        a_mean, a_std = adv.masked_mean_std(a, ones, ctx.reduce)
        t_mean, t_std = adv.masked_mean_std(target, ones, ctx.reduce)
        _, res_std = adv.masked_mean_std(target - old, ones, ctx.reduce)
        ev = float(1.0 - res_std**2 / max(float(t_std) ** 2, 1e-8))
        metrics.update(advantage_mean=float(a_mean), advantage_std=float(a_std), value_target_mean=float(t_mean),
                       explained_variance_rollout=ev)
        self._end_warmup(ev)
        if cfg.value_norm:
            self.value_stats.update(target, task, ctx.reduce)
            shard.set(keys.VALUE_TARGET, self.value_stats.normalize(target, task))
            old = raw_value  # OLD_VALUE (value_clip) in the critic's own units
        if cfg.normalize_advantage:
            if cfg.advantage_groups == "task":
                shard.set(keys.ADVANTAGE, adv.normalize_by_group(a, shard.get(keys.TASK_INDEX), ctx.reduce))
            else:
                shard.set(keys.ADVANTAGE, adv.normalize_advantages(a, ones, ctx.reduce))
        samples = shard.select(*SAMPLE_KEYS, keys.VALUE_TARGET, strict=False).reshape(-1)  # [B_r * T]
        samples.set(keys.OLD_VALUE, old.reshape(-1, 1))
        return samples, metrics

    def state_dict_rl(self) -> dict[str, Any]:
        return {"reward_norm": self.reward_norm.state_dict(), "value_stats": self.value_stats.state_dict(),
                "warmup_done": self.warmup_done}

    def load_state_dict_rl(self, state: dict[str, Any]) -> None:
        self.reward_norm.load_state_dict(state["reward_norm"])
        if "value_stats" in state:  # checkpoints written before value_norm existed have neither
            self.value_stats.load_state_dict(state["value_stats"])
            self.warmup_done = bool(state["warmup_done"])


@register_objective("ppo")
def make_ppo(train: TrainConfig, policy: nn.Module) -> nn.Module:
    return PPOObjective(policy, train.ppo)


make_ppo.rl, make_ppo.uses_critic = True, True  # type: ignore[attr-defined] -- read by RLLearnerActor.setup_rl
