"""Plain DeepSpeed helpers: the config dict built from TrainConfig, the LR schedule, state checksums.

Learner code stays plain DeepSpeed (``deepspeed.initialize`` + ``engine.backward`` + ``engine.step``); the
Ray / rank plumbing lives in vlaforge.runtime.worker_group.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import torch
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
