"""Plain DeepSpeed helpers: the config dict built from TrainConfig, the LR schedule, state checksums, the
NaN/Inf step guard.

Learner code stays plain DeepSpeed (``deepspeed.initialize`` + ``engine.backward`` + ``engine.step``); the
Ray / rank plumbing lives in vlaforge.runtime.worker_group.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from vlaforge.learners.config import TrainConfig


def backend(train: TrainConfig) -> str:
    """torch.distributed backend: nccl with GPUs, gloo on CPU (``auto``), or the recipe's choice."""
    if train.deepspeed.backend != "auto":
        return train.deepspeed.backend
    return "nccl" if torch.cuda.is_available() and train.gpus_per_learner > 0 else "gloo"


def micro_batch(train: TrainConfig, world_size: int) -> int:
    if train.batch_size % world_size:
        raise ValueError(
            f"train.batch_size ({train.batch_size}) must be divisible by the number of learner ranks ({world_size}): "
            f"each rank takes batch_size / ranks samples per step; try {world_size * max(1, train.batch_size // world_size)}"
        )
    return train.batch_size // world_size


def ds_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config: global batch split evenly over ranks, no gradient accumulation."""
    ds = train.deepspeed
    return {
        "train_batch_size": train.batch_size,  # global: micro batch x ranks x accumulation
        "train_micro_batch_size_per_gpu": micro_batch(train, world_size),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch's AdamW instead of DeepSpeed's fused CPU Adam, whose JIT build takes ~46 s.
            "params": {"lr": train.lr, "weight_decay": train.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
                       "torch_adam": True},
        },
        "steps_per_print": 1 << 30,  # we log ourselves
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},  # every rank must save under the same tag
    }


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps: linear warmup, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int | None = None
                 ) -> torch.optim.lr_scheduler.LambdaLR:
    # A torch LambdaLR rather than DeepSpeed's WarmupLR/WarmupCosineLR: those reject warmup_steps = 0 and
    # warm up logarithmically by default. DeepSpeed steps it after every optimizer step and checkpoints
    # its state (last_epoch), so resume continues the same curve.
    # total_steps: optimizer steps the schedule spans (RL: train.steps counts updates, each of several steps)
    w, n, sched = train.warmup_steps, total_steps or train.steps, train.lr_schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, w, n, sched))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def param_checksum(module: nn.Module) -> str:
    """Hash of every parameter's bytes in order: equal iff bit-identical weights."""
    return _digest([p.data for p in module.parameters()])


def optimizer_checksum(optimizer: torch.optim.Optimizer) -> str:
    """Hash of this rank's optimizer state tensors (exp_avg, exp_avg_sq, step) in param-group order.

    Under ZeRO the engine's optimizer wraps the torch one that owns this rank's flat partition.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors = []
    for group in inner.param_groups:
        for p in group["params"]:
            for name, value in sorted(inner.state.get(p, {}).items()):
                tensors.append(value if torch.is_tensor(value) else torch.tensor(float(value)))
    return _digest(tensors)


def local_world() -> tuple[int, int]:
    """(rank, world size) from the env vars the worker group sets (1 process: 0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# -- NaN/Inf guard ----------------------------------------------------------------------------------------
def any_rank(flag: bool) -> bool:
    """True if ``flag`` holds on ANY rank: one MAX all-reduce of a 1-element tensor, so every rank decides the
    same (a rank that skipped a step its peers took would leave the replicas apart, or hang a collective)."""
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _grads_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in module.parameters() if p.grad is not None)


class StepGuard:
    """One optimizer step unless the loss or the gradient is NaN/Inf on any rank; counts the skips.

    - loss: checked (all ranks agreeing) BEFORE ``engine.backward``: a skipped step touches nothing, not even
      DeepSpeed's step counter or LR schedule.
    - gradient (finite loss, non-finite gradient): ZeRO 1/2 compute the global gradient norm inside
      ``engine.step`` (all-reduced: every rank sees the same) and, when it is not finite, clear the gradients
      and leave parameters, optimizer state and LR schedule alone (``engine.was_step_applied()`` is False;
      DeepSpeed still counts the step in ``global_steps``, as for its fp16 overflow skips). ZeRO 0 has no such
      check: the all-reduced ``p.grad`` are checked here and cleared. (ZeRO 3: the loss check only.)
    """

    def __init__(self) -> None:
        self.total = 0  # skipped steps over this rank's life (a rollback does not reset it)
        self.streak = 0  # skipped steps in a row (reset by an applied step or a rollback)

    def step(self, engine: Any, loss: torch.Tensor) -> bool:
        """backward + step; False (and counted) if the step was skipped."""
        if any_rank(not bool(torch.isfinite(loss.detach()).all())):
            return self._skipped()
        engine.backward(loss)
        if engine.zero_optimization_stage() == 0 and any_rank(not _grads_finite(engine.module)):
            engine.zero_grad()
            return self._skipped()
        engine.step()
        if not engine.was_step_applied():
            return self._skipped()
        self.streak = 0
        return True

    def _skipped(self) -> bool:
        self.total += 1
        self.streak += 1
        return False


def nan_inputs(inp: Any) -> Any:
    """Every floating tensor of a prepared batch set to NaN: chaos mode's (and the tests') "NaN batch"."""
    return inp.apply(lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t)


def set_lr_scale(engine: Any, base_lr: float, scale: float) -> float:
    """Make the LR schedule run at ``scale`` x ``base_lr`` from the current step on (a rollback after non-finite
    steps). Sets the LambdaLR's base LRs (checkpointed with the scheduler, so later checkpoints keep it) and
    the optimizer's current LR. Returns the LR the next step takes."""
    sched = engine.lr_scheduler
    sched.base_lrs = [base_lr * scale for _ in sched.base_lrs]
    lrs = [b * fn(sched.last_epoch) for b, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = list(lrs)
    return lrs[0]
