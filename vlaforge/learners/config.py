"""Typed config of the learners (the ``train:`` block): DeepSpeed, optimisation, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlaforge.config_base import StrictModel


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: GPU paths, not exercised on CPU
    gradient_clipping: float = Field(1.0, ge=0.0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo on CPU


class TrainConfig(StrictModel):
    objective: str = "bc"  # key of the objective registry (vlaforge/learners)
    bc_std_coef: float = Field(1.0, ge=0.0)  # bc: weight of the std's likelihood term (mean detached there)
    num_learners: int = Field(2, ge=1)  # DeepSpeed ranks, one Ray actor each
    cpus_per_learner: float = Field(1.0, gt=0)
    gpus_per_learner: float = Field(0.0, ge=0)
    threads_per_learner: int = Field(1, ge=1)  # torch intra-op threads (Ray sets OMP_NUM_THREADS=1)
    steps: int = Field(1000, ge=1)  # optimizer steps
    batch_size: int = Field(64, ge=1)  # global batch, split evenly over the ranks
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    seed: int = 0
    log_every: int = Field(25, ge=1)  # steps between metric records
    checkpoint_every: int = Field(500, ge=1)  # steps between DeepSpeed checkpoints
    keep_checkpoints: int = Field(2, ge=1)  # newest DeepSpeed checkpoints kept on disk
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
