"""Learners: DeepSpeed learner actors and one objective per file (registered by name).

Kept light: the recipe schema imports ``vlaforge.learners.config``, and `vlaforge recipe check` should not
pay for torch. The objective registry (``registry.py``) imports every objective module itself, so whoever
reads OBJECTIVES -- from here or from ``vlaforge.learners.registry`` -- sees every registration.
"""

from __future__ import annotations

import importlib

_LAZY = {"OBJECTIVES": "vlaforge.learners.registry", "build_objective": "vlaforge.learners.registry",
         "register_objective": "vlaforge.learners.registry"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlaforge.learners' has no attribute {name!r}")


__all__ = ["OBJECTIVES", "build_objective", "register_objective"]
