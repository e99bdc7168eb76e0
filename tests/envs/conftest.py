"""Shared fixtures of the env tests: the Meta-World tasks the shipped recipes use."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlaforge.envs import EnvConfig
from vlaforge.envs.tasks import resolve_tasks

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def recipe_tasks() -> list[str]:
    """Every Meta-World task named in configs/*.yaml (top-level envs.tasks and stage ``set:`` blocks; a
    recipe without envs.tasks runs its parent's or EnvConfig's default), benchmark names expanded."""
    names: list[str] = list(EnvConfig().tasks)
    for path in sorted(CONFIGS.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text()) or {}
        blocks = [recipe.get("envs") or {}]
        blocks += [((s.get("set") or {}).get("envs") or {}) for s in recipe.get("stages") or []]
        for envs in blocks:
            if envs.get("backend", "metaworld") == "metaworld":
                names += envs.get("tasks") or []
    return list(dict.fromkeys(resolve_tasks(names)))
