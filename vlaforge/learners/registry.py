"""Objective registry: one objective per file, registered by name (LeRobot ``register_subclass`` style).

An objective is an ``nn.Module`` built as ``factory(train_cfg, policy)`` whose ``forward`` takes ONE
TensorDict (processor output + model output, batch [B]) and returns a TensorDict of scalars: ``loss_*``
terms that the learner sums and backpropagates, plus detached diagnostics (TorchRL ``objectives`` style).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn as nn
from tensordict import TensorDictBase

from vlaforge.learners.config import TrainConfig

ObjectiveFactory = Callable[[TrainConfig, nn.Module], nn.Module]

# The modules whose import registers the objectives: a new objective is one new file plus one line here.
OBJECTIVE_MODULES = ("vlaforge.learners.bc", "vlaforge.learners.grpo", "vlaforge.learners.ppo",
                     "vlaforge.learners.reward_model", "vlaforge.learners.latent_action",
                     "vlaforge.learners.latent_pretrain", "vlaforge.learners.visual_ssl")


class _Objectives(dict):
    """name -> factory, filled by OBJECTIVE_MODULES on the first read. Not at import: those modules import
    register_objective from here (a cycle), and the package ``__init__`` stays torch-free for the recipe
    schema -- so whoever reads the registry, from wherever, sees every registration."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in OBJECTIVE_MODULES:
                importlib.import_module(m)

    def get(self, key, default=None):
        self._load()
        return super().get(key, default)

    def __getitem__(self, key):
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def keys(self):
        self._load()
        return super().keys()

    def items(self):
        self._load()
        return super().items()

    def values(self):
        self._load()
        return super().values()


OBJECTIVES: dict[str, ObjectiveFactory] = _Objectives()


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    def deco(factory: ObjectiveFactory) -> ObjectiveFactory:
        if dict.__contains__(OBJECTIVES, name):  # no _load here: this runs while those modules import
            raise ValueError(f"objective {name!r} is already registered ({dict.__getitem__(OBJECTIVES, name)!r})")
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

