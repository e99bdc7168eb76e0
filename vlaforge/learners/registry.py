"""Objective registry: one objective per file, registered by name (LeRobot ``register_subclass`` style).

An objective is an ``nn.Module`` built as ``factory(train_cfg, policy)`` whose ``forward`` takes ONE
TensorDict (processor output + model output, batch [B]) and returns a TensorDict of scalars: ``loss_*``
terms that the learner sums and backpropagates, plus detached diagnostics (TorchRL ``objectives`` style).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from tensordict import TensorDictBase

from vlaforge.learners.config import TrainConfig

ObjectiveFactory = Callable[[TrainConfig, nn.Module], nn.Module]
OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    def deco(factory: ObjectiveFactory) -> ObjectiveFactory:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered ({OBJECTIVES[name]!r})")
        OBJECTIVES[name] = factory
        return factory

    return deco


def build_objective(name: str, train: TrainConfig, policy: nn.Module) -> nn.Module:
    if name not in OBJECTIVES:
        raise KeyError(f"train.objective: unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](train, policy)


def total_loss(losses: TensorDictBase) -> torch.Tensor:
    """Sum of the ``loss_*`` entries (the learner's backward target)."""
    terms = [v for k, v in losses.items() if k.startswith("loss_")]
    if not terms:
        raise ValueError(f"objective returned no loss_* entry (keys: {sorted(losses.keys())})")
    return torch.stack(terms).sum()
