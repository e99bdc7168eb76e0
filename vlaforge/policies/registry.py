"""A tiny name -> class registry (LeRobot ``register_subclass`` style) used for backbones, heads and policies."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, fill: str | None = "vlaforge.policies.vla"):
        self.kind = kind  # used in error messages ("vision backbone", "action head", ...)
        self._entries: dict[str, T] = {}
        # The module whose import registers the built-in entries (and imports every module that registers
        # one), imported on the first lookup: whoever reads the registry, from wherever, sees them all, and
        # importing this module (the recipe schema does, through the package) stays torch-free. Default:
        # vla.py, build_policy's module, which imports every backbone, encoder and head.
        self._fill = fill

    def _load(self) -> None:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            importlib.import_module(fill)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


VISION_REGISTRY: Registry = Registry("vision backbone")
LANGUAGE_REGISTRY: Registry = Registry("language backbone")
BACKBONE_REGISTRY: Registry = Registry("backbone")
TOKENIZER_REGISTRY: Registry = Registry("instruction tokenizer")  # keyed like LANGUAGE_REGISTRY
HEAD_REGISTRY: Registry = Registry("action head")
POLICY_REGISTRY: Registry = Registry("policy type")
NORMALIZER_REGISTRY: Registry = Registry("action normaliser", fill="vlaforge.policies.normalize")

register_vision = VISION_REGISTRY.register
register_language = LANGUAGE_REGISTRY.register
register_backbone = BACKBONE_REGISTRY.register
register_tokenizer = TOKENIZER_REGISTRY.register
register_head = HEAD_REGISTRY.register
register_policy = POLICY_REGISTRY.register
register_normalizer = NORMALIZER_REGISTRY.register
