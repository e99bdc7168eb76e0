"""Learners: DeepSpeed learner actors and one objective per file (registered by name)."""

from vlaforge.learners.registry import OBJECTIVES, build_objective, register_objective

# Imported for their registrations; a new objective is one new file plus one line here.
from vlaforge.learners import bc as _bc  # noqa: E402,F401
from vlaforge.learners import grpo as _grpo  # noqa: E402,F401
from vlaforge.learners import ppo as _ppo  # noqa: E402,F401
from vlaforge.learners import reward_model as _reward_model  # noqa: E402,F401

__all__ = ["OBJECTIVES", "build_objective", "register_objective"]
