"""Batched simulator envs: the contract (base), one adapter per simulator, instruction templates.

``import vlaforge.envs`` stays cheap (no torch, mujoco or Meta-World: the recipe schema imports
``vlaforge.envs.config``, and ``vlaforge recipe check`` should not pay for torch): the contract (``base``,
torch) loads on first use; backends register themselves in ENV_REGISTRY when their module is imported,
which ``make_env`` does on demand (BACKEND_MODULES).
"""

from __future__ import annotations

import importlib
import os
from typing import Sequence

# Headless OpenGL for mujoco.Renderer. Must be set before the first `import mujoco` anywhere in the
# process (mujoco picks its GL backend at import); every vlaforge.envs.* import runs this file first.
# The platform layer sets the same defaults (vlaforge/runtime/process.py) for Ray actors.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from vlaforge.envs.config import EnvConfig
from vlaforge.envs.instructions import instructions_for, paraphrases, sample_instruction
from vlaforge.envs.tasks import ALL_TASKS, resolve_tasks, task_index

# backend name -> module whose import registers it (lazy: simulators are heavy imports)
BACKEND_MODULES: dict[str, str] = {"metaworld": "vlaforge.envs.metaworld", "synthetic": "vlaforge.envs.synthetic"}

# Heavy names, imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "ENV_REGISTRY": "vlaforge.envs.base",
    "BatchedEnv": "vlaforge.envs.base",
    "EnvSpec": "vlaforge.envs.base",
    "register_env": "vlaforge.envs.base",
    "MetaWorldBatchedEnv": "vlaforge.envs.metaworld",
    "make_metaworld_env": "vlaforge.envs.metaworld",
    "make_expert": "vlaforge.envs.experts",
    "expert_actions": "vlaforge.envs.experts",
}


def make_env(cfg: EnvConfig, tasks: Sequence[str], seed: int = 0) -> "BatchedEnv":
    """Build the batched env of ``cfg.backend`` with one simulator per entry of ``tasks``."""
    from vlaforge.envs.base import ENV_REGISTRY

    if cfg.backend not in ENV_REGISTRY and cfg.backend in BACKEND_MODULES:
        importlib.import_module(BACKEND_MODULES[cfg.backend])
    if cfg.backend not in ENV_REGISTRY:
        known = sorted(set(ENV_REGISTRY) | set(BACKEND_MODULES))
        raise ValueError(f"Unknown env backend {cfg.backend!r} (envs.backend): expected one of {known}.")
    return ENV_REGISTRY[cfg.backend](cfg, tasks, seed)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlaforge.envs' has no attribute {name!r}")


__all__ = [
    "ALL_TASKS",
    "BACKEND_MODULES",
    "ENV_REGISTRY",
    "BatchedEnv",
    "EnvConfig",
    "EnvSpec",
    "instructions_for",
    "make_env",
    "paraphrases",
    "register_env",
    "resolve_tasks",
    "sample_instruction",
    "task_index",
    *_LAZY,
]
