"""The VLA model layer: processors, backbones, heads, the policy, checkpoint IO and the rollout runner.

Knows no runtime, objective or simulator: inputs and outputs are TensorDicts with keys from vlaforge.keys.
Names load on first use (PEP 562): the recipe schema imports ``vlaforge.policies.config``, and
`vlaforge recipe check` should not pay for torch. The registries fill themselves (registry.py).
"""

from __future__ import annotations

import importlib

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.registry import (
    BACKBONE_REGISTRY,
    HEAD_REGISTRY,
    LANGUAGE_REGISTRY,
    POLICY_REGISTRY,
    VISION_REGISTRY,
    register_backbone,
    register_head,
    register_language,
    register_policy,
    register_vision,
)

_LAZY: dict[str, str] = {
    "load_pretrained": "vlaforge.policies.io",
    "save_pretrained": "vlaforge.policies.io",
    "VLAProcessor": "vlaforge.policies.processor",
    "PolicyRunner": "vlaforge.policies.runner",
    "PolicySpec": "vlaforge.policies.spec",
    "HashedTokenizer": "vlaforge.policies.tokenizer",
    "VLAPolicy": "vlaforge.policies.vla",
    "build_policy": "vlaforge.policies.vla",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlaforge.policies' has no attribute {name!r}")


__all__ = [
    "BACKBONE_REGISTRY",
    "HEAD_REGISTRY",
    "LANGUAGE_REGISTRY",
    "POLICY_REGISTRY",
    "VISION_REGISTRY",
    "HashedTokenizer",
    "PolicyConfig",
    "PolicyRunner",
    "PolicySpec",
    "VLAPolicy",
    "VLAProcessor",
    "build_policy",
    "load_pretrained",
    "register_backbone",
    "register_head",
    "register_language",
    "register_policy",
    "register_vision",
    "save_pretrained",
]
