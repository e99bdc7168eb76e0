"""The VLA model layer: processors, backbones, heads, the policy, checkpoint IO and the rollout runner.

Knows no runtime, objective or simulator: inputs and outputs are TensorDicts with keys from vlaforge.keys.
"""

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.io import load_pretrained, save_pretrained
from vlaforge.policies.processor import VLAProcessor
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
from vlaforge.policies.runner import PolicyRunner
from vlaforge.policies.spec import PolicySpec
from vlaforge.policies.tokenizer import HashedTokenizer
from vlaforge.policies.vla import VLAPolicy, build_policy

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
