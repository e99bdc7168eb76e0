"""Reward model objectives (TensorDict in, TensorDict of losses out) and the single-process trainer.

    "reward_success"     loss_rm  = BCE(RM_LOGIT, RM_TARGET)                 frames [N]; soft targets = progress
    "reward_preference"  loss_bt  = -log sigmoid(R(preferred) - R(other))     R(segment) = sum of frame logits
                         loss_reg = score_reg * mean(logit^2)                 BT is shift-invariant: pin the scale

Both objectives see the flattened frames the model scored (N = P*2*L for preference batches [P, 2, L],
the preferred segment first), so the DeepSpeed learner loop (vlaforge/learners/reward_learner.py) and
``train_reward_model`` below run the same code: ``prepare_batch`` -> model -> objective.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import DeepSpeedConfig, TrainConfig
from vlaforge.learners.engine import lr_factor
from vlaforge.learners.registry import build_objective, register_objective, total_loss
from vlaforge.learners.stream import ShardStream
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import RewardModel, RewardProcessor, auroc, predict_logits, rm_spec


class SuccessLoss(nn.Module):
    def forward(self, td: TensorDictBase) -> TensorDict:
        if keys.RM_LOGIT not in td.keys() or keys.RM_TARGET not in td.keys():
            raise KeyError(f"SuccessLoss needs {keys.RM_LOGIT!r} (model output) and {keys.RM_TARGET!r} (labels); "
                           f"got {sorted(map(str, td.keys()))}")
        logit, target = td.get(keys.RM_LOGIT).float(), td.get(keys.RM_TARGET).float()  # (N,), (N,)
        if logit.shape != target.shape or logit.ndim != 1:
            raise ValueError(f"SuccessLoss: rm_logit {tuple(logit.shape)} and rm_target {tuple(target.shape)} must both be (N,)")
        loss = F.binary_cross_entropy_with_logits(logit, target)
        with torch.no_grad():
            prob, pos = logit.sigmoid(), target >= 0.5
            out = {"loss_rm": loss, "rm_accuracy": ((prob >= 0.5) == pos).float().mean(),
                   "rm_target_mean": target.mean()}
            out["rm_pos_prob"] = prob[pos].mean() if pos.any() else torch.tensor(float("nan"))
            out["rm_neg_prob"] = prob[~pos].mean() if (~pos).any() else torch.tensor(float("nan"))
        return TensorDict(out, batch_size=[])


class PreferenceLoss(nn.Module):
    def __init__(self, segment_length: int, score_reg: float = 0.0):
        super().__init__()
        self.segment_length, self.score_reg = int(segment_length), float(score_reg)

    def forward(self, td: TensorDictBase) -> TensorDict:
        if keys.RM_LOGIT not in td.keys():
            raise KeyError(f"PreferenceLoss needs {keys.RM_LOGIT!r} (model output); got {sorted(map(str, td.keys()))}")
        logit, L = td.get(keys.RM_LOGIT).float(), self.segment_length
        if logit.ndim == 1:
            if logit.numel() % (2 * L):
                raise ValueError(f"PreferenceLoss: {logit.numel()} frame scores are not pairs of 2 segments x "
                                 f"{L} frames (reward_model.segment_length); batches must be [P, 2, L]")
            logit = logit.reshape(-1, 2, L)  # (P, 2, L), the preferred segment first
        if logit.ndim != 3 or logit.shape[1:] != (2, L):
            raise ValueError(f"PreferenceLoss: rm_logit must be (P, 2, L={L}) or flattened, got {tuple(logit.shape)}")
        ret = logit.sum(-1)  # (P, 2) segment scores
        margin = ret[:, 0] - ret[:, 1]  # (P,)
        loss_bt = -F.logsigmoid(margin).mean()
        out = {"loss_bt": loss_bt, "loss_reg": self.score_reg * logit.pow(2).mean()}
        with torch.no_grad():
            out.update({"pref_accuracy": (margin > 0).float().mean(), "pref_margin": margin.mean(),
                        "rm_score_std": logit.std()})
        return TensorDict(out, batch_size=[])


def _rm_cfg(model: nn.Module) -> RewardModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, RewardModelConfig):
        raise TypeError(f"reward objectives need a RewardModel (with a RewardModelConfig), got {type(model).__name__}")
    return cfg


@register_objective("reward_success")
def make_success(train: TrainConfig, model: nn.Module) -> nn.Module:
    _rm_cfg(model)
    return SuccessLoss()


@register_objective("reward_preference")
def make_preference(train: TrainConfig, model: nn.Module) -> nn.Module:
    cfg = _rm_cfg(model)
    return PreferenceLoss(cfg.segment_length, cfg.score_reg)


# -- shared step code ----------------------------------------------------------------------------------
def train_config_for(cfg: RewardModelConfig, base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig of an RM run: optimisation from ``cfg``; ranks, CPUs and DeepSpeed stage from ``base``."""
    base = base or TrainConfig(num_learners=1)
    ds = base.deepspeed.model_dump()
    ds["gradient_clipping"] = cfg.grad_clip
    return base.model_copy(update={
        "objective": f"reward_{cfg.kind}", "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "seed": cfg.seed,
        "lr_schedule": "cosine", "deepspeed": DeepSpeedConfig.model_validate(ds)})


def spec_of(data: TensorDictBase):
    """RM shapes from a labeled set (success [N] or preference [P, 2, L])."""
    image = data.get(keys.IMAGE)
    state_dim = data.get(keys.STATE).shape[-1] if keys.STATE in data.keys(True) else 1
    return rm_spec(tuple(image.shape[-4:]), state_dim)


def prepare_batch(processor: RewardProcessor, batch: TensorDictBase, train: bool = True,
                  device: torch.device | str | None = None) -> TensorDict:
    """Labeled batch of any batch dims -> flat prepared frames [N] (+ RM_TARGET when labeled)."""
    flat = batch.reshape(-1) if batch.batch_dims != 1 else batch
    inp = processor(flat, train=train, device=device)
    if keys.RM_TARGET in flat.keys():
        inp.set(keys.RM_TARGET, flat.get(keys.RM_TARGET).to(inp.device, torch.float32))
    return inp


# -- single process ------------------------------------------------------------------------------------
def train_reward_model(data: TensorDictBase, cfg: RewardModelConfig, eval_data: TensorDictBase | None = None,
                       log_every: int = 0, init: tuple[RewardModel, RewardProcessor] | None = None
                       ) -> tuple[RewardModel, RewardProcessor, dict[str, float]]:
    """Train on a labeled set (build_success_set / build_preference_set) in this process with AdamW, the
    learners' warmup + cosine LR and gradient clipping. -> (model in eval mode, processor, metrics):
    rm/loss_first, rm/loss (mean of the last 10% of steps), rm/<diagnostics>, rm/seconds, and with
    ``eval_data`` the held-out rm_eval/* of ``evaluate_reward_model``. log_every > 0 prints progress.
    ``init``: fine-tune a copy of this (model, processor) instead of a fresh model (the RM refresh during RL:
    its processor, e.g. the state statistics, stays as the RL reward was defined with)."""
    train = train_config_for(cfg)
    torch.manual_seed(cfg.seed)
    if init is not None:
        model, processor = copy.deepcopy(init[0]).train(), init[1]
    else:
        model = RewardModel(cfg, spec_of(data))
        processor = RewardProcessor.fit(cfg, data)
    objective = build_objective(train.objective, train, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, "cosine"))
    n = data.batch_size[0]
    stream = ShardStream(n, lambda idx: data[idx], min(cfg.batch_size, n), rank=0, world_size=1, seed=cfg.seed)
    tail = max(1, cfg.steps // 10)
    sums: dict[str, float] = defaultdict(float)
    model.train()
    t0, first = time.perf_counter(), float("nan")
    for step in range(cfg.steps):
        inp = prepare_batch(processor, stream.next(), train=True)
        losses = objective(inp.update(model(inp)))
        loss = total_loss(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if step == 0:
            first = float(loss.detach())
        if step >= cfg.steps - tail:
            sums["loss"] += float(loss.detach())
            for k, v in losses.items():
                sums[k] += float(v.detach())
        if log_every and (step + 1) % log_every == 0:
            print(f"[reward_model] step {step + 1}/{cfg.steps} loss {loss.item():.4f}", flush=True)
    metrics = {f"rm/{k}": v / tail for k, v in sums.items()}
    metrics.update({"rm/loss_first": first, "rm/steps": float(cfg.steps), "rm/seconds": time.perf_counter() - t0})
    model.eval()
    if eval_data is not None:
        metrics.update(evaluate_reward_model(model, processor, eval_data))
    return model, processor, metrics


def evaluate_reward_model(model: RewardModel, processor: RewardProcessor, data: TensorDictBase,
                          batch_size: int = 256) -> dict[str, float]:
    """Held-out quality. Frames [N] with RM_TARGET (positive: >= 0.5): rm_eval/auroc, accuracy at p = 0.5,
    mean probability of positives / negatives. Pairs [P, 2, L]: rm_eval/pair_accuracy."""
    logits = predict_logits(model, processor, data, batch_size)
    if data.batch_dims == 3:
        ret = logits.sum(-1)  # (P, 2)
        return {"rm_eval/pair_accuracy": float((ret[:, 0] > ret[:, 1]).float().mean()),
                "rm_eval/pairs": float(ret.shape[0])}
    if data.batch_dims != 1 or keys.RM_TARGET not in data.keys():
        raise ValueError(f"evaluate_reward_model: frames [N] with {keys.RM_TARGET!r} or pairs [P, 2, L], "
                         f"got batch {tuple(data.batch_size)} with keys {sorted(map(str, data.keys()))}")
    prob, pos = logits.sigmoid(), data.get(keys.RM_TARGET) >= 0.5
    return {
        "rm_eval/auroc": auroc(logits, pos),
        "rm_eval/accuracy": float(((prob >= 0.5) == pos).float().mean()),
        "rm_eval/pos_prob": float(prob[pos].mean()) if pos.any() else float("nan"),
        "rm_eval/neg_prob": float(prob[~pos].mean()) if (~pos).any() else float("nan"),
        "rm_eval/frames": float(len(prob)),
        "rm_eval/positives": float(pos.sum()),
    }
